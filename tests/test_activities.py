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
from dunning import credits
from dunning.db import Database
from dunning.db.models import CreditEntry, Message
from dunning.domain import MessageRequest
from dunning.providers import AmbiguousProviderError, TransientProviderError
from dunning.providers.email import ConsoleEmailProvider
from dunning.providers.sms import OutgoingSms
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
    env.info = dataclasses.replace(env.info, workflow_run_id=run_id, workflow_id="wf")
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
        assert credits.balance_of(s, account) == 9


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
        assert credits.balance_of(s, account) == 9


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
        assert credits.balance_of(s, account) == 9


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
        assert [w[0] for w in credits.waiters(s, acct)] == [f"dunning-{acct}-inv1"]
