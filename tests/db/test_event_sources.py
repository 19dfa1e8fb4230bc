"""Events recorded by changes outside a case, in the same transaction: consent changes,
credits running low or out, a failed auto-refill."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from dunning.credits.followups import BalanceFollowups
from dunning.customers import consent
from dunning.events import endpoints
from dunning.platform.db import Database
from dunning.platform.db.models import EventDelivery, OutboxEvent
from tests.db.test_refill import debit, followups, gateway, waker  # noqa: F401 (fixtures)
from tests.db.test_refill import make_account as make_credit_account
from tests.helpers import add_customer, make_account


def _events(db: Database, account: str) -> list[tuple[str, dict[str, Any], int]]:
    """(type, data, deliveries) of the account's events, in order."""
    with db.session() as s:
        rows = s.execute(
            select(OutboxEvent).where(OutboxEvent.account_id == account)
            .order_by(OutboxEvent.seq)
        ).scalars().all()
        return [
            (e.type, e.data, len(s.scalars(select(EventDelivery.id)
                                           .where(EventDelivery.event_seq == e.seq)).all()))
            for e in rows
        ]


def test_consent_changes_record_events_without_the_number(db: Database, uid: str) -> None:
    account = f"cs-{uid}"
    make_account(db, account)
    phone = f"+1415555{int(uid[:4], 16) % 10000:04d}"
    add_customer(db, account, "cust-1", phone=phone)
    with db.session() as s:
        endpoints.add_endpoint(s, account, "https://hooks.example/", ["consent.opted_out",
                                                                        "consent.opted_in"])
    with db.session() as s:
        assert consent.record_opt_out(s, account, phone, source="plivo-inbound", keyword="STOP")
    with db.session() as s:  # already opted out: no change, no event
        assert not consent.record_opt_out(s, account, phone, source="plivo-inbound")
    with db.session() as s:
        assert consent.record_opt_in(s, account, phone, source="plivo-inbound", keyword="START")
    events = _events(db, account)
    assert [(t, n) for t, _, n in events] == [("consent.opted_out", 1), ("consent.opted_in", 1)]
    assert events[0][1]["customer_ids"] == ["cust-1"]
    assert phone not in json.dumps([d for _, d, _ in events])
    assert phone[-7:] not in json.dumps([d for _, d, _ in events])


def test_credits_low_and_empty_once_per_crossing(
    db: Database, uid: str, followups: BalanceFollowups  # noqa: F811
) -> None:
    make_credit_account(db, uid, 3, threshold=2)
    for i in range(4):
        debit(followups, uid, f"wf-{i}")  # 3 -> 2 -> 1 (low) -> 0 (empty) -> refused (no change)
    assert followups.drain(10)
    assert [(t, d["balance"]) for t, d, _ in _events(db, uid)] == [
        ("credits.low", 1), ("credits.empty", 0)]


def test_refill_failed_recorded_with_the_failure(
    db: Database, uid: str, gateway, followups: BalanceFollowups  # noqa: F811
) -> None:
    make_credit_account(db, uid, 6, threshold=5, amount=20)
    gateway.fail = "card_declined: Your card was declined."
    debit(followups, uid, "wf-1")  # 6 -> 5
    debit(followups, uid, "wf-2")  # 5 -> 4: crosses, the refill is charged after the commit
    assert followups.drain(10)
    failed = [d for t, d, _ in _events(db, uid) if t == "refill.failed"]
    assert len(failed) == 1
    assert failed[0]["credits"] == 20 and "card_declined" in failed[0]["error"]
