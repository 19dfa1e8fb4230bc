"""Outbound events through a worker killed with SIGKILL mid-delivery and a receiver outage,
counted at a loopback receiver that verifies every signature with `standardwebhooks`: none
lost, none reordered per case (redelivery of the one in flight is allowed: same webhook-id)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from sqlalchemy import func, select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from dunning.events import endpoints
from dunning.platform.codec import converter_for
from dunning.platform.db import Database
from dunning.platform.db.models import EventDelivery, OutboxEvent
from dunning.platform.settings import Settings
from tests.fakes.receiver import EventReceiver
from tests.helpers import add_customer, case_input, make_account, wait_for

ROOT = Path(__file__).resolve().parents[2]
CASES = 6


def _worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "worker.py")], env=env, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.slow
async def test_events_through_worker_kill_and_outage(
    temporal_env: WorkflowEnvironment, sqlite_db: Database, uid: str, tmp_path: Path,
) -> None:
    db = sqlite_db
    account, queue = f"evcrash-{uid}", f"evcrash-q-{uid}"
    make_account(db, account, schedule="0s,3s,6s", grace="1s", sms=False)
    for i in range(CASES):
        add_customer(db, account, f"c{i}", email=f"c{i}.{uid}@example.com")
    receiver = EventReceiver()
    receiver.delay = 0.1
    with db.session() as s:
        ep, new = endpoints.add_endpoint(s, account, receiver.url, [])
        endpoint_id = ep.id
    receiver.secret = new.secret
    key = "k1:" + "cd" * 32
    env = {
        **os.environ,
        "DUNNING_TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "DUNNING_TASK_QUEUE": queue,
        "DUNNING_DATABASE_URL": db.url,
        "DUNNING_DATA_DIR": str(tmp_path),
        "DUNNING_CODEC_KEYS": key,
        "DUNNING_EVENTS_POLL_SECONDS": "0.2",
        "DUNNING_EVENTS_MAX_BACKOFF_SECONDS": "2",
    }
    client = await Client.connect(env["DUNNING_TEMPORAL_ADDRESS"],
                                  data_converter=converter_for(Settings(codec_keys=key,
                                                                        data_dir=tmp_path)))
    first = _worker(env)
    second: subprocess.Popen[bytes] | None = None
    try:
        handles = [
            await client.start_workflow(
                "DunningWorkflow", case_input(account, f"inv{i}", f"c{i}"),
                id=f"dunning-{account}-inv{i}", task_queue=queue,
            )
            for i in range(CASES)
        ]
        await wait_for(lambda: len(receiver.accepted) >= CASES, timeout=60, interval=0.02)
        first.send_signal(signal.SIGKILL)
        first.wait()
        receiver.down = True  # and the receiver goes away for a while
        second = _worker(env)
        await wait_for(lambda: receiver.refused >= 2, timeout=90)
        receiver.down = False
        results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 150)
        assert {r["outcome"] for r in results} == {"exhausted"}

        def undelivered() -> int:
            with db.session() as s:
                return int(s.scalar(select(func.count()).select_from(EventDelivery).where(
                    EventDelivery.endpoint_id == endpoint_id,
                    EventDelivery.status != "delivered")) or 0)

        await wait_for(lambda: undelivered() == 0, timeout=120, interval=0.5)
    finally:
        first.kill() if first.poll() is None else None
        if second is not None:
            _stop(second)
        receiver.close()

    with db.session() as s:
        recorded = s.execute(select(OutboxEvent.event_id, OutboxEvent.case_id, OutboxEvent.type)
                             .where(OutboxEvent.account_id == account)
                             .order_by(OutboxEvent.seq)).all()
    got = receiver.unique()
    assert receiver.rejected == 0
    assert sorted(r.webhook_id for r in got) == sorted(e for e, _, _ in recorded)  # none lost
    assert len({e for e, _, _ in recorded}) == len(recorded)  # each recorded once
    expected: dict[str | None, list[str]] = defaultdict(list)
    arrived: dict[str | None, list[str]] = defaultdict(list)
    for event_id, case_id, _ in recorded:
        expected[case_id].append(event_id)
    for r in got:
        arrived[r.case_id].append(r.webhook_id)
    assert arrived == expected  # none reordered per case
    for h in handles:  # started, 3 steps x 2 channels, exhausted: nothing missing
        types = [t for _, c, t in recorded if c == h.id]
        assert types[0] == "case.started" and types[-1] == "case.exhausted"
        assert len(types) == 8, types
