"""Waking paused cases: N cases of one account pause for credits (balance 0, SMS on, schedule
0s, grace 2h), then one top-up covers them all. Measures how long until every case is served
(its credits granted in the ledger: the waiters' queue is empty), until every case has been
signalled (`credits_added`), until every case has taken the signal in (SmsPaused false
everywhere, per visibility), until every case's send has used its grant, and until every SMS
is out (no provider rate limit here: the engine's own pace).

A local dev server, the real worker process (console providers, no SMS rate limit), SQLite by
default.

    python -m bench.bench_wake [--cases 10000] [--concurrency 200] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from temporalio import workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from bench.common import ROOT, peak_rss_mb, stop, table
from dunning.accounts.accounts import AccountOptions, create_account
from dunning.credits import ledger, wake
from dunning.domain.contract import SEARCH_ATTRIBUTES, SIGNAL_CREDITS_ADDED
from dunning.platform.codec import converter_for
from dunning.platform.db import Database
from dunning.platform.db.models import Account, Customer, Message
from dunning.platform.settings import Settings
from dunning.platform.temporal import temporal_binary

ACCOUNT = "wake"
QUEUE = "bench-wake"


def prepare(db: Database, cases: int) -> None:
    with db.session() as s:
        create_account(s, ACCOUNT, AccountOptions(
            company_name="Wake Co", sms_sender="+14155550100", schedule="0s", grace="2h",
            quiet_hours="off",
        ))
        acct = s.get(Account, ACCOUNT)
        assert acct is not None
        acct.sms_enabled = True
        s.add_all(
            Customer(account_id=ACCOUNT, customer_id=f"c{i}", name="Pat Doe", email=None,
                     phone_e164=f"+1415{2000000 + i:07d}", phone_region="US",
                     phone_type="FIXED_LINE_OR_MOBILE", phone_time_zones="America/Los_Angeles",
                     source="bench")
            for i in range(cases)
        )


def counts(db: Database) -> tuple[int, int, int]:
    """(cases queued for credits, cases granted whose send has not used it yet, SMS sent)."""
    with db.session() as s:
        waiting = ledger.waiting_count(s, ACCOUNT)
        granted = ledger.granted_count(s, ACCOUNT)
        sent = s.scalar(select(func.count()).select_from(Message).where(
            Message.account_id == ACCOUNT, Message.channel == "sms", Message.status == "sent"))
    return waiting, granted, int(sent or 0)


async def poll(label: str, done: Any, timeout: float, every: float = 0.25) -> float:
    """Wait until done() is true; returns the time it took. Prints progress now and then."""
    t0 = time.perf_counter()
    last = 0.0
    while True:
        value = await done() if asyncio.iscoroutinefunction(done) else done()
        if value is True:
            return time.perf_counter() - t0
        now = time.perf_counter()
        if now - last > 5:
            print(f"  ... {label}: {value}", flush=True)
            last = now
        if now - t0 > timeout:
            raise TimeoutError(f"{label}: not done after {timeout:.0f} s ({value})")
        await asyncio.sleep(every)


@workflow.defn(name="WakeFloor", sandboxed=False)
class WakeFloor:
    """The least a woken case can be: a workflow that waits for `credits_added` and ends."""

    def __init__(self) -> None:
        self.woken = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self.woken)

    @workflow.signal(name=SIGNAL_CREDITS_ADDED)
    def credits_added(self, payload: dict[str, Any] | None = None) -> None:
        self.woken = True


async def signal_floor(client: Client, cases: int, concurrency: int) -> tuple[float, float]:
    """Signalling N waiting bare workflows (same server, same client, same concurrency): seconds
    until every signal was accepted, and until the last workflow took it and ended. What
    Temporal alone costs."""
    queue = f"{QUEUE}-floor"
    async with Worker(client, task_queue=queue, workflows=[WakeFloor],
                      max_cached_workflows=max(1000, cases)):
        sem = asyncio.Semaphore(200)
        handles = []

        async def start(i: int) -> None:
            async with sem:
                handles.append(await client.start_workflow(
                    WakeFloor.run, id=f"floor-{i}", task_queue=queue))

        await asyncio.gather(*(start(i) for i in range(cases)))
        await asyncio.sleep(2)  # let the starts settle: every workflow is waiting
        t0 = time.perf_counter()
        outcome = await wake._signal_all(client, ACCOUNT, [f"floor-{i}" for i in range(cases)],
                                         concurrency)
        assert all(o == "ok" for o in outcome.values())
        signalled = time.perf_counter() - t0
        running = "WorkflowType = 'WakeFloor' AND ExecutionStatus = 'Running'"

        async def all_ended() -> Any:  # every one took its signal in (and so ended)
            n = (await client.count_workflows(running)).count
            return True if n == 0 else f"{n}/{cases} still waiting"

        ended = await poll("floor", all_ended, 1800, every=0.25) + signalled
        for h in handles[:10]:  # they did end, and cleanly
            await h.result()
        return signalled, ended


async def run(cases: int, concurrency: int, database_url: str | None,
              timeout: float, floor: bool = True) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="dunning-bench-wake-"))
    url = database_url or f"sqlite:///{tmp / 'bench.db'}"
    db = Database(url, pool_size=8)
    db.upgrade()
    prepare(db, cases)
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(), search_attributes=list(SEARCH_ATTRIBUTES),
        dev_server_log_level="error",
    )
    address = env.client.service_client.config.target_host
    key = "bench:" + "5b" * 32
    client = await Client.connect(
        address, data_converter=converter_for(Settings(codec_keys=key, data_dir=tmp)))
    worker_log = tmp / "worker.log"
    with worker_log.open("wb") as log_file:  # a file, not a pipe nobody reads (it fills up)
        worker = subprocess.Popen(
            [sys.executable, "worker.py"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log_file,
            env={**os.environ, "DUNNING_TEMPORAL_ADDRESS": address, "DUNNING_DATABASE_URL": url,
                 "DUNNING_TASK_QUEUE": QUEUE, "DUNNING_SMS_RATE_LIMIT": "0",
                 "DUNNING_CODEC_KEYS": key, "DUNNING_DATA_DIR": str(tmp),
                 "DUNNING_SMS_BACKEND": "console", "DUNNING_EMAIL_BACKEND": "console"},
        )
    print(f"worker log: {worker_log}", flush=True)
    try:
        sem = asyncio.Semaphore(200)

        async def start(i: int) -> None:
            async with sem:
                await client.start_workflow(
                    "DunningWorkflow",
                    {"account_id": ACCOUNT, "customer_id": f"c{i}", "invoice_id": f"i{i}",
                     "amount_due": 4900, "currency": "USD",
                     "billing_link": f"https://pay.bench.test/{i}"},
                    id=f"dunning-{ACCOUNT}-i{i}", task_queue=QUEUE,
                )

        t0 = time.perf_counter()
        await asyncio.gather(*(start(i) for i in range(cases)))
        started_in = time.perf_counter() - t0

        def all_queued() -> Any:
            waiting, _, _ = counts(db)
            return True if waiting == cases else f"{waiting}/{cases} queued"

        queued_in = await poll("pausing", all_queued, timeout) + started_in
        paused_query = f"DunningAccountId = '{ACCOUNT}' AND SmsPaused = true"

        async def all_paused() -> Any:  # every workflow has taken in its no_credits answer
            n = (await client.count_workflows(paused_query)).count
            return True if n == cases else f"{n}/{cases} SmsPaused"

        await poll("SmsPaused visible", all_paused, timeout, every=1)

        # --- the measurement: one top-up covering every paused case ---------------------
        served_at: float | None = None
        watching = True

        def watch_queue() -> None:  # on a thread: when does the queue empty (all served)?
            nonlocal served_at
            while watching and served_at is None:
                if counts(db)[0] == 0:
                    served_at = time.perf_counter() - t1
                time.sleep(0.02)

        t1 = time.perf_counter()
        watcher = asyncio.get_running_loop().run_in_executor(None, watch_queue)
        outcome = await wake.top_up(client, db, ACCOUNT, cases, concurrency=concurrency)
        signalled_in = time.perf_counter() - t1
        watching = False
        await watcher
        used_at = sent_at = unpaused_at = None

        async def progress() -> Any:
            nonlocal used_at, sent_at, unpaused_at
            waiting, granted, sent = counts(db)
            now = time.perf_counter() - t1
            if waiting == 0 and granted == 0 and used_at is None:
                used_at = now
            if sent == cases and sent_at is None:
                sent_at = now
            # every case took its signal in: SmsPaused false
            if unpaused_at is None and (await client.count_workflows(paused_query)).count == 0:
                unpaused_at = time.perf_counter() - t1
            if used_at is not None and sent_at is not None and unpaused_at is not None:
                return True
            return f"{cases - granted}/{cases} grants used, {sent}/{cases} sent"

        await poll("sending", progress, timeout, every=0.1)
        assert used_at is not None and sent_at is not None and unpaused_at is not None
        served_in = served_at if served_at is not None else signalled_in
        with db.session() as s:
            balance = ledger.balance_of(s, ACCOUNT)
            exact = ledger.ledger_sum(s, ACCOUNT) == balance
        rss = peak_rss_mb(worker.pid)
        stop(worker)  # the floor runs on the same server, with nothing else on the machine
        floor_in = await signal_floor(client, cases, concurrency) if floor else None
    finally:
        stop(worker)
        await env.shutdown()
        db.dispose()
    assert outcome.woken == cases, f"woke {outcome.woken} of {cases}"
    assert balance == 0 and exact
    figures = {
        "cases": cases,
        "started_per_s": cases / started_in,
        "paused_in_s": queued_in,
        "signalled_in_s": signalled_in,
        "signals_per_s": outcome.woken / signalled_in,
        "all_served_in_s": served_in,
        "all_unpaused_in_s": unpaused_at,
        "all_grants_used_in_s": used_at,
        "floor_signalled_in_s": floor_in[0] if floor_in else 0.0,
        "floor_taken_in_s": floor_in[1] if floor_in else 0.0,
        "all_sent_in_s": sent_at,
        "sms_per_s": cases / sent_at,
    }
    db_name = "SQLite" if url.startswith("sqlite") else "PostgreSQL"
    table(f"wake: {cases} paused cases of one account, one top-up covering them ({db_name})", [
        ("setup", f"{cases} cases started in {started_in:.1f} s, all paused after "
                  f"{queued_in:.1f} s"),
        ("all served", f"{served_in:.2f} s after the top-up: {outcome.wake.granted} credits "
                       "granted first come first served, queue empty"),
        ("all resumed", f"{signalled_in:.2f} s after the top-up: {outcome.woken} cases "
                        f"signalled ({figures['signals_per_s']:.0f}/s, concurrency "
                        f"{concurrency})"),
        ("all unpaused", f"{unpaused_at:.2f} s after the top-up: every case took its signal "
                         "in (SmsPaused false everywhere, per visibility)"),
        *([("floor", f"{floor_in[0]:.2f} s to signal {cases} bare waiting workflows on the "
                     f"same server ({cases / floor_in[0]:.0f}/s): ours/floor "
                     f"{floor_in[0] / signalled_in:.2f}; all had taken it in (and ended) "
                     f"after {floor_in[1]:.2f} s: ours/floor {floor_in[1] / unpaused_at:.2f}")]
          if floor_in else []),
        ("all grants used", f"{used_at:.2f} s after the top-up (every case's send ran)"),
        ("all SMS sent", f"{sent_at:.2f} s after the top-up ({figures['sms_per_s']:.0f} SMS/s)"),
        ("ledger", f"balance {balance} == sum of ledger: {exact}"),
        ("worker peak RSS", f"{rss:.0f} MB"),
    ])
    return figures


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=wake.DEFAULT_CONCURRENCY,
                        help="signals in flight at once")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--timeout", type=float, default=1800, help="per phase, seconds")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip signalling bare waiting workflows for comparison")
    args = parser.parse_args(argv)
    return asyncio.run(run(args.cases, args.concurrency, args.database_url, args.timeout,
                           floor=not args.no_floor))


if __name__ == "__main__":
    main()
