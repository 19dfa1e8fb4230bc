"""Long outages end cleanly: the last attempt before the give-up records the reminder `failed`
with the provider's last reason (credits back) on both channels, and a case that ends leaves no
row open. The real providers' clients against the loopback Plivo (503) and SMTP (451)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import DunningActivities
from dunning.credits import ledger
from dunning.domain.contract import SEND_GIVE_UP, SEND_RETRY, FinishCaseRequest, MessageRequest
from dunning.platform.db import Database
from dunning.platform.db.models import Message
from dunning.platform.providers.email import SmtpEmailProvider
from dunning.platform.providers.sms import PlivoSmsProvider
from tests.fakes.plivo import FakePlivo
from tests.fakes.smtp import SmtpSink
from tests.helpers import add_customer, make_account


@pytest.fixture
def outage(plivo_server: FakePlivo, smtp_server: SmtpSink) -> Any:
    plivo_server.reset()
    smtp_server.reset()
    plivo_server.down = smtp_server.down = True
    yield (PlivoSmsProvider(plivo_server.auth_id, plivo_server.auth_token, plivo_server.url),
           SmtpEmailProvider("127.0.0.1", smtp_server.port, timeout=5))
    plivo_server.reset()
    smtp_server.reset()


def _env(run_id: str, attempt: int, first_scheduled: datetime) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, workflow_run_id=run_id, workflow_id="wf", attempt=attempt,
        retry_policy=SEND_RETRY, schedule_to_close_timeout=SEND_GIVE_UP,
        scheduled_time=first_scheduled, current_attempt_scheduled_time=datetime.now(UTC),
    )
    return env


def _request(account: str) -> MessageRequest:
    now = datetime.now(UTC)
    return MessageRequest(
        workflow_id=f"dunning-{account}-inv1", account_id=account, customer_id="cus1",
        invoice_id="inv1", step=1, step_count=1, amount_due=4900, currency="USD",
        billing_link="https://pay.example.com/inv1", failed_at=now, now=now,
    )


def _rows(db: Database, account: str) -> dict[str, Message]:
    with db.session() as s:
        return {r.channel: r for r in s.scalars(
            select(Message).where(Message.account_id == account))}


def test_the_last_attempt_before_the_give_up_ends_both_channels_failed(
    db: Database, outage: Any, uid: str,
) -> None:
    sms, email = outage
    account = f"gu-{uid}"
    make_account(db, account, schedule="0s", balance=10)
    add_customer(db, account, "cus1", phone=f"+1415559{int(uid[:4], 16) % 1000:03d}1")
    acts = DunningActivities(db, sms, email)
    run = f"run-{uid}"
    # Early in the outage: a retryable failure, the row waits as `retry` with its reservation.
    early = _env(run, 3, datetime.now(UTC) - timedelta(minutes=1))
    for send in (acts.send_sms, acts.send_email):
        with pytest.raises(ApplicationError) as err:
            early.run(send, _request(account))
        assert err.value.type == "Transient"
    rows = _rows(db, account)
    assert {c: r.status for c, r in rows.items()} == {"sms": "retry", "email": "retry"}
    with db.session() as s:
        assert ledger.balance_of(s, account) == 9
    # A day later, the attempt after which no retry fits before the give-up.
    last = _env(run, 150, datetime.now(UTC) - SEND_GIVE_UP + timedelta(minutes=5))
    sms_result = last.run(acts.send_sms, _request(account))
    email_result = last.run(acts.send_email, _request(account))
    assert sms_result.status == email_result.status == "failed"
    assert "provider kept failing: Plivo unavailable" in sms_result.reason
    assert "provider kept failing: message deferred: 451" in email_result.reason
    rows = _rows(db, account)
    assert {c: (r.status, r.reason) for c, r in rows.items()} == {
        "sms": ("failed", sms_result.reason), "email": ("failed", email_result.reason)}
    with db.session() as s:
        assert ledger.balance_of(s, account) == 10 == ledger.ledger_sum(s, account)
    # Replays and late retries read the record.
    assert last.run(acts.send_sms, _request(account)).reason == sms_result.reason


def test_a_case_that_ends_leaves_no_row_open(db: Database, outage: Any, uid: str) -> None:
    sms, email = outage
    account = f"gu2-{uid}"
    make_account(db, account, schedule="0s", balance=10)
    add_customer(db, account, "cus1", phone=f"+1415559{int(uid[:4], 16) % 1000:03d}2")
    acts = DunningActivities(db, sms, email)
    env = _env(f"run-{uid}", 2, datetime.now(UTC))
    for send in (acts.send_sms, acts.send_email):
        with pytest.raises(ApplicationError):
            env.run(send, _request(account))
    # The workflow gave up on the sends (the server's schedule-to-close fired) and ends.
    env.run(acts.finish_case, FinishCaseRequest(
        f"dunning-{account}-inv1", account, "exhausted", 0, 0, 0, datetime.now(UTC)))
    rows = _rows(db, account)
    assert {c: r.status for c, r in rows.items()} == {"sms": "failed", "email": "failed"}
    assert all(r.reason and r.reason.startswith("provider kept failing: ")
               for r in rows.values())
    with db.session() as s:
        assert ledger.balance_of(s, account) == 10 == ledger.ledger_sum(s, account)
