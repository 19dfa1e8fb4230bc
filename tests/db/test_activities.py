"""The send activities' exactly-once protocol, attempt by attempt (ActivityEnvironment), on both
databases: retries reuse the record, the ambiguous window is never resent."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import DunningActivities
from dunning.credits import ledger
from dunning.domain.contract import SEND_GIVE_UP, SEND_RETRY, MessageRequest
from dunning.platform.db import Database
from dunning.platform.db.models import CreditEntry, Message
from dunning.platform.providers import AmbiguousProviderError, TransientProviderError
from dunning.platform.providers.email import ConsoleEmailProvider
from dunning.platform.providers.sms import OutgoingSms
from tests.helpers import add_customer, make_account


class ScriptedSms:
    """An SMS provider at the edge of the machine: raises what it is told, counts calls."""

    name = "scripted"

    def __init__(self, *outcomes: Exception | None) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[OutgoingSms] = []

    def send(self, sms: OutgoingSms) -> str:
        self.calls.append(sms)
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome
        return f"uuid-{len(self.calls)}"


def _env(run_id: str) -> ActivityEnvironment:
    env = ActivityEnvironment()
    # As the workflow schedules sends: retried with backoff for up to a day.
    env.info = dataclasses.replace(env.info, workflow_run_id=run_id, workflow_id="wf",
                                   retry_policy=SEND_RETRY, schedule_to_close_timeout=SEND_GIVE_UP,
                                   scheduled_time=datetime.now(UTC),
                                   current_attempt_scheduled_time=datetime.now(UTC))
    return env


def _request(account: str, step: int = 1) -> MessageRequest:
    now = datetime.now(UTC)
    return MessageRequest(
        workflow_id=f"dunning-{account}-inv1", account_id=account, customer_id="cus1",
        invoice_id="inv1", step=step, step_count=1, amount_due=4900, currency="USD",
        billing_link="https://pay.example.com/inv1", failed_at=now, now=now,
    )


@pytest.fixture
def account(db: Database, uid: str) -> str:
    acct = f"act-{uid}"
    make_account(db, acct, schedule="0s", balance=10)
    add_customer(db, acct, "cus1")
    return acct


def _rows(db: Database, account: str) -> list[Message]:
    with db.session() as s:
        return list(s.scalars(select(Message).where(Message.account_id == account)))


def test_replayed_attempt_returns_the_recorded_result_without_sending(db, account, uid):
    sms = ScriptedSms()
    acts = DunningActivities(db, sms, ConsoleEmailProvider(echo=False))
    env = _env(f"run-{uid}")
    first = env.run(acts.send_sms, _request(account))
    second = env.run(acts.send_sms, _request(account))
    assert first.status == second.status == "sent"
    assert first.credits == second.credits == 1
    assert len(sms.calls) == 1
    with db.session() as s:
        assert ledger.balance_of(s, account) == 9


def test_transient_failure_keeps_the_claim_and_reservation_for_the_retry(db, account, uid):
    sms = ScriptedSms(TransientProviderError("503 from provider"))
    acts = DunningActivities(db, sms, ConsoleEmailProvider(echo=False))
    env = _env(f"run-{uid}")
    with pytest.raises(ApplicationError, match="provider unavailable"):
        env.run(acts.send_sms, _request(account))
    assert [r.status for r in _rows(db, account)] == ["retry"]
    result = env.run(acts.send_sms, _request(account))
    assert result.status == "sent"
    assert len(sms.calls) == 2
    with db.session() as s:
        debits = s.scalars(select(CreditEntry).where(
            CreditEntry.account_id == account, CreditEntry.kind == "sms_debit")).all()
        assert len(debits) == 1
        assert ledger.balance_of(s, account) == 9


def test_crash_inside_the_provider_call_is_never_resent(db, account, uid):
    """A claim left behind (the worker died between claim and outcome) is the ambiguous
    window: the next attempt records 'unknown' and does not call the provider again."""
    sms = ScriptedSms()
    acts = DunningActivities(db, sms, ConsoleEmailProvider(echo=False))
    env = _env(f"run-{uid}")

    class Killed(BaseException):
        """Stands in for SIGKILL: nothing after the provider call runs."""

    class DyingSms(ScriptedSms):
        def send(self, sms: OutgoingSms) -> str:
            raise Killed()

    dying = DunningActivities(db, DyingSms(), ConsoleEmailProvider(echo=False))
    with pytest.raises(Killed):
        env.run(dying.send_sms, _request(account))
    assert [r.status for r in _rows(db, account)] == ["claimed"]

    result = env.run(acts.send_sms, _request(account))
    assert result.status == "failed" and "outcome unknown" in result.reason
    assert sms.calls == []
    row = _rows(db, account)[0]
    assert row.status == "unknown" and row.credits == 1
    with db.session() as s:  # the provider may have billed: the credits stay spent
        assert ledger.balance_of(s, account) == 9


def test_provider_timeout_is_ambiguous_and_not_retried(db, account, uid):
    sms = ScriptedSms(AmbiguousProviderError("read timeout"))
    acts = DunningActivities(db, sms, ConsoleEmailProvider(echo=False))
    env = _env(f"run-{uid}")
    result = env.run(acts.send_sms, _request(account))
    again = env.run(acts.send_sms, _request(account))
    assert result.status == again.status == "failed"
    assert "outcome unknown" in result.reason
    assert len(sms.calls) == 1


def test_no_credits_registers_a_waiter_and_records_nothing(db, uid):
    acct = f"poor-{uid}"
    make_account(db, acct, schedule="0s", balance=0)
    add_customer(db, acct, "cus1")
    sms = ScriptedSms()
    acts = DunningActivities(db, sms, ConsoleEmailProvider(echo=False))
    result = _env(f"run-{uid}").run(acts.send_sms, _request(acct))
    assert result.status == "no_credits"
    assert sms.calls == [] and _rows(db, acct) == []
    with db.session() as s:
        assert [w[0] for w in ledger.waiters(s, acct)] == [f"dunning-{acct}-inv1"]


def test_paced_sends_are_spaced_by_the_shared_slot(db, account, uid):
    """With a pacer, each provider call waits for its slot: a crash while waiting leaves the
    credits held on a `retry` row that the next attempt sends from (not an ambiguous claim)."""
    from dunning.messages.pacing import SendPacer

    class Killed(BaseException):
        """Stands in for SIGKILL while the attempt sleeps for its slot."""

    sms = ScriptedSms()
    pacer = SendPacer(db, 10.0, key=f"test-{uid}")

    class DyingPacer(SendPacer):
        def take(self, *args: object, **kwargs: object) -> float:
            raise Killed()

    env = _env(f"run-{uid}")
    dying = DunningActivities(db, sms, ConsoleEmailProvider(echo=False),
                              pacer=DyingPacer(db, 10.0, key=f"test-{uid}"))
    with pytest.raises(Killed):
        env.run(dying.send_sms, _request(account))
    rows = _rows(db, account)
    assert [(r.status, r.credits, r.attempts) for r in rows] == [("retry", 1, 0)]
    acts = DunningActivities(db, sms, ConsoleEmailProvider(echo=False), pacer=pacer)
    assert env.run(acts.send_sms, _request(account)).status == "sent"
    assert len(sms.calls) == 1
    with db.session() as s:
        assert ledger.balance_of(s, account) == 9  # one debit, kept across the crash
    # Two more reminders back to back: the second waits for its slot (1/10 s + margin).
    import time

    starts = []
    for step in (2, 3):
        env.run(acts.send_sms, _request(account, step))
        starts.append(time.monotonic())
    assert starts[1] - starts[0] >= pacer.interval * 0.9
    assert [r.status for r in _rows(db, account)] == ["sent"] * 3


def test_a_send_after_a_wake_uses_the_credits_granted_to_it(db, uid):
    acct = f"grant-{uid}"
    make_account(db, acct, schedule="0s", balance=0)
    add_customer(db, acct, "cus1")
    sms = ScriptedSms()
    acts = DunningActivities(db, sms, ConsoleEmailProvider(echo=False))
    env = _env(f"run-{uid}")
    assert env.run(acts.send_sms, _request(acct)).status == "no_credits"
    with db.session() as s:
        ledger.top_up(s, acct, 1)
    with db.session() as s:
        assert ledger.grant(s, acct).workflow_ids == [f"dunning-{acct}-inv1"]
        assert ledger.balance_of(s, acct) == 0  # set aside for the waiting case at once
    assert env.run(acts.send_sms, _request(acct)).status == "sent"
    with db.session() as s:
        assert ledger.balance_of(s, acct) == 0 == ledger.ledger_sum(s, acct) - 0
        assert ledger.granted_count(s, acct) == 0
        debits = s.scalars(select(CreditEntry.amount).where(
            CreditEntry.account_id == acct, CreditEntry.kind == "sms_debit")).all()
    assert list(debits) == [-1]
