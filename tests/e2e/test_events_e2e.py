"""Outbound events end to end: real cases on a dev server emit events, the worker's kicker and
the delivery workflow post them to a loopback receiver that verifies every signature with
`standardwebhooks`; through a receiver outage none is lost and none is reordered per case."""

from __future__ import annotations

import asyncio
import json
import re
from collections import defaultdict

import pytest
from sqlalchemy import func, select
from temporalio.testing import WorkflowEnvironment

from dunning.events import endpoints, outbox
from dunning.events.kicker import Kicker, KickerConfig
from dunning.platform.db import Database
from dunning.platform.db.models import EventDelivery, OutboxEvent, WebhookEndpoint
from tests.fakes.plivo import FakePlivo
from tests.fakes.receiver import EventReceiver
from tests.fakes.smtp import SmtpSink
from tests.helpers import (
    add_customer,
    case_input,
    make_account,
    real_activities,
    running_worker,
    wait_for,
)

CASES = 4


def _outbox(db: Database, account: str) -> list[tuple[str, str | None, str]]:
    with db.session() as s:
        return [(e, c, t) for e, c, t in s.execute(
            select(OutboxEvent.event_id, OutboxEvent.case_id, OutboxEvent.type)
            .where(OutboxEvent.account_id == account).order_by(OutboxEvent.seq)
        ).all()]


def _undelivered(db: Database, endpoint_id: str) -> int:
    with db.session() as s:
        return int(s.scalar(
            select(func.count()).select_from(EventDelivery)
            .where(EventDelivery.endpoint_id == endpoint_id,
                   EventDelivery.status != "delivered")
        ) or 0)


