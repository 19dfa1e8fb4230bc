"""Ambiguous sends are settled from the provider's own records, not guessed: the real Plivo SDK
against the loopback Plivo (which keeps a message list like Plivo's), the real SMTP client
against the loopback SMTP server, attempt by attempt (ActivityEnvironment), on both databases."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select, update
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import DunningActivities
from dunning.credits import ledger
from dunning.domain.contract import MessageRequest
from dunning.messages import log as message_log
from dunning.platform.db import Database
from dunning.platform.db.models import Account, Message
from dunning.platform.providers.email import OutgoingEmail, SmtpEmailProvider
from dunning.platform.providers.sms import OutgoingSms, PlivoSmsProvider
from tests.fakes.plivo import FakePlivo, Scripted
from tests.fakes.smtp import SmtpSink
from tests.helpers import add_customer, make_account


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after this point of the attempt runs."""


class DiesAfter:
    """The real provider, then the worker dies before the answer is recorded."""

    def __init__(self, inner: Any, *, before: bool = False) -> None:
        self.inner, self.before = inner, before
        self.name = inner.name

    def send(self, msg: OutgoingSms | OutgoingEmail) -> str:
        if not self.before:
            self.inner.send(msg)
        raise Killed()

    def outbound_since(self, *args: Any) -> Any:
        return self.inner.outbound_since(*args)


@pytest.fixture
def plivo(plivo_server: FakePlivo) -> Any:
    plivo_server.reset()
    yield PlivoSmsProvider(plivo_server.auth_id, plivo_server.auth_token, plivo_server.url)
    plivo_server.reset()


@pytest.fixture
def smtp(smtp_server: SmtpSink) -> Any:
    smtp_server.reset()
    yield SmtpEmailProvider("127.0.0.1", smtp_server.port, timeout=5)
    smtp_server.reset()


def _env(run_id: str) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, workflow_run_id=run_id, workflow_id="wf")
    return env


def _request(account: str, invoice: str = "inv1", step: int = 1) -> MessageRequest:
    now = datetime.now(UTC)
    return MessageRequest(
        workflow_id=f"dunning-{account}-{invoice}", account_id=account, customer_id="cus1",
        invoice_id=invoice, step=step, step_count=1, amount_due=4900, currency="USD",
        billing_link="https://pay.example.com/inv1", failed_at=now, now=now,
    )


def _setup(db: Database, account: str, phone: str) -> None:
    make_account(db, account, schedule="0s", balance=10)
    add_customer(db, account, "cus1", phone=phone, email=f"{account}@example.com")


def _rows(db: Database, account: str) -> list[Message]:
    with db.session() as s:
        return list(s.scalars(select(Message).where(Message.account_id == account)
                              .order_by(Message.id)))


def _phone(uid: str, n: int = 0) -> str:
    return f"+1415557{int(uid[:4], 16) % 1000:03d}{n}"


def test_sms_taken_before_the_crash_is_found_and_recorded_sent(
    db: Database, plivo: PlivoSmsProvider, plivo_server: FakePlivo, uid: str, smtp: Any,
) -> None:
    account, phone = f"rc1-{uid}", _phone(uid, 1)
    _setup(db, account, phone)
    env = _env(f"run-{uid}")
    dying = DunningActivities(db, DiesAfter(plivo), smtp)
    with pytest.raises(Killed):
        env.run(dying.send_sms, _request(account))
    assert [r.status for r in _rows(db, account)] == ["claimed"]
    acts = DunningActivities(db, plivo, smtp, settle_after=0)
    result = env.run(acts.send_sms, _request(account))
    assert result.status == "sent" and result.credits == 1
    taken = plivo_server.accepted(phone.lstrip("+"))
    assert len(taken) == 1  # found in the list, not sent again
    row = _rows(db, account)[0]
    assert (row.status, row.provider_id) == ("sent", taken[0].message_uuid)
    assert plivo_server.list_requests >= 1
    with db.session() as s:
        assert ledger.balance_of(s, account) == 9


def test_sms_never_taken_is_sent_once_after_the_settling_window(
    db: Database, plivo: PlivoSmsProvider, plivo_server: FakePlivo, uid: str, smtp: Any,
) -> None:
    account, phone = f"rc2-{uid}", _phone(uid, 2)
    _setup(db, account, phone)
    env = _env(f"run-{uid}")
    dying = DunningActivities(db, DiesAfter(plivo, before=True), smtp)
    with pytest.raises(Killed):
        env.run(dying.send_sms, _request(account))
    waiting = DunningActivities(db, plivo, smtp, settle_after=60)
    with pytest.raises(ApplicationError) as err:  # too early: the list may still catch up
        env.run(waiting.send_sms, _request(account))
    assert err.value.type == "Settling" and err.value.next_retry_delay is not None
    assert plivo_server.accepted(phone.lstrip("+")) == []
    acts = DunningActivities(db, plivo, smtp, settle_after=0)
    assert env.run(acts.send_sms, _request(account)).status == "sent"
    assert env.run(acts.send_sms, _request(account)).status == "sent"  # a replay: recorded
    taken = plivo_server.accepted(phone.lstrip("+"))
    assert len(taken) == 1
    row = _rows(db, account)[0]
    assert (row.status, row.provider_id, row.attempts) == ("sent", taken[0].message_uuid, 2)
    with db.session() as s:
        assert ledger.balance_of(s, account) == 9  # one reservation, kept across the resend


