"""Transactional only: the engine sends SMS for dunning cases and nothing else.

The only SMS that leave the engine are (1) the reminders of a case, sent by the `send_sms`
activity of a DunningWorkflow, and (2) the compliance replies to an inbound message (the HELP
answer and the one STOP confirmation). These tests read the source tree (with `ast`) to keep it
that way: a new call that could hand a message to an SMS provider fails here until it is
reviewed and listed. Every reminder also has to carry its billing link: templates without
`{billing_link}` are refused.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from dunning.accounts import messaging
from dunning.accounts.accounts import AccountOptions, create_account
from dunning.domain.contract import InputError
from dunning.domain.templates import DEFAULT_SMS_TEMPLATE, template_fields, validate_sms_template
from dunning.platform.db import Database
from dunning.platform.db.models import SmsTemplate

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {"tests", "build", "dist", "node_modules", "__pycache__"}

# (file, enclosing function, receiver) of every `.send(...)` that may reach an SMS provider.
ALLOWED_SMS_SENDS = {
    # The reminders of a case: the send_sms activity, once per (case, step).
    ("activities/dunning.py", "DunningActivities.send_sms", "self.sms"),
    # HELP replies and the STOP confirmation, planned by dunning.messages.inbound: sent by the
    # reply workflow's activity, or in the web process when the app is built to (tests, demo).
    ("activities/dunning.py", "DunningActivities.send_reply", "self.sms"),
    ("dunning/messages/replies.py", "InlineReplies.send_now", "self.sms"),
}


@dataclass(frozen=True)
class Call:
    path: str
    function: str
    receiver: str
    node: ast.Call


def source_files() -> Iterator[Path]:
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).parts
        if any(p.startswith(".") or p in SKIP_DIRS or p.endswith(".egg-info") for p in parts):
            continue
        yield path


@functools.cache
def trees() -> tuple[tuple[str, ast.Module], ...]:
    """(path relative to the repo, syntax tree) of every first-party source file."""
    return tuple(
        (p.relative_to(ROOT).as_posix(), ast.parse(p.read_text(encoding="utf-8"), str(p)))
        for p in source_files()
    )


def calls(attr: str) -> list[Call]:
    """Every call `<expr>.<attr>(...)` and `<attr>(...)` in the first-party source."""
    found: list[Call] = []
    for rel, tree in trees():

        def visit(node: ast.AST, scope: list[str], rel: str = rel) -> None:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                scope = [*scope, node.name]
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr == attr:
                    found.append(Call(rel, ".".join(scope), ast.unparse(func.value), node))
                elif isinstance(func, ast.Name) and func.id == attr:
                    found.append(Call(rel, ".".join(scope), "", node))
            for child in ast.iter_child_nodes(node):
                visit(child, scope)

        visit(tree, [])
    return found


def test_the_scan_sees_the_source_tree() -> None:
    files = {p.relative_to(ROOT).as_posix() for p in source_files()}
    assert {"activities/dunning.py", "dunning/webhooks/app.py", "workflows/dunning.py",
            "dunning/platform/providers/sms.py"} <= files
    assert not any(f.startswith((".venv/", "tests/")) for f in files)


def _sms_names(function: ast.AST) -> set[str]:
    """Names bound to an `OutgoingSms(...)` in a function."""
    names = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            if isinstance(func, ast.Name) and func.id == "OutgoingSms":
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _is_sms_send(call: Call, functions: dict[tuple[str, str], ast.AST]) -> bool:
    """A `.send(...)` whose receiver is named for SMS or whose argument is an OutgoingSms."""
    if "sms" in call.receiver.lower() or "plivo" in call.receiver.lower():
        return True
    scope = functions.get((call.path, call.function))
    names = _sms_names(scope) if scope is not None else set()
    for arg in (n for a in call.node.args for n in ast.walk(a)):
        if isinstance(arg, ast.Call) and isinstance(arg.func, ast.Name) and (
            arg.func.id == "OutgoingSms"
        ):
            return True
        if isinstance(arg, ast.Name) and arg.id in names:
            return True
    return False


def _functions() -> dict[tuple[str, str], ast.AST]:
    found: dict[tuple[str, str], ast.AST] = {}
    for rel, tree in trees():

        def visit(node: ast.AST, scope: list[str], rel: str = rel) -> None:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                scope = [*scope, node.name]
                found[(rel, ".".join(scope))] = node
            for child in ast.iter_child_nodes(node):
                visit(child, scope)

        visit(tree, [])
    return found


def test_sms_are_built_only_for_reminders_and_compliance_replies() -> None:
    # SmsProvider.send takes an OutgoingSms: whoever sends an SMS has to build one.
    built = {(c.path, c.function) for c in calls("OutgoingSms")}
    assert built == {
        ("dunning/messages/recipients.py", "sms_for"),  # the reminder's text
        ("activities/dunning.py", "DunningActivities.send_sms"),  # ... with its callback URL
        ("dunning/messages/replies.py", "prepare"),  # HELP / STOP replies
    }
    # The reminder's SMS is made for the send_sms activity alone.
    assert {(c.path, c.function) for c in calls("sms_for")} == {
        ("activities/dunning.py", "DunningActivities._prepare_sms_in")
    }
    assert {(c.path, c.function) for c in calls("_prepare_sms_in")} == {
        ("activities/dunning.py", "DunningActivities._prepare_sms")  # one trip, then locked
    }
    assert {(c.path, c.function) for c in calls("_prepare_sms")} == {
        ("activities/dunning.py", "DunningActivities.send_sms")
    }
    # A reply's SMS is made from a row dunning.messages.inbound planned (HELP / STOP only).
    assert {(c.path, c.function) for c in calls("queue_reply")} == {
        ("dunning/messages/inbound.py", "_plan_reply")
    }


def test_sms_provider_send_is_called_only_by_the_activity_and_compliance_replies() -> None:
    functions = _functions()
    sends = [c for c in calls("send") if c.receiver]
    sms_sends = {(c.path, c.function, c.receiver) for c in sends if _is_sms_send(c, functions)}
    assert sms_sends == ALLOWED_SMS_SENDS
    # The scan does tell them from email sends (the reminders' emails, balance notices ...).
    emails = {(c.path, c.receiver) for c in sends if not _is_sms_send(c, functions)}
    assert ("activities/dunning.py", "self.email") in emails


def test_the_plivo_api_is_called_only_inside_the_sms_provider() -> None:
    creates = {(c.path, c.function) for c in calls("create") if c.receiver.endswith("messages")}
    assert creates == {("dunning/platform/providers/sms.py", "PlivoSmsProvider.send")}
    clients = {c.path for c in calls("RestClient")}
    assert clients <= {"dunning/platform/providers/sms.py"}


def test_the_send_sms_activity_runs_only_in_the_dunning_workflow() -> None:
    users = {
        rel for rel, tree in trees()
        if any(isinstance(n, ast.Name) and n.id == "ACT_SEND_SMS" for n in ast.walk(tree))
    }
    # Defined, implemented, and scheduled by the workflow: nowhere else.
    assert users == {"dunning/domain/contract.py", "activities/dunning.py", "workflows/dunning.py"}
    assert not [c for c in calls("send_sms")]  # never called directly


def test_replies_are_only_help_and_stop_confirmations() -> None:
    planned = calls("_plan_reply")
    kinds = set()
    for call in planned:
        assert call.path == "dunning/messages/inbound.py"
        assert call.function == "process_inbound"
        kind = call.node.args[1]
        assert isinstance(kind, ast.Constant)
        kinds.add(kind.value)
    assert kinds == {"stop", "help"}
    replies = calls("PlannedReply")
    assert {(c.path, c.function) for c in replies} == {
        ("dunning/messages/inbound.py", "_plan_reply")
    }


# --- every reminder carries the billing link --------------------------------------------------


@pytest.fixture
def account(sqlite_db: Database, uid: str) -> str:
    with sqlite_db.session() as s:
        create_account(s, f"tx-{uid}", AccountOptions(company_name="Acme",
                                                      sms_sender="+14155550100"))
    return f"tx-{uid}"


def test_templates_without_the_billing_link_are_refused(
    sqlite_db: Database, account: str,
) -> None:
    assert "billing_link" in template_fields(DEFAULT_SMS_TEMPLATE)
    for text in ("{company_name}: your payment of {amount} failed. Please pay soon.",
                 "Pay at https://example.com/pay now", "{{billing_link}} literally"):
        with pytest.raises(InputError, match="billing_link"):
            validate_sms_template(text)
        with sqlite_db.session() as s, pytest.raises(InputError, match="billing_link"):
            messaging.set_sms_template(s, account, text)
    with sqlite_db.session() as s:
        stored = s.scalars(select(SmsTemplate).where(SmsTemplate.account_id == account)).all()
    assert stored == []
    with sqlite_db.session() as s:
        messaging.set_sms_template(s, account, "{company_name}: please pay {billing_link}")
    with sqlite_db.session() as s:
        assert messaging.sms_template_for(s, account, None).endswith("{billing_link}")
