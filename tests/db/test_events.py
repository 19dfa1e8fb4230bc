"""Outbound events: endpoints (CLI and service), the outbox, in-order delivery to a loopback
receiver that verifies signatures with `standardwebhooks`, attempts logged, redelivery."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import event, func, select

from dunning.events import endpoints, outbox
from dunning.events.delivery import Deliverer, DeliveryFailed
from dunning.platform.db import Database
from dunning.platform.db.models import (
    DeliveryAttempt,
    EventDelivery,
    OutboxEvent,
    WebhookEndpoint,
    utcnow,
)
from tests.fakes.receiver import EventReceiver
from tests.helpers import make_account

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def receiver() -> Iterator[EventReceiver]:
    r = EventReceiver()
    yield r
    r.close()


def _count(db: Database, model: type) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_cli_endpoints_add_list_rotate_remove(cli: Cli, db: Database, uid: str) -> None:
    account = f"ev-{uid}"
    make_account(db, account)
    code, out, err = cli("endpoints", "add", "--account", account, "https://hooks.example/x",
                         "--events", "case.started", "case.exhausted", "--json")
    assert code == 0, err
    added = json.loads(out)
    assert added["secret"].startswith("whsec_")
    assert added["events"] == ["case.exhausted", "case.started"]
    code, out, _ = cli("endpoints", "list", "--account", account, "--json")
    listed = json.loads(out)["endpoints"]
    assert [e["endpoint_id"] for e in listed] == [added["endpoint_id"]]
    assert "whsec_" not in out  # the secret is shown once, never listed
    code, out, _ = cli("endpoints", "rotate-secret", added["endpoint_id"], "--json")
    rotated = json.loads(out)["secret"]
    assert code == 0 and rotated.startswith("whsec_") and rotated != added["secret"]
    with db.session() as s:
        ep = s.get(WebhookEndpoint, added["endpoint_id"])
        assert ep is not None and ep.secret == rotated
    code, _, _ = cli("endpoints", "remove", added["endpoint_id"], "--account", account)
    assert code == 0
    with db.session() as s:
        assert s.get(WebhookEndpoint, added["endpoint_id"]) is None


@pytest.mark.parametrize("args, message", [
    (["ftp://x.example/"], "url: 'ftp://x.example/' is not an http(s) URL"),
    (["https://u:p@x.example/"], "url: must not carry credentials"),
    (["https://x.example/", "--events", "case.nope"], "unknown event type 'case.nope'"),
    (["https://x.example/", "case.started"], "unexpected argument 'case.started'"),
])
def test_cli_endpoints_add_bad_input_changes_nothing(
    cli: Cli, db: Database, uid: str, args: list[str], message: str
) -> None:
    account = f"ev-{uid}"
    make_account(db, account)
    before = _count(db, WebhookEndpoint)
    code, out, err = cli("endpoints", "add", "--account", account, *args)
    assert code == 1 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1
    assert _count(db, WebhookEndpoint) == before


def test_cli_unknown_account_endpoint_event(cli: Cli, db: Database, uid: str) -> None:
    code, _, err = cli("endpoints", "add", "--account", f"nope-{uid}", "https://x.example/")
    assert code == 1 and "unknown account" in err
    code, _, err = cli("endpoints", "remove", "ep_missing")
    assert code == 1 and "unknown endpoint 'ep_missing'" in err
    code, _, err = cli("endpoints", "rotate-secret", "ep_missing")
    assert code == 1 and "unknown endpoint" in err
    code, _, err = cli("events", "redeliver", "msg_missing")
    assert code == 1 and "unknown event 'msg_missing'" in err


def test_record_creates_deliveries_for_subscribed_enabled_endpoints(db: Database,
                                                                    uid: str) -> None:
    account = f"ev-{uid}"
    make_account(db, account)
    with db.session() as s:
        all_ep, _ = endpoints.add_endpoint(s, account, "https://a.example/", [])
        only_end, _ = endpoints.add_endpoint(s, account, "https://b.example/", ["case.exhausted"])
        off, _ = endpoints.add_endpoint(s, account, "https://c.example/", [])
        off.enabled = False
        ids = (all_ep.id, only_end.id, off.id)
    with db.session() as s:
        first = outbox.record(s, account, "case.started", {"invoice_id": "i1"}, case_id="w1",
                              dedupe_key=f"{uid}:w1:started")
        again = outbox.record(s, account, "case.started", {"invoice_id": "i1"}, case_id="w1",
                              dedupe_key=f"{uid}:w1:started")
        assert first is not None and again is None  # recorded once per key
        outbox.record(s, account, "case.exhausted", {}, case_id="w1")
    with db.session() as s:
        rows = s.execute(
            select(EventDelivery.endpoint_id, OutboxEvent.type)
            .join(OutboxEvent, OutboxEvent.seq == EventDelivery.event_seq)
            .where(OutboxEvent.account_id == account).order_by(EventDelivery.id)
        ).all()
    assert [(ep, t) for ep, t in rows] == [
        (ids[0], "case.started"), (ids[0], "case.exhausted"), (ids[1], "case.exhausted"),
    ]


def test_a_case_batch_is_one_statement_in_order_and_a_retried_batch_adds_only_the_new(
    db: Database, uid: str
) -> None:
    account, case = f"evb-{uid}", f"w-{uid}"
    make_account(db, account)
    with db.session() as s:
        all_ep, _ = endpoints.add_endpoint(s, account, "https://a.example/", [])
        only_end, _ = endpoints.add_endpoint(s, account, "https://b.example/", ["case.exhausted"])
    at = utcnow()
    batch = [(f"{case}:r:{k}", t, at, {"n": n}) for n, (k, t) in enumerate([
        ("started", "case.started"), ("r1", "reminder.sent"), ("end", "case.exhausted")])]
    statements: list[str] = []

    def count(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        with db.session() as s:
            assert outbox.record_case_events(s, account, case, batch[:2]) == 2
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert sum(st.lstrip().startswith("INSERT INTO outbox_events") for st in statements) == 1
    with db.session() as s:  # retried with one more: only that one is new
        assert outbox.record_case_events(s, account, case, batch) == 1
        assert outbox.record_case_events(s, account, case, batch) == 0
    with db.session() as s:
        events = s.execute(select(OutboxEvent.seq, OutboxEvent.type, OutboxEvent.data)
                           .where(OutboxEvent.case_id == case).order_by(OutboxEvent.seq)).all()
        rows = s.execute(
            select(EventDelivery.endpoint_id, OutboxEvent.type)
            .join(OutboxEvent, OutboxEvent.seq == EventDelivery.event_seq)
            .where(OutboxEvent.case_id == case).order_by(EventDelivery.id)
        ).all()
    assert [(t, d["n"]) for _seq, t, d in events] == [
        ("case.started", 0), ("reminder.sent", 1), ("case.exhausted", 2)]  # seq in batch order
    assert all(d["account_id"] == account and d["case_id"] == case for _s, _t, d in events)
    assert sorted((ep, t) for ep, t in rows) == sorted([
        (all_ep.id, "case.started"), (all_ep.id, "reminder.sent"),
        (all_ep.id, "case.exhausted"), (only_end.id, "case.exhausted")])


def test_recording_rolls_back_with_its_transaction(db: Database, uid: str) -> None:
    account = f"ev-{uid}"
    make_account(db, account)
    with db.session() as s:
        endpoints.add_endpoint(s, account, "https://a.example/", [])
    with pytest.raises(RuntimeError), db.session() as s:
        outbox.record(s, account, "case.started", {}, case_id="w-rollback")
        raise RuntimeError("the change that caused it failed")
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(OutboxEvent)
                        .where(OutboxEvent.case_id == "w-rollback")) == 0


def test_delivery_in_order_through_an_outage_every_attempt_logged(
    db: Database, uid: str, receiver: EventReceiver, cli: Cli
) -> None:
    account = f"ev-{uid}"
    make_account(db, account)
    with db.session() as s:
        ep, new = endpoints.add_endpoint(s, account, receiver.url, [])
        endpoint_id = ep.id
    receiver.secret = new.secret
    with db.session() as s:
        for i in range(5):
            outbox.record(s, account, "reminder.sent", {"step": i + 1, "channel": "email"},
                          case_id=f"case-{uid}")
    deliverer = Deliverer(db, timeout=5)
    receiver.down = True
    with pytest.raises(DeliveryFailed, match="HTTP 503"):
        deliverer.drain(endpoint_id)
    with pytest.raises(DeliveryFailed):
        deliverer.drain(endpoint_id)
    assert receiver.accepted == []  # the first event blocks the rest: order holds
    receiver.down = False
    result = deliverer.drain(endpoint_id, batch=3)
    assert (result.delivered, result.more) == (3, True)
    result = deliverer.drain(endpoint_id, batch=3)
    assert (result.delivered, result.more) == (2, False)
    got = receiver.unique()
    assert [r.body["data"]["step"] for r in got] == [1, 2, 3, 4, 5]
    assert receiver.rejected == 0
    assert all(set(r.body) == {"type", "timestamp", "data"} for r in got)
    # Every attempt is logged: two refused for the first event, then one each.
    code, out, _ = cli("events", "list", "--account", account, "--case", f"case-{uid}",
                       "--json")
    events = json.loads(out)["events"]
    assert code == 0 and [e["event_id"] for e in events] == [r.webhook_id for r in got]
    attempts = [[a["status_code"] for a in e["deliveries"][0]["attempts"]] for e in events]
    assert attempts == [[503, 503, 204], [204], [204], [204], [204]]
    assert _count_attempts(db, endpoint_id) == 7


def _count_attempts(db: Database, endpoint_id: str) -> int:
    with db.session() as s:
        return int(s.scalar(
            select(func.count()).select_from(DeliveryAttempt)
            .join(EventDelivery, EventDelivery.id == DeliveryAttempt.delivery_id)
            .where(EventDelivery.endpoint_id == endpoint_id)
        ) or 0)


def test_rotated_secret_signs_new_deliveries(db: Database, uid: str,
                                             receiver: EventReceiver) -> None:
    account = f"ev-{uid}"
    make_account(db, account)
    with db.session() as s:
        ep, old = endpoints.add_endpoint(s, account, receiver.url, [])
        endpoint_id = ep.id
        outbox.record(s, account, "case.started", {}, case_id="w")
    with db.session() as s:
        new = endpoints.rotate_secret(s, endpoint_id)
    receiver.secret = old.secret
    with pytest.raises(DeliveryFailed, match="HTTP 401"):
        Deliverer(db).drain(endpoint_id)
    receiver.secret = new.secret
    assert Deliverer(db).drain(endpoint_id).delivered == 1


def test_redeliver_and_disable(db: Database, uid: str, receiver: EventReceiver, cli: Cli) -> None:
    account = f"ev-{uid}"
    make_account(db, account)
    with db.session() as s:
        ep, new = endpoints.add_endpoint(s, account, receiver.url, [])
        endpoint_id = ep.id
        event = outbox.record(s, account, "case.recovered", {"recovered_amount": 4900},
                              case_id="w")
        assert event is not None
        event_id = event.event_id
    receiver.secret = new.secret
    assert Deliverer(db).drain(endpoint_id).delivered == 1
    code, out, _ = cli("events", "redeliver", event_id, "--json")
    assert code == 0 and json.loads(out)["endpoints"] == [endpoint_id]
    assert Deliverer(db).drain(endpoint_id).delivered == 1
    assert [r.webhook_id for r in receiver.accepted] == [event_id, event_id]
    # Disabled after sustained failure: pending deliveries fail, nothing more is posted.
    with db.session() as s:
        outbox.record(s, account, "case.started", {}, case_id="w2")
    with db.session() as s:
        assert endpoints.disable_endpoint(s, endpoint_id, "kept failing")
    result = Deliverer(db).drain(endpoint_id)
    assert (result.delivered, result.enabled) == (0, False)
    code, out, _ = cli("endpoints", "list", "--account", account, "--json")
    assert json.loads(out)["endpoints"][0]["disabled_reason"] == "kept failing"
    code, _, err = cli("events", "redeliver", event_id)
    assert code == 1 and "no enabled endpoint" in err