@pytest.mark.slow
async def test_events_survive_a_receiver_outage_in_order(
    temporal_env: WorkflowEnvironment, db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    client = temporal_env.client
    account, queue = f"evt-{uid}", f"evt-q-{uid}"
    make_account(db, account, schedule="0s,1s,2s", grace="1s", balance=100)
    for i in range(CASES):
        add_customer(db, account, f"c{i}", phone=f"+1415555{int(uid[:4], 16) % 100:02d}{i:02d}",
                     email=f"c{i}.{uid}@example.com")
    receiver = EventReceiver()
    with db.session() as s:
        ep, new = endpoints.add_endpoint(s, account, receiver.url, [])
        endpoint_id = ep.id
    receiver.secret = new.secret
    receiver.down = True  # an outage from the start
    stop = asyncio.Event()
    kicker = Kicker(client, db, KickerConfig(task_queue=queue, poll_seconds=0.2,
                                             sweep_seconds=2, max_backoff_seconds=1,
                                             idle_seconds=5))
    try:
        async with running_worker(client, queue, real_activities(db, plivo_server,
                                                                 smtp_server)):
            kicking = asyncio.create_task(kicker.run(stop))
            handles = [
                await client.start_workflow(
                    "DunningWorkflow", case_input(account, f"inv{i}", f"c{i}"),
                    id=f"dunning-{account}-inv{i}", task_queue=queue,
                )
                for i in range(CASES)
            ]
            await wait_for(lambda: receiver.refused >= 3, timeout=30)
            await asyncio.sleep(2)
            receiver.down = False  # the receiver is back
            results = [await h.result() for h in handles]
            assert [r["outcome"] for r in results] == ["exhausted"] * CASES
            await wait_for(lambda: _undelivered(db, endpoint_id) == 0, timeout=60)
            stop.set()
            await kicking
    finally:
        receiver.close()

    recorded = _outbox(db, account)
    got = receiver.unique()
    # None lost: every recorded event arrived, signed (no rejections), each id once.
    assert receiver.rejected == 0
    assert sorted(r.webhook_id for r in got) == sorted(e for e, _, _ in recorded)
    # None reordered per case: arrival order per case is the recording order.
    expected: dict[str | None, list[str]] = defaultdict(list)
    for event_id, case_id, _ in recorded:
        expected[case_id].append(event_id)
    arrived: dict[str | None, list[str]] = defaultdict(list)
    for r in got:
        arrived[r.case_id].append(r.webhook_id)
    assert arrived == expected
    # Each case: started first, exhausted last, one reminder event per step and channel.
    for h in handles:
        types = [t for _, c, t in recorded if c == h.id]
        assert types[0] == "case.started" and types[-1] == "case.exhausted", types
        reminders = [t for t in types if t.startswith("reminder.")]
        assert len(reminders) == 6, types
    # No PII in any payload: ids only.
    for r in got:
        text = json.dumps(r.body)
        assert "@" not in text and not re.search(r"\+1415", text), text


async def test_sustained_failure_disables_the_endpoint(
    temporal_env: WorkflowEnvironment, sqlite_db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    """The delivery workflow retries with backoff for `give_up_seconds`, then disables the
    endpoint and marks its pending deliveries failed; every attempt is logged."""
    db, client = sqlite_db, temporal_env.client
    account, queue = f"evd-{uid}", f"evd-q-{uid}"
    make_account(db, account)
    receiver = EventReceiver()
    receiver.down = True
    with db.session() as s:
        ep, new = endpoints.add_endpoint(s, account, receiver.url, [])
        endpoint_id = ep.id
        outbox.record(s, account, "credits.empty", {"balance": 0})
    receiver.secret = new.secret
    stop = asyncio.Event()
    kicker = Kicker(client, db, KickerConfig(task_queue=queue, poll_seconds=0.2,
                                             give_up_seconds=3, max_backoff_seconds=1))
    try:
        async with running_worker(client, queue, real_activities(db, plivo_server,
                                                                 smtp_server)):
            kicking = asyncio.create_task(kicker.run(stop))

            def disabled() -> bool:
                with db.session() as s:
                    row = s.get(WebhookEndpoint, endpoint_id)
                    return row is not None and not row.enabled

            await wait_for(disabled, timeout=30)
            stop.set()
            await kicking
    finally:
        receiver.close()
    with db.session() as s:
        row = s.get(WebhookEndpoint, endpoint_id)
        assert row is not None and "kept failing" in (row.disabled_reason or "")
        (delivery,) = s.scalars(select(EventDelivery)
                                .where(EventDelivery.endpoint_id == endpoint_id)).all()
        assert delivery.status == "failed" and delivery.attempts >= 2
    assert receiver.refused == delivery.attempts and receiver.accepted == []


async def test_a_case_records_its_events_without_a_batch_of_its_own(
    temporal_env: WorkflowEnvironment, db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    """Patch `batched-bookkeeping`: events wait while a send is under way and the last ones ride on
    finish_case, so a short case records every event, in order, with no local activity of its
    own for them: register (with the campaign snapshot), the end action and finish are the
    case's only local activities."""
    client = temporal_env.client
    account, queue = f"evb-{uid}", f"evb-q-{uid}"
    make_account(db, account, schedule="0s,0s", grace="0s", balance=100)
    add_customer(db, account, "c1", phone=f"+1415556{int(uid[:4], 16) % 1000:03d}1",
                 email=f"c1.{uid}@example.com")
    async with running_worker(client, queue, real_activities(db, plivo_server, smtp_server)):
        handle = await client.start_workflow(
            "DunningWorkflow", case_input(account, "inv1", "c1"),
            id=f"dunning-{account}-inv1", task_queue=queue,
        )
        result = await handle.result()
    assert result["outcome"] == "exhausted"
    assert (result["emails_sent"], result["sms_sent"]) == (1, 1)
    types = [t for _, _, t in _outbox(db, account)]
    assert types[0] == "case.started" and types[-1] == "case.exhausted"
    assert sorted(types[1:-1]) == ["reminder.sent"] * 2 + ["reminder.skipped"] * 2
    assert types.index("reminder.skipped") < types.index("reminder.sent")
    markers = [
        e.marker_recorded_event_attributes.marker_name
        async for e in handle.fetch_history_events()
        if e.HasField("marker_recorded_event_attributes")
    ]
    assert markers.count("core_local_activity") == 3, markers
