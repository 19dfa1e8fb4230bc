"""Kill a worker process (SIGKILL) mid-run, start another, and count at the provider: no
reminder twice, none lost (every one is sent, or recorded with its reason)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from dunning.platform.codec import converter_for
from dunning.platform.db import Database
from dunning.platform.db.models import Message
from dunning.platform.settings import Settings
from tests.fakes.plivo import FakePlivo, Scripted
from tests.fakes.smtp import SmtpSink
from tests.helpers import add_customer, case_input, make_account, wait_for

ROOT = Path(__file__).resolve().parents[2]
CASES = 12
STEPS = 3


def _worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "worker.py")], env=env, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


@pytest.mark.slow
async def test_sigkill_mid_run_no_duplicate_no_lost_reminder(
    temporal_env: WorkflowEnvironment, sqlite_db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str, tmp_path: Path,
) -> None:
    db = sqlite_db
    account, queue = f"crash-{uid}", f"crash-q-{uid}"
    make_account(db, account, schedule="0s,6s,12s", grace="1s", balance=1000)
    phones = {f"c{i}": f"+1415556{int(uid[:4], 16) % 100:02d}{i:02d}" for i in range(CASES)}
    for cid, phone in phones.items():
        add_customer(db, account, cid, phone=phone, email=f"{cid}.{uid}@example.com")
    key = "k1:" + "ab" * 32
    env = {
        **os.environ,
        "DUNNING_TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "DUNNING_TASK_QUEUE": queue,
        "DUNNING_DATABASE_URL": db.url,
        "DUNNING_DATA_DIR": str(tmp_path),
        "DUNNING_CODEC_KEYS": key,
        "DUNNING_SMS_BACKEND": "plivo",
        "PLIVO_AUTH_ID": plivo_server.auth_id,
        "PLIVO_AUTH_TOKEN": plivo_server.auth_token,
        "DUNNING_PLIVO_API_URL": plivo_server.url,
        "DUNNING_EMAIL_BACKEND": "smtp",
        "DUNNING_SMTP_HOST": "127.0.0.1",
        "DUNNING_SMTP_PORT": str(smtp_server.port),
    }
    settings = Settings(codec_keys=key, data_dir=tmp_path)
    client = await Client.connect(
        env["DUNNING_TEMPORAL_ADDRESS"], data_converter=converter_for(settings)
    )
    # Slow provider answers widen the window in which the kill lands inside a send.
    plivo_server.push(*[Scripted(delay=0.15) for _ in range(CASES * STEPS)])

    first = _worker(env)
    handles = [
        await client.start_workflow(
            "DunningWorkflow", case_input(account, f"inv-{cid}", cid),
            id=f"dunning-{account}-inv-{cid}", task_queue=queue,
        )
        for cid in phones
    ]
    dsts = {p.lstrip("+") for p in phones.values()}

    def sent_count() -> int:
        return sum(1 for r in plivo_server.requests if r.dst in dsts)

    # Kill once the first step is under way for some cases but not all.
    await wait_for(lambda: sent_count() >= CASES // 2, timeout=30, interval=0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = _worker(env)
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(h.result() for h in handles)), timeout=150
        )
        statuses = [await h.query("status") for h in handles]  # queries need a worker
    finally:
        plivo_server.script.clear()  # scripted answers left unused must not reach later tests
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(timeout=20)
        except subprocess.TimeoutExpired:
            second.kill()
    assert all(r["outcome"] == "exhausted" for r in results)

    # The provider's view, message by message: never two for one (case, step).
    by_dst: dict[str, int] = {}
    for r in plivo_server.requests:
        if r.dst in dsts:
            by_dst[r.dst] = by_dst.get(r.dst, 0) + 1
    assert all(n <= STEPS for n in by_dst.values()), by_dst
    with db.session() as s:
        rows = s.scalars(select(Message).where(Message.account_id == account)).all()
    keys = [(r.workflow_id, r.step, r.channel) for r in rows]
    assert len(keys) == len(set(keys))  # one record per (case, step, channel) at most
    # None lost: every reminder was sent, or the case says why not (e.g. overtaken by the next
    # step while no worker ran), and the database agrees with the case.
    recorded = {(r.workflow_id, r.step, r.channel): r.status for r in rows}
    for h, status in zip(handles, statuses, strict=True):
        assert len(status["reminders"]) == STEPS * 2
        for rem in status["reminders"]:
            assert rem["status"] in ("sent", "skipped", "failed"), rem
            db_status = recorded.get((h.id, rem["step"], rem["channel"]))
            if rem["status"] == "skipped":
                assert rem["reason"] and db_status is None
            elif rem["status"] == "sent":
                assert db_status == "sent"
            else:
                assert db_status == "unknown" and "outcome unknown" in rem["reason"]
    row_statuses = {r.status for r in rows}
    assert row_statuses <= {"sent", "unknown"}, row_statuses
    sms_sent = [r for r in rows if r.channel == "sms" and r.status == "sent"]
    # Every SMS recorded as sent reached the provider exactly once; 'unknown' ones at most once.
    assert sum(by_dst.values()) >= len(sms_sent)
    assert sum(by_dst.values()) <= CASES * STEPS
    uuids = {r.provider_id for r in sms_sent}
    provider_uuids = {r.message_uuid for r in plivo_server.requests if r.dst in dsts}
    assert uuids <= provider_uuids
    # Emails: each reminder at most once at the SMTP server.
    ids = [m["Message-ID"] for m in smtp_server.messages if uid in m["To"]]
    assert len(ids) == len(set(ids))
    assert len(ids) >= sum(1 for r in rows if r.channel == "email" and r.status == "sent")
    sum_results = sum(r["sms_sent"] for r in results)
    assert sum_results == len(sms_sent)
