"""A provider's answer is never thrown away: the database goes down (for real, through a TCP
proxy) right after the provider accepted, the "mark sent" write fails, and the retry records
`sent` with the provider's id from the heartbeat details, without sending again."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from temporalio.testing import ActivityEnvironment

from activities import DunningActivities
from dunning.credits import ledger
from dunning.domain.contract import MessageRequest
from dunning.platform.db import Database
from dunning.platform.db.models import Message
from dunning.platform.providers.email import OutgoingEmail
from dunning.platform.providers.sms import OutgoingSms
from tests.fakes.tcp_proxy import TcpProxy
from tests.helpers import add_customer, make_account

pytestmark = pytest.mark.postgres


@pytest.fixture
def proxy(pg_db: Database, postgres_url: str) -> Iterator[tuple[TcpProxy, Database]]:
    parts = urlsplit(postgres_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    netloc = f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username else (
        f"127.0.0.1:{proxy.port}")
    db = Database(urlunsplit(parts._replace(netloc=netloc)), pool_size=2)
    try:
        yield proxy, db
    finally:
        proxy.stop()
        db.dispose()


class AcceptThenCut:
    """A provider at the edge of the machine that accepts the message, after which the
    database line is cut (the worst moment: the answer is in hand, the record not written)."""

    name = "accept-then-cut"

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy
        self.calls: list[Any] = []

    def send(self, msg: OutgoingSms | OutgoingEmail) -> str:
        self.calls.append(msg)
        self.proxy.cut()
        return f"answer-{len(self.calls)}"


def _env(run_id: str, beats: list[Any], details: list[Any] | None = None) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, workflow_run_id=run_id, workflow_id="wf",
                                   heartbeat_details=details or [])
    env.on_heartbeat = lambda *d: beats.append(list(d))
    return env


def _request(account: str) -> MessageRequest:
    now = datetime.now(UTC)
    return MessageRequest(
        workflow_id=f"dunning-{account}-inv1", account_id=account, customer_id="cus1",
        invoice_id="inv1", step=1, step_count=1, amount_due=4900, currency="USD",
        billing_link="https://pay.example.com/inv1", failed_at=now, now=now,
    )


@pytest.mark.parametrize("channel", ["sms", "email"])
def test_a_failed_mark_sent_is_recorded_sent_on_retry(
    pg_db: Database, proxy: tuple[TcpProxy, Database], uid: str, channel: str,
) -> None:
    tcp, db = proxy
    account = f"ans-{uid}"
    make_account(pg_db, account, schedule="0s", balance=10)
    add_customer(pg_db, account, "cus1")
    provider = AcceptThenCut(tcp)
    acts = DunningActivities(db, provider, provider)
    send = acts.send_sms if channel == "sms" else acts.send_email
    beats: list[Any] = []

    with pytest.raises(DBAPIError):  # the answer came, the record could not be written
        _env(f"run-{uid}", beats).run(send, _request(account))
    assert tcp.cuts == 1 and len(provider.calls) == 1
    kept = beats[-1]
    assert kept == [{"row": kept[0]["row"], "provider_id": "answer-1"}]
    with pg_db.session() as s:
        row = s.scalars(select(Message).where(Message.account_id == account)).one()
    assert row.status == "claimed"  # what the old policy turned into `unknown`

    # A retry while the database is still down fails again and keeps the answer.
    with pytest.raises(DBAPIError):
        _env(f"run-{uid}", beats, kept).run(send, _request(account))
    tcp.restore()
    result = _env(f"run-{uid}", beats, kept).run(send, _request(account))
    assert result.status == "sent"
    assert len(provider.calls) == 1  # never sent again
    with pg_db.session() as s:
        row = s.scalars(select(Message).where(Message.account_id == account)).one()
        assert (row.status, row.provider_id) == ("sent", "answer-1")
        assert ledger.balance_of(s, account) == (9 if channel == "sms" else 10)
