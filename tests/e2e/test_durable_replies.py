"""Compliance replies are durable work: the webhook hands a HELP answer or STOP confirmation to
a workflow keyed by the inbound MessageUUID (sent by a real worker to the loopback Plivo), so
Plivo's retry starts nothing twice, a delivery that could not start it is answered 503 and its
retry starts it, and a reply whose answer was lost is settled from Plivo's list. Never left
`claimed`."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from temporalio.testing import WorkflowEnvironment

from dunning.cases.client import DunningClient
from dunning.domain.contract import reply_workflow_id
from dunning.platform.db import Database
from dunning.platform.db.models import Message
from dunning.webhooks import create_app
from tests.db.test_webhooks import (
    INBOUND,
    Tenant,
    digits,
    fresh_number,
    make_settings,
    post,
)
from tests.fakes.plivo import FakePlivo, Scripted
from tests.fakes.smtp import SmtpSink
from tests.helpers import real_activities, running_worker, wait_for

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


def _inbound(phone: str, to: str, text: str, uuid: str) -> dict[str, str]:
    return {"From": digits(phone), "To": digits(to), "Text": text, "Type": "sms",
            "MessageUUID": uuid}


@pytest.fixture
def plivo(plivo_server: FakePlivo) -> Iterator[FakePlivo]:
    plivo_server.reset()
    yield plivo_server
    plivo_server.reset()


def _rows(db: Database, account: str) -> list[Message]:
    with db.session() as s:
        return list(s.scalars(select(Message).where(Message.account_id == account)))


async def test_help_reply_is_sent_by_its_workflow_once(
    temporal_env: WorkflowEnvironment, sqlite_db: Database, plivo: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    db, queue = sqlite_db, f"rq-{uid}"
    t = Tenant(db, f"r1-{uid}", fresh_number(), "Acme Cloud", support="help@acme.test")
    phone = fresh_number()
    settings = make_settings(task_queue=queue)
    dunning = DunningClient(temporal_env.client, settings, db)
    app = create_app(settings, db, temporal=dunning)  # durable replies: the default
    body = _inbound(phone, t.sender, "HELP", f"in-{uid}")
    async with running_worker(temporal_env.client, queue, real_activities(db, plivo,
                                                                         smtp_server)):
        with TestClient(app) as c:
            first = await asyncio.to_thread(post, c, INBOUND, body)
            assert first.status_code == 200
            await wait_for(lambda: plivo.accepted(digits(phone)), timeout=20)
            again = await asyncio.to_thread(post, c, INBOUND, body)  # Plivo's retry
            assert again.status_code == 200
        handle = temporal_env.client.get_workflow_handle(reply_workflow_id(f"in-{uid}"))
        result = await handle.result()
    assert result["status"] == "sent"
    got = plivo.accepted(digits(phone))
    assert len(got) == 1 and "Acme Cloud" in got[0].text
    rows = _rows(db, t.id)
    assert [(r.status, r.provider_id) for r in rows] == [("sent", got[0].message_uuid)]


async def test_a_delivery_that_could_not_start_the_reply_is_retried_by_plivo(
    temporal_env: WorkflowEnvironment, sqlite_db: Database, plivo: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    db, queue = sqlite_db, f"rq2-{uid}"
    t = Tenant(db, f"r2-{uid}", fresh_number(), "Acme Cloud")
    phone = fresh_number()
    settings = make_settings(task_queue=queue)
    up = {"temporal": False}

    async def connect() -> Any:
        if not up["temporal"]:
            raise ConnectionError("Temporal is down")
        return DunningClient(temporal_env.client, settings, db)

    body = _inbound(phone, t.sender, "STOP", f"in2-{uid}")
    app = create_app(settings, db, temporal=connect)
    async with running_worker(temporal_env.client, queue, real_activities(db, plivo,
                                                                         smtp_server)):
        with TestClient(app) as c:
            refused = await asyncio.to_thread(post, c, INBOUND, body)
            assert refused.status_code == 503  # Plivo retries the delivery
            rows = _rows(db, t.id)
            assert [r.status for r in rows] == ["retry"]  # planned, not lost, not claimed
            up["temporal"] = True
            retried = await asyncio.to_thread(post, c, INBOUND, body)
            assert retried.status_code == 200
            await wait_for(lambda: [r for r in _rows(db, t.id) if r.status == "sent"],
                           timeout=20)
            await asyncio.to_thread(post, c, INBOUND, body)  # once more: nothing new
    await asyncio.sleep(0.5)
    assert len(plivo.accepted(digits(phone))) == 1


async def test_a_reply_whose_answer_was_lost_is_settled_from_the_list(
    temporal_env: WorkflowEnvironment, sqlite_db: Database, plivo: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    db, queue = sqlite_db, f"rq3-{uid}"
    t = Tenant(db, f"r3-{uid}", fresh_number(), "Acme Cloud")
    phone = fresh_number()
    settings = make_settings(task_queue=queue)
    app = create_app(settings, db, temporal=DunningClient(temporal_env.client, settings, db))
    plivo.push(Scripted(drop_after_accept=True))  # taken, but the answer never arrives
    acts = real_activities(db, plivo, smtp_server)
    acts.settle_after = acts.settle_after * 0  # the list is current here
    async with running_worker(temporal_env.client, queue, acts):
        with TestClient(app) as c:
            r = await asyncio.to_thread(post, c, INBOUND,
                                        _inbound(phone, t.sender, "HELP", f"in3-{uid}"))
            assert r.status_code == 200
        handle = temporal_env.client.get_workflow_handle(reply_workflow_id(f"in3-{uid}"))
        result = await asyncio.wait_for(handle.result(), timeout=30)
    assert result["status"] == "sent"
    got = plivo.accepted(digits(phone))
    assert len(got) == 1
    assert [(r.status, r.provider_id) for r in _rows(db, t.id)] == [
        ("sent", got[0].message_uuid)]
    assert plivo.list_requests >= 1
