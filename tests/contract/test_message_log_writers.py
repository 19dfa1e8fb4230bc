"""Every write of a `messages` row goes through dunning.messages.log: no other module builds a
`Message`, runs an INSERT/UPDATE on its table or assigns its status (read with `ast`)."""

from __future__ import annotations

import ast

from tests.contract.test_transactional import trees

LOG = "dunning/messages/log.py"
WRITTEN = {"status", "reason", "provider_id", "delivery_status", "delivery_error",
           "delivery_sequence", "attempts", "credits"}


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}


def test_only_the_message_log_writes_message_rows() -> None:
    offenders: list[str] = []
    for rel, tree in trees():
        if rel in (LOG, "dunning/platform/db/models.py") or "migrations" in rel:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else (
                    func.attr if isinstance(func, ast.Attribute) else "")
                if name == "Message":
                    offenders.append(f"{rel}:{node.lineno} builds a Message")
                if name in ("insert", "update", "delete") and node.args and (
                    "Message" in _names(node.args[0]) or "_M" in _names(node.args[0])
                ):
                    offenders.append(f"{rel}:{node.lineno} {name}s messages")
            if isinstance(node, ast.Assign) and rel.startswith(("dunning/messages/",
                                                                "dunning/webhooks/",
                                                                "activities/")):
                for target in node.targets:
                    for t in ast.walk(target):
                        if isinstance(t, ast.Attribute) and t.attr in WRITTEN and isinstance(
                            t.value, ast.Name) and t.value.id in ("row", "msg", "message"):
                            offenders.append(f"{rel}:{node.lineno} assigns .{t.attr}")
    assert offenders == []


def test_the_scan_finds_the_log_itself() -> None:
    sources = dict(trees())
    log_tree = sources[LOG]
    updates = [n for n in ast.walk(log_tree) if isinstance(n, ast.Call)
               and isinstance(n.func, ast.Name) and n.func.id in ("insert", "update")]
    assert updates, "the message log's own statements are where the writes are"
    assigns = [t.attr for n in ast.walk(log_tree) if isinstance(n, ast.Assign)
               for t in n.targets if isinstance(t, ast.Attribute)]
    assert "provider_id" in assigns
