"""The message log's transitions, with a database session alone (no Temporal, no provider
server): claim, hold, retry, release, skip, mark unknown, deliver, replies and delivery reports,
on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dunning.credits import ledger
from dunning.messages import log as message_log
from dunning.messages.log import ConcurrentSend, MessageKey, SendLater
from dunning.platform.db import Database
from dunning.platform.db.models import CreditEntry, Message
from dunning.platform.providers import (
    AmbiguousProviderError,
    PermanentProviderError,
    TransientProviderError,
)
from tests.helpers import make_account


@pytest.fixture
def account(db: Database, uid: str) -> str:
    acct = f"log-{uid}"
    make_account(db, acct, balance=10)
    return acct


def _key(uid: str, step: int = 1, channel: str = "sms") -> MessageKey:
    return MessageKey(f"wf-{uid}", f"run-{uid}", step, channel)


def _row(db: Database, row_id: int) -> Message:
    with db.session() as s:
        row = s.get(Message, row_id)
        assert row is not None
        s.expunge(row)
        return row


def _balance(db: Database, account: str) -> int:
    with db.session() as s:
        return ledger.balance_of(s, account)


def _reserve(db: Database, account: str, key: MessageKey, cost: int) -> None:
    with db.session() as s:
        assert ledger.reserve(s, account, cost, workflow_id=key.workflow_id, step=key.step).ok


def _claim(db: Database, account: str, key: MessageKey, credits: int = 0) -> message_log.Claim:
    with db.session() as s:
        return message_log.claim(s, None, key, account, "cus1", "+1415***", credits=credits,
                                 segments=1, encoding="GSM-7")


def test_statuses_are_one_literal() -> None:
    assert set(message_log.STATUSES) == {"claimed", "retry", "sent", "failed", "skipped",
                                         "unknown"}
    assert {"sent", "failed", "skipped", "unknown"} == message_log.FINAL


def test_claim_then_sent_is_final_and_reads_back_as_recorded(db: Database, account: str,
                                                             uid: str) -> None:
    key = _key(uid)
    _reserve(db, account, key, 1)
    claimed = _claim(db, account, key, credits=1)
    with db.session() as s:
        row = message_log.find(s, key)
        assert row is not None and row.status == "claimed" and not message_log.is_final(row)
        message_log.mark_sent(s, claimed.id, "uuid-1")
    stored = _row(db, claimed.id)
    assert (stored.status, stored.provider_id, stored.attempts) == ("sent", "uuid-1", 1)
    with db.session() as s:
        row = message_log.find(s, key)
        assert row is not None and message_log.is_final(row)
        result = message_log.recorded(row)
    assert (result.status, result.credits) == ("sent", 1)


def test_a_second_claim_of_the_same_key_loses(db: Database, account: str, uid: str) -> None:
    key = _key(uid)
    _claim(db, account, key)
    with pytest.raises(IntegrityError):
        _claim(db, account, key)
    with db.session() as s:
        rows = s.scalars(select(Message).where(Message.workflow_id == key.workflow_id)).all()
    assert len(rows) == 1


def test_hold_then_claim_keeps_the_reservation_and_a_second_claim_is_refused(
    db: Database, account: str, uid: str,
) -> None:
    key = _key(uid)
    _reserve(db, account, key, 2)
    with db.session() as s:
        held = message_log.hold(s, key, account, "cus1", "+1415***", 2, 1, "GSM-7")
    assert (held.status, held.credits, held.reason) == ("retry", 2, message_log.SLOT_REASON)
    with db.session() as s:
        claimed = message_log.claim(s, held, key, account, "cus1", "h", credits=99)
    assert claimed.credits == 2  # the row's own reservation, not the new figure
    with db.session() as s, pytest.raises(ConcurrentSend):
        message_log.claim(s, held, key, account, "cus1", "h", credits=2)
    assert _row(db, claimed.id).attempts == 1


def test_back_to_retry_then_release_refunds_once(db: Database, account: str, uid: str) -> None:
    key = _key(uid)
    _reserve(db, account, key, 3)
    claimed = _claim(db, account, key, credits=3)
    assert _balance(db, account) == 7
    with db.session() as s:
        message_log.back_to_retry(s, claimed.id, "503 from provider")
    stored = _row(db, claimed.id)
    assert (stored.status, stored.reason) == ("retry", "503 from provider")
    with db.session() as s:
        row = message_log.find(s, key)
        assert row is not None
        message_log.release(s, key, row.id, row.account_id, row.credits, "gave up after a day")
    stored = _row(db, claimed.id)
    assert (stored.status, stored.reason) == ("failed", "gave up after a day")
    assert _balance(db, account) == 10
    with db.session() as s:
        refunds = s.scalars(select(CreditEntry).where(
            CreditEntry.message_id == claimed.id, CreditEntry.kind == "refund")).all()
    assert len(refunds) == 1


def test_back_to_retry_touches_only_a_claimed_row(db: Database, account: str, uid: str) -> None:
    key = _key(uid)
    claimed = _claim(db, account, key)
    with db.session() as s:
        message_log.mark_sent(s, claimed.id, "uuid-9")
        message_log.back_to_retry(s, claimed.id, "late 503")
    assert _row(db, claimed.id).status == "sent"


def test_skip_records_the_reason(db: Database, account: str, uid: str) -> None:
    key = _key(uid, channel="email")
    with db.session() as s:
        result = message_log.skip(s, key, account, "cus1", "no email address for this customer")
        row = message_log.find(s, key)
    assert (result.status, result.reason) == ("skipped", "no email address for this customer")
    assert row is not None and row.status == "skipped" and message_log.is_final(row)


def test_mark_unknown_keeps_credits_spent_and_reads_as_failed(
    db: Database, account: str, uid: str,
) -> None:
    key = _key(uid)
    _reserve(db, account, key, 1)
    _claim(db, account, key, credits=1)
    with db.session() as s:
        row = message_log.find(s, key)
        assert row is not None
        result = message_log.mark_unknown(s, key, row)
    assert (result.status, result.credits) == ("failed", 1)
    assert "outcome unknown" in result.reason
    with db.session() as s:
        row = message_log.find(s, key)
    assert row is not None and row.status == "unknown"
    assert message_log.recorded(row).status == "failed"
    assert _balance(db, account) == 9


def test_reclaim_takes_a_claimed_row_only_once(db: Database, account: str, uid: str) -> None:
    key = _key(uid, channel="email")
    claimed = _claim(db, account, key)
    with db.session() as s:
        seen = message_log.find(s, key)
    assert seen is not None
    with db.session() as s:
        again = message_log.reclaim(s, seen, key, "h")
    assert again.id == claimed.id
    with db.session() as s, pytest.raises(ConcurrentSend):  # a racer read the same claim
        message_log.reclaim(s, seen, key, "h")
    assert _row(db, claimed.id).attempts == 2


def _tx(db: Database) -> Callable[[], AbstractContextManager[Session]]:
    return db.session


@pytest.mark.parametrize(("error", "status", "balance"), [
    (None, "sent", 9),
    (PermanentProviderError("invalid destination"), "failed", 10),
    (AmbiguousProviderError("read timeout"), "unknown", 9),
])
def test_deliver_records_the_provider_answer(
    db: Database, account: str, uid: str, error: Exception | None, status: str, balance: int,
) -> None:
    key = _key(uid)
    _reserve(db, account, key, 1)
    claimed = _claim(db, account, key, credits=1)
    heard: list[str] = []

    def call() -> str:
        if error is not None:
            raise error
        return "uuid-42"

    result = message_log.deliver(_tx(db), claimed, call, refund=True, on_accepted=heard.append)
    stored = _row(db, claimed.id)
    assert stored.status == status
    assert result.status == ("sent" if status == "sent" else "failed")
    assert _balance(db, account) == balance
    assert heard == (["uuid-42"] if status == "sent" else [])
    if status == "sent":
        assert stored.provider_id == "uuid-42"


def test_deliver_transient_goes_back_to_retry(db: Database, account: str, uid: str) -> None:
    key = _key(uid)
    claimed = _claim(db, account, key, credits=0)

    def call() -> str:
        raise TransientProviderError("429 too many requests")

    with pytest.raises(SendLater, match="429"):
        message_log.deliver(_tx(db), claimed, call, refund=True)
    assert _row(db, claimed.id).status == "retry"


def test_email_failure_is_not_refunded(db: Database, account: str, uid: str) -> None:
    key = _key(uid, channel="email")
    claimed = _claim(db, account, key)

    def call() -> str:
        raise PermanentProviderError("550 mailbox unavailable")

    result = message_log.deliver(_tx(db), claimed, call, refund=False)
    assert result.status == "failed"
    assert (_row(db, claimed.id).status, _row(db, claimed.id).reason) == (
        "failed", "550 mailbox unavailable")


def test_reply_queue_and_outcomes(db: Database, account: str, uid: str) -> None:
    with db.session() as s:
        first = message_log.queue_reply(s, "help", account, f"in-{uid}", "", "+1415***",
                                        "+14155550100", "+14155552671", "Acme: help", 1,
                                        "GSM-7")
        second = message_log.queue_reply(s, "stop", account, f"in2-{uid}", "", "+1415***",
                                         "+14155550100", "+14155552671", "Acme: stopped", 1,
                                         "GSM-7")
    row = _row(db, first)
    assert (row.workflow_id, row.run_id, row.step, row.status, row.credits) == (
        f"help:{account}", f"in-{uid}", 0, "retry", 0)
    with db.session() as s:
        assert message_log.pending_replies(s, f"in-{uid}") == [first]
        found = message_log.reply_to_send(s, first)
        assert found is not None
        key, reply = found
        assert (key.workflow_id, reply.dst, reply.text) == (
            f"help:{account}", "+14155552671", "Acme: help")
        held = message_log.find_by_id(s, first)
        assert held is not None
        message_log.claim(s, held, key, account, "", "h", credits=0)
        message_log.mark_sent(s, first, "uuid-r")
        assert message_log.pending_replies(s, f"in-{uid}") == []
    assert (_row(db, first).status, _row(db, first).provider_id) == ("sent", "uuid-r")
    assert _row(db, second).status == "retry"  # still pending, for its workflow


def test_delivery_report_settles_only_unknown_rows(db: Database, account: str,
                                                   uid: str) -> None:
    sent = _claim(db, account, _key(uid, 1))
    lost = _claim(db, account, _key(uid, 2))
    with db.session() as s:
        message_log.mark_sent(s, sent.id, "uuid-a")
        row = message_log.find(s, _key(uid, 2))
        assert row is not None
        message_log.mark_unknown(s, _key(uid, 2), row)
    with db.session() as s:
        for row_id in (sent.id, lost.id):
            msg = s.get(Message, row_id)
            assert msg is not None
            if msg.provider_id is None:
                message_log.adopt_provider_id(msg, "uuid-b")
            message_log.record_delivery(msg, "undelivered", "30", 3)
            message_log.settle_unknown(msg, delivered=False, reason="delivery report")
    a, b = _row(db, sent.id), _row(db, lost.id)
    assert (a.status, a.delivery_status, a.delivery_sequence) == ("sent", "undelivered", 3)
    assert (b.status, b.provider_id, b.reason) == ("failed", "uuid-b", "delivery report")
