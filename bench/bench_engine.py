"""Engine throughput: N dunning cases of a 3-step schedule with zero offsets, end to end on a
local dev server with the real worker process (SQLite by default, console providers), against the
floor: a bare workflow with the same timers and one no-op activity per message sent.

    python -m bench.bench_engine [--cases 1000] [--database-url URL]

    python -m bench.bench_engine --postgres   # on a throwaway PostgreSQL database

The worker runs with the production defaults: the workflow sandbox on, payloads encrypted
(DUNNING_WORKFLOW_SANDBOX=off in the environment measures it without the sandbox). The floor runs
in the SDK's default sandbox, without a codec. Target (issue 17): ours/floor >= 0.8.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from bench.common import (
    Stopwatch,
    cpu_seconds,
    listening_pid,
    peak_rss_mb,
    spawn,
    stop,
    table,
    throwaway_postgres,
)
from dunning.accounts.accounts import AccountOptions, create_account
from dunning.credits import ledger
from dunning.domain.contract import SEARCH_ATTRIBUTES
from dunning.platform.codec import converter_for
from dunning.platform.db import Database
from dunning.platform.db.models import Account, Customer
from dunning.platform.settings import Settings
from dunning.platform.temporal import temporal_binary

SCHEDULE = [0, 0, 0]


def prepare(db: Database, cases: int) -> None:
    with db.session() as s:
        create_account(s, "bench", AccountOptions(
            company_name="Bench Co", sms_sender="+14155550100", schedule="0s,0s,0s",
            grace="0s", quiet_hours="off", email_from="billing@bench.test",
        ))
        acct = s.get(Account, "bench")
        assert acct is not None
        acct.sms_enabled = True
        ledger.top_up(s, "bench", cases * 10)
        s.add_all(
            Customer(account_id="bench", customer_id=f"c{i}", name="Pat Doe",
                     email=f"c{i}@bench.test", phone_e164=f"+1415{2000000 + i:07d}",
                     phone_region="US", phone_type="FIXED_LINE_OR_MOBILE",
                     phone_time_zones="America/Los_Angeles", source="bench")
            for i in range(cases + 1)
        )


async def drive(
    n: int, start: Callable[[int], Awaitable[Any]], concurrency: int = 200
) -> list[Any]:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Any:
        async with sem:
            handle = await start(i)
        return await handle.result()

    return await asyncio.gather(*(one(i) for i in range(n)))


async def run(cases: int, database_url: str | None) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="dunning-bench-"))
    url = database_url or f"sqlite:///{tmp / 'bench.db'}"
    db = Database(url)
    db.upgrade()
    prepare(db, cases)
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(), search_attributes=list(SEARCH_ATTRIBUTES),
        dev_server_log_level="error",
    )
    address = env.client.service_client.config.target_host
    server = listening_pid(int(address.rsplit(":", 1)[1]))
    key = "bench:" + "5a" * 32
    settings = Settings(codec_keys=key, data_dir=tmp)
    client = await Client.connect(address, data_converter=converter_for(settings))

    def server_cpu() -> float:  # the dev server's CPU seconds (0 if it was not found)
        return cpu_seconds(server) if server else 0.0
    try:
        # --- ours: the real worker process -------------------------------------------------
        worker = spawn(["worker.py"], {
            "DUNNING_TEMPORAL_ADDRESS": address, "DUNNING_DATABASE_URL": url,
            "DUNNING_TASK_QUEUE": "bench", "DUNNING_SMS_RATE_LIMIT": "0",
            "DUNNING_CODEC_KEYS": key, "DUNNING_DATA_DIR": str(tmp),
            "DUNNING_SMS_BACKEND": "console", "DUNNING_EMAIL_BACKEND": "console",
        })

        def case(i: int, prefix: str = "run") -> dict[str, Any]:
            return {"account_id": "bench", "customer_id": f"c{i}", "invoice_id": f"{prefix}-{i}",
                    "amount_due": 4900, "currency": "USD",
                    "billing_link": f"https://pay.bench.test/{i}"}

        async def start_ours(i: int) -> Any:
            return await client.start_workflow("DunningWorkflow", case(i), id=f"bench-{i}",
                                               task_queue="bench")

        warm = await client.start_workflow("DunningWorkflow", case(cases, "warm"),
                                           id="bench-warm", task_queue="bench")
        await warm.result()
        cpu0, server0 = cpu_seconds(worker.pid), server_cpu()
        with Stopwatch() as ours_time:
            results = await drive(cases, start_ours)
        ours_cpu, ours_server_cpu = cpu_seconds(worker.pid) - cpu0, server_cpu() - server0
        messages = sum(r["emails_sent"] + r["sms_sent"] for r in results)
        ours_rss = peak_rss_mb(worker.pid)
        stop(worker)
        per_lane = max(1, messages // (2 * cases))

        # --- floor: same timers, one no-op activity per message sent -----------------------
        floor = spawn(["-m", "bench.floor_worker"],
                      {"TEMPORAL_ADDRESS": address, "TASK_QUEUE": "floor"})

        async def start_floor(i: int) -> Any:
            return await env.client.start_workflow(
                "FloorWorkflow", args=[SCHEDULE, 2, per_lane], id=f"floor-{i}",
                task_queue="floor",
            )

        await (await env.client.start_workflow("FloorWorkflow", args=[SCHEDULE, 2, per_lane],
                                               id="floor-warm", task_queue="floor")).result()
        cpu0, server0 = cpu_seconds(floor.pid), server_cpu()
        with Stopwatch() as floor_time:
            floor_results = await drive(cases, start_floor)
        floor_cpu, floor_server_cpu = cpu_seconds(floor.pid) - cpu0, server_cpu() - server0
        floor_rss = peak_rss_mb(floor.pid)
        stop(floor)
    finally:
        await env.shutdown()
        db.dispose()
    floor_messages = sum(floor_results)
    figures = {
        "cases": cases,
        "ours_cases_per_s": cases / ours_time.seconds,
        "ours_messages_per_s": messages / ours_time.seconds,
        "floor_cases_per_s": cases / floor_time.seconds,
        "floor_messages_per_s": floor_messages / floor_time.seconds,
        "ratio": floor_time.seconds / ours_time.seconds,
        "worker_peak_rss_mb": ours_rss,
        "floor_worker_peak_rss_mb": floor_rss,
        "messages": messages,
        "worker_cpu_ms_per_case": ours_cpu / cases * 1000,
        "floor_worker_cpu_ms_per_case": floor_cpu / cases * 1000,
        "server_cpu_ms_per_case": ours_server_cpu / cases * 1000,
        "floor_server_cpu_ms_per_case": floor_server_cpu / cases * 1000,
    }
    backend = "PostgreSQL" if database_url else "SQLite"
    sandbox = Settings().workflow_sandbox  # the worker reads the same environment
    table(f"engine: {cases} cases, schedule 0s,0s,0s ({backend}, workflow sandbox "
          f"{'on' if sandbox else 'off'})", [
        ("ours", f"{figures['ours_cases_per_s']:.1f} cases/s, "
                 f"{figures['ours_messages_per_s']:.1f} messages/s ({messages} messages)"),
        ("floor", f"{figures['floor_cases_per_s']:.1f} cases/s, "
                  f"{figures['floor_messages_per_s']:.1f} messages/s"),
        ("ours/floor", f"{figures['ratio']:.2f} (target >= 0.8: "
                       f"{'met' if figures['ratio'] >= 0.8 else 'NOT met'})"),
        ("worker peak RSS", f"{ours_rss:.0f} MB (floor worker {floor_rss:.0f} MB)"),
        ("worker CPU", f"{ours_cpu:.1f} s, {figures['worker_cpu_ms_per_case']:.1f} ms per case "
                       f"(floor worker {floor_cpu:.1f} s, "
                       f"{figures['floor_worker_cpu_ms_per_case']:.1f} ms per case)"),
        ("dev server CPU", (f"{figures['server_cpu_ms_per_case']:.1f} ms per case (floor "
                            f"{figures['floor_server_cpu_ms_per_case']:.1f} ms per case)")
                           if server else "not found"),
    ])
    return figures


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--postgres", action="store_true",
                        help="on a throwaway PostgreSQL database (DUNNING_BENCH_POSTGRES_URL)")
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args(argv)
    if args.postgres:
        with throwaway_postgres("dunning_bench_engine") as url:
            return asyncio.run(run(args.cases, url))
    return asyncio.run(run(args.cases, args.database_url))


if __name__ == "__main__":
    main()