def test_sms_whose_answer_was_dropped_is_settled_from_the_list(
    db: Database, plivo: PlivoSmsProvider, plivo_server: FakePlivo, uid: str, smtp: Any,
) -> None:
    account, phone = f"rc3-{uid}", _phone(uid, 3)
    _setup(db, account, phone)
    env = _env(f"run-{uid}")
    acts = DunningActivities(db, plivo, smtp, settle_after=0)
    plivo_server.push(Scripted(drop_after_accept=True))
    with pytest.raises(ApplicationError) as err:
        env.run(acts.send_sms, _request(account))
    assert err.value.type == "Unsettled"
    assert [r.status for r in _rows(db, account)] == ["claimed"]
    assert env.run(acts.send_sms, _request(account)).status == "sent"
    taken = plivo_server.accepted(phone.lstrip("+"))
    assert len(taken) == 1
    assert _rows(db, account)[0].provider_id == taken[0].message_uuid


def test_two_cases_to_one_number_are_not_mistaken_for_each_other(
    db: Database, plivo: PlivoSmsProvider, plivo_server: FakePlivo, uid: str, smtp: Any,
) -> None:
    """Two invoices of one customer, both claimed, the first taken by Plivo and the second
    not: the second is not settled by the first's message (it is sent once)."""
    account, phone = f"rc4-{uid}", _phone(uid, 4)
    _setup(db, account, phone)
    with db.session() as s:  # both invoices text today: no one-conversation-a-day limit
        s.execute(update(Account).where(Account.id == account).values(daily_message_limit=0))
    env = _env(f"run-{uid}")
    took = DunningActivities(db, DiesAfter(plivo), smtp)
    lost = DunningActivities(db, DiesAfter(plivo, before=True), smtp)
    with pytest.raises(Killed):
        env.run(took.send_sms, _request(account, "inv1"))
    with pytest.raises(Killed):
        env.run(lost.send_sms, _request(account, "inv2"))
    acts = DunningActivities(db, plivo, smtp, settle_after=0)
    # Two open claims, one message: which went out cannot be told yet, so nothing is guessed.
    waiting = DunningActivities(db, plivo, smtp, settle_after=30)
    for invoice in ("inv1", "inv2"):
        with pytest.raises(ApplicationError, match="waiting for delivery reports"):
            env.run(waiting.send_sms, _request(account, invoice))
    # A delivery report names the first row (its callback URL carries the row id).
    first = _rows(db, account)[0]
    with db.session() as s:
        row = s.get(Message, first.id)
        assert row is not None
        message_log.adopt_provider_id(row, plivo_server.accepted(phone.lstrip("+"))[0]
                                      .message_uuid)
    assert env.run(acts.send_sms, _request(account, "inv1")).status == "sent"
    assert env.run(acts.send_sms, _request(account, "inv2")).status == "sent"
    taken = plivo_server.accepted(phone.lstrip("+"))
    assert len(taken) == 2
    rows = _rows(db, account)
    assert [r.status for r in rows] == ["sent", "sent"]
    assert {r.provider_id for r in rows} == {t.message_uuid for t in taken}
    assert taken[1].url is not None and taken[1].url.endswith(f"ref={rows[1].id}")


def test_email_after_an_ambiguous_crash_is_resent_with_the_same_message_id(
    db: Database, plivo: PlivoSmsProvider, smtp: SmtpEmailProvider, smtp_server: SmtpSink,
    uid: str,
) -> None:
    account = f"rc5-{uid}"
    _setup(db, account, _phone(uid, 5))
    env = _env(f"run-{uid}")
    dying = DunningActivities(db, plivo, DiesAfter(smtp))
    with pytest.raises(Killed):
        env.run(dying.send_email, _request(account))
    acts = DunningActivities(db, plivo, smtp, settle_after=0)
    assert env.run(acts.send_email, _request(account)).status == "sent"
    copies = smtp_server.to(f"{account}@example.com")
    assert len(copies) == 2 and copies[0]["Message-ID"] == copies[1]["Message-ID"]
    assert env.run(acts.send_email, _request(account)).status == "sent"
    assert len(smtp_server.to(f"{account}@example.com")) == 2


def test_email_dropped_mid_data_is_resent_once_then_recorded(
    db: Database, plivo: PlivoSmsProvider, smtp: SmtpEmailProvider, smtp_server: SmtpSink,
    uid: str,
) -> None:
    account = f"rc6-{uid}"
    _setup(db, account, _phone(uid, 6))
    env = _env(f"run-{uid}")
    acts = DunningActivities(db, plivo, smtp, settle_after=0)
    smtp_server.drop_after_data = 1
    with pytest.raises(ApplicationError) as err:
        env.run(acts.send_email, _request(account))
    assert err.value.type == "Unsettled"
    assert env.run(acts.send_email, _request(account)).status == "sent"
    copies = smtp_server.to(f"{account}@example.com")
    assert len(copies) == 2 and len({c["Message-ID"] for c in copies}) == 1
    row = _rows(db, account)[0]
    assert (row.status, row.attempts) == ("sent", 2)


def test_email_resends_are_bounded(
    db: Database, plivo: PlivoSmsProvider, smtp: SmtpEmailProvider, smtp_server: SmtpSink,
    uid: str,
) -> None:
    account = f"rc7-{uid}"
    _setup(db, account, _phone(uid, 7))
    env = _env(f"run-{uid}")
    acts = DunningActivities(db, plivo, smtp, settle_after=0)
    smtp_server.drop_after_data = 5
    for _ in range(3):
        with pytest.raises(ApplicationError):
            env.run(acts.send_email, _request(account))
    result = env.run(acts.send_email, _request(account))
    assert result.status == "failed" and "outcome unknown" in result.reason
    assert len(smtp_server.to(f"{account}@example.com")) == 3
    assert _rows(db, account)[0].status == "unknown"
