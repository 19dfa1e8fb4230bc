"""Providers down for a while, with a real worker process: Plivo answers 503 and SMTP 451 for a
window, and the first email after it is dropped mid-DATA (taken, no "250"). Every reminder
reaches its provider once when they return (the dropped email at most once more, under the
same Message-ID), every row is `sent`, the ledger equals the balance. (A window longer than the
24 h give-up runs under time skipping: tests/workflow/test_long_outage.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import select
from temporalio.testing import WorkflowEnvironment

from dunning.credits import ledger
from dunning.platform.db import Database
from dunning.platform.db.models import Message
from tests.e2e.processes import client_for, start_worker, stop_worker, worker_env
from tests.fakes.plivo import FakePlivo
from tests.fakes.smtp import SmtpSink
from tests.helpers import add_customer, case_input, make_account, wait_for

CASES = 4
WINDOW = 8.0


@pytest.mark.slow
async def test_provider_outage_window_then_everything_once(
    temporal_env: WorkflowEnvironment, sqlite_db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str, tmp_path: Path,
) -> None:
    db = sqlite_db
    account, queue = f"pout-{uid}", f"pout-q-{uid}"
    make_account(db, account, schedule="0s", grace="1s", balance=50)
    base = int(uid[:4], 16) % 100
    phones = {f"c{i}": f"+1415554{base:02d}{i:02d}" for i in range(CASES)}
    for cid, phone in phones.items():
        add_customer(db, account, cid, phone=phone, email=f"{cid}.{uid}@example.com")
    env = worker_env(temporal_env, db.url, queue, plivo_server, smtp_server, tmp_path,
                     DUNNING_SMS_RATE_LIMIT="0")
    client = await client_for(env, tmp_path)
    plivo_server.reset()
    smtp_server.reset()
    plivo_server.down = smtp_server.down = True
    worker = start_worker(env)
    try:
        handles = [
            await client.start_workflow(
                "DunningWorkflow", case_input(account, f"inv-{cid}", cid),
                id=f"dunning-{account}-inv-{cid}", task_queue=queue,
            )
            for cid in phones
        ]
        dsts = sorted(p.lstrip("+") for p in phones.values())
        await wait_for(lambda: set(dsts) <= set(plivo_server.arrived_to), timeout=30)
        await asyncio.sleep(WINDOW)
        with db.session() as s:  # during the outage: waiting to retry, credits reserved
            rows = s.scalars(select(Message).where(Message.account_id == account)).all()
            assert {r.status for r in rows} <= {"retry", "claimed"}
            assert ledger.balance_of(s, account) == 50 - CASES
        smtp_server.drop_after_data = 1
        plivo_server.down = smtp_server.down = False
        results = await asyncio.wait_for(
            asyncio.gather(*(h.result() for h in handles)), timeout=120)
    finally:
        stop_worker(worker)
        plivo_server.down = smtp_server.down = False
    assert all(r["sms_sent"] == 1 and r["emails_sent"] == 1 for r in results), results
    assert sorted(r.dst for r in plivo_server.accepted() if r.dst in dsts) == dsts
    mine = {f"{cid}.{uid}@example.com" for cid in phones}
    ids = [m["Message-ID"] for m in smtp_server.messages if m["To"] in mine]
    assert len(set(ids)) == CASES and len(ids) <= CASES + 1  # the dropped one, same id
    with db.session() as s:
        rows = s.scalars(select(Message).where(Message.account_id == account)).all()
        assert ledger.balance_of(s, account) == ledger.ledger_sum(s, account) == 50 - CASES
    assert {r.status for r in rows} == {"sent"} and len(rows) == 2 * CASES
    # the outage was really met and retried through
    assert sum(plivo_server.arrived_to.count(d) for d in dsts) > CASES
