"""The Temporal server SIGKILLed while sends are in flight, then restarted on its database file.

A dev server of this test's own (`temporal server start-dev --db-filename ...` on free ports), a
real worker process, the loopback Plivo and SMTP sink, both slowed so sends are under way. The
kill is aimed: the SMTP sink kills the server from inside an SMTP transaction (the email taken,
its "250" not yet given), so at that moment at least one activity is inside a provider call and
cannot report its completion. The server stays down a few seconds, comes back on the same port
and file, and every case runs to its end.

Counted at the providers: every reminder reached its provider exactly once per (case, step,
channel) (an email at most once more under the same Message-ID), every reminder reported `sent`
in the status query and the messages table, the ledger equals the balance. On SQLite and on
PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from dunning.platform.db import Database
from dunning.platform.db.models import Message
from tests.db.test_credits import assert_ledger_exact
from tests.e2e.processes import (
    DevServer,
    client_for,
    env_at,
    result_across_restarts,
    start_worker,
    stop_worker,
)
from tests.fakes.plivo import FakePlivo, Scripted
from tests.fakes.smtp import SmtpSink
from tests.helpers import add_customer, case_input, make_account, wait_for

CASES = 10
STEPS = 2
BALANCE = 1000
DOWN = 4.0  # seconds the server stays dead


@pytest.mark.slow
async def test_temporal_server_killed_mid_send_and_restarted_loses_and_repeats_nothing(
    db: Database, plivo_server: FakePlivo, smtp_server: SmtpSink, uid: str, tmp_path: Path,
) -> None:
    account, queue = f"trs-{uid}", f"trs-q-{uid}"
    make_account(db, account, schedule="0s,6s", grace="1s", balance=BALANCE)
    base = int(uid[:4], 16) % 100
    phones = {f"c{i}": f"+1415553{base:02d}{i:02d}" for i in range(CASES)}
    for cid, phone in phones.items():
        add_customer(db, account, cid, phone=phone, email=f"{cid}.{uid}@example.com")
    dsts = {p.lstrip("+") for p in phones.values()}
    mine = {f"{cid}.{uid}@example.com" for cid in phones}
    server = DevServer(tmp_path, tmp_path / "temporal.log")
    server.start()
    env = env_at(server.address, db.url, queue, plivo_server, smtp_server, tmp_path,
                 DUNNING_SMS_RATE_LIMIT="0")
    plivo_server.reset()
    smtp_server.reset()
    plivo_server.push(*[Scripted(delay=0.8) for _ in range(CASES * STEPS)])
    at_kill: dict[str, int] = {}

    def on_email(msg: Any) -> None:
        time.sleep(0.1)  # a slow SMTP server: several emails queue up behind this one
        if msg["To"] in mine and not at_kill and server.kill():
            # Killed inside this SMTP transaction: the worker sending it has not heard "250".
            at_kill["emails"] = sum(1 for m in smtp_server.messages if m["To"] in mine)
            at_kill["sms_at_plivo"] = sum(1 for d in plivo_server.arrived_to if d in dsts)
            at_kill["sms_answered"] = len([r for r in plivo_server.accepted() if r.dst in dsts])

    worker = start_worker(env, tmp_path / "worker.log")
    try:
        client = await client_for(env, tmp_path)
        handles = [
            await client.start_workflow(
                "DunningWorkflow", case_input(account, f"inv-{cid}", cid),
                id=f"dunning-{account}-inv-{cid}", task_queue=queue,
            )
            for cid in phones
        ]
        smtp_server.on_data = on_email
        await wait_for(lambda: at_kill, timeout=30, interval=0.02)
        await asyncio.to_thread(server.proc.wait, 10)  # type: ignore[union-attr]
        await asyncio.sleep(DOWN)
        assert worker.poll() is None  # the worker rides out the outage
        await asyncio.to_thread(server.start)  # same port, same database file
        results = await asyncio.wait_for(
            asyncio.gather(*(result_across_restarts(h, 90) for h in handles)), timeout=100)
        statuses = [await h.query("status") for h in handles]
    finally:
        smtp_server.on_data = None
        plivo_server.script.clear()
        stop_worker(worker)
        server.stop()
    assert server.kills == 1
    # The kill met sends under way: the email that triggered it had not been answered, and SMS
    # had reached Plivo without their answer yet (the worker was inside those calls).
    assert at_kill["emails"] < CASES * STEPS, at_kill
    assert at_kill["sms_at_plivo"] > at_kill["sms_answered"], at_kill
    assert all(r["outcome"] == "exhausted" for r in results), results

    # At the providers: every reminder once per (case, step, channel).
    sms = [r for r in plivo_server.accepted() if r.dst in dsts]
    by_dst: dict[str, int] = {}
    for r in sms:
        by_dst[r.dst] = by_dst.get(r.dst, 0) + 1
    assert by_dst == dict.fromkeys(dsts, STEPS), by_dst  # no SMS lost, none twice
    ids = [str(m["Message-ID"]) for m in smtp_server.messages if m["To"] in mine]
    assert len(set(ids)) == CASES * STEPS  # no email lost
    repeats = {i: ids.count(i) for i in set(ids) if ids.count(i) > 1}
    assert all(n == 2 for n in repeats.values()), repeats  # at most once more, same id

    # In the messages table, the status query and the ledger.
    with db.session() as s:
        rows = s.scalars(select(Message).where(Message.account_id == account)).all()
    assert len(rows) == CASES * STEPS * 2
    assert {r.status for r in rows} == {"sent"}, {
        (r.workflow_id, r.step, r.channel, r.status, r.reason) for r in rows
        if r.status != "sent"}
    assert {r.provider_id for r in rows if r.channel == "sms"} == {r.message_uuid for r in sms}
    for status in statuses:
        reminders = status["reminders"]
        assert len(reminders) == STEPS * 2
        assert {rem["status"] for rem in reminders} == {"sent"}, reminders
    assert sum(r["sms_sent"] for r in results) == CASES * STEPS
    assert sum(r["emails_sent"] for r in results) == CASES * STEPS
    balance = assert_ledger_exact(db, account)
    assert balance == BALANCE - sum(r.credits for r in rows if r.channel == "sms")
