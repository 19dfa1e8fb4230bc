"""The provider rate limit across workers: two real worker processes (`python worker.py`) on the
same task queues, a local dev server, and the loopback Plivo server recording when each SMS
arrives. Every case sends one SMS at once, so without a limit they would arrive in a burst; the
SMS task queue's limit (DUNNING_SMS_RATE_LIMIT, enforced by the Temporal server for the whole
queue) must hold them to `--rate` per second in total, whichever worker sends.

    python -m bench.bench_ratelimit [--cases 60] [--rate 5] [--partitions 1]

Prints, for the moments the server handed out the sends (from the workflows' histories) and
the moments they reached the provider: sends per second, the most in any 1-second window, and
the mean rate; and how the sends split between the two workers (each worker's callback URL tells
its sends apart). The server's limiter is a token bucket that starts full, so right after an idle
spell up to twice the limit goes out in the first second; from then on the cap holds. The
limit is split across the task queue's partitions, each with a bucket of its own, so with the
server's default of 4 partitions the steady flow is lumpier (the mean still holds); a queue as
slow as the SMS queue needs only one (`--partitions`, dynamic config
`matching.numTaskqueueReadPartitions` / `...WritePartitions` for the `<queue>-sms` task queue).
Arrivals at the provider jitter around the dispatch times (each send's database work comes
first, and on SQLite every writer waits its turn). Plivo queues excess messages rather than
dropping them, and a 429 is retried with backoff.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from bench.common import ROOT, Stopwatch, table
from dunning import credits
from dunning.accounts import AccountOptions, create_account
from dunning.codec import converter_for
from dunning.db import Database
from dunning.db.models import Account, Customer
from dunning.domain import SEARCH_ATTRIBUTES
from dunning.settings import Settings
from dunning.temporal import temporal_binary
from tests.fakes.plivo import FakePlivo

WORKERS = ("a", "b")


class TimedPlivo(FakePlivo):
    """The loopback Plivo server, also noting when each message request arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[tuple[float, str]] = []  # (monotonic time, callback URL)

    def _handle(self, h: Any, body: bytes) -> None:
        arrived = time.monotonic()
        super()._handle(h, body)
        with self.lock:
            last = self.requests[-1] if self.requests else None
            if last is not None and last.accepted:
                self.arrivals.append((arrived, last.url or ""))


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most events in any half-open interval [t, t + window)."""
    ordered = sorted(times)
    return max(
        (bisect.bisect_left(ordered, t + window) - i for i, t in enumerate(ordered)), default=0
    )


def per_second(times: list[float]) -> list[int]:
    """Events in each whole second after the first one."""
    if not times:
        return []
    counts = [0] * (int(max(times) - min(times)) + 1)
    for t in times:
        counts[int(t - min(times))] += 1
    return counts


async def sms_dispatch_times(handle: Any) -> list[float]:
    """When the server started each `send_sms` attempt of a case (epoch seconds)."""
    history = await handle.fetch_history()
    scheduled: dict[int, str] = {}
    out: list[float] = []
    for event in history.events:
        if event.HasField("activity_task_scheduled_event_attributes"):
            attrs = event.activity_task_scheduled_event_attributes
            scheduled[event.event_id] = attrs.activity_type.name
        elif event.HasField("activity_task_started_event_attributes"):
            started = event.activity_task_started_event_attributes
            if scheduled.get(started.scheduled_event_id) == "send_sms":
                out.append(event.event_time.ToDatetime().timestamp())
    return out


def prepare(db: Database, cases: int) -> None:
    with db.session() as s:
        create_account(s, "rl", AccountOptions(
            company_name="Rate Co", sms_sender="+14155550100", schedule="0s", grace="0s",
            quiet_hours="off", email_from="billing@rate.test",
        ))
        acct = s.get(Account, "rl")
        assert acct is not None
        acct.sms_enabled = True
        credits.top_up(s, "rl", cases * 10)
        s.add_all(
            Customer(account_id="rl", customer_id=f"c{i}", name="Pat Doe",
                     email=f"c{i}@rate.test", phone_e164=f"+1415{3000000 + i:07d}",
                     phone_region="US", phone_type="FIXED_LINE_OR_MOBILE", source="bench")
            for i in range(cases)
        )


async def run(cases: int, rate: float, partitions: int = 1) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="dunning-ratelimit-"))
    db = Database(f"sqlite:///{tmp / 'bench.db'}")
    db.upgrade()
    prepare(db, cases)
    plivo = TimedPlivo()
    plivo.start()
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(), search_attributes=list(SEARCH_ATTRIBUTES),
        dev_server_log_level="error",
        dev_server_extra_args=[
            "--dynamic-config-value", f"matching.numTaskqueueReadPartitions={partitions}",
            "--dynamic-config-value", f"matching.numTaskqueueWritePartitions={partitions}",
        ],
    )
    address = env.client.service_client.config.target_host
    key = "rl:" + "6b" * 32
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name in WORKERS:
            log = (tmp / f"worker-{name}.log").open("wb")
            procs.append(subprocess.Popen(
                [sys.executable, "worker.py"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
                env={
                    **os.environ, "DUNNING_TEMPORAL_ADDRESS": address,
                    "DUNNING_DATABASE_URL": db.url, "DUNNING_DATA_DIR": str(tmp),
                    "DUNNING_TASK_QUEUE": "rl", "DUNNING_SMS_RATE_LIMIT": str(rate),
                    "DUNNING_CODEC_KEYS": key, "DUNNING_SMS_BACKEND": "plivo",
                    "PLIVO_AUTH_ID": plivo.auth_id, "PLIVO_AUTH_TOKEN": plivo.auth_token,
                    "DUNNING_PLIVO_API_URL": plivo.url, "DUNNING_EMAIL_BACKEND": "console",
                    "DUNNING_PUBLIC_URL": f"http://worker-{name}.invalid",
                },
            ))
        client = await Client.connect(address, data_converter=converter_for(
            Settings(codec_keys=key, data_dir=tmp)))
        await asyncio.sleep(2)  # both workers polling before the burst
        with Stopwatch() as took:
            handles = [
                await client.start_workflow(
                    "DunningWorkflow",
                    {"account_id": "rl", "customer_id": f"c{i}", "invoice_id": f"i{i}",
                     "amount_due": 4900, "currency": "USD",
                     "billing_link": f"https://pay.rate.test/{i}"},
                    id=f"rl-{i}", task_queue="rl",
                )
                for i in range(cases)
            ]
            results = await asyncio.gather(*(h.result() for h in handles))
        dispatched = sorted([t for h in handles for t in await sms_dispatch_times(h)])
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        await env.shutdown()
        plivo.stop()
        db.dispose()
    arrived = sorted(t for t, _ in plivo.arrivals)
    sent = sum(r["sms_sent"] for r in results)
    figures: dict[str, float] = {"cases": cases, "rate": rate, "sent": sent}
    rows = [("SMS sent", f"{sent} (the provider saw {len(arrived)})")]
    for label, times in (("dispatched", dispatched), ("at provider", arrived)):
        # Steady state: from the end of the first 2 seconds (the full bucket's burst) on.
        later = [t for t in times if times and t >= times[0] + 2.0]
        span = later[-1] - later[0] if len(later) > 1 else 0.0
        mean = (len(later) - 1) / span if span else float("nan")
        peak, steady = max_in_window(times), max_in_window(later)
        key = label.replace(" ", "_")
        figures |= {f"{key}_max_1s": peak, f"{key}_max_1s_steady": steady,
                    f"{key}_mean_rate_steady": mean}
        rows += [
            (f"{label}: per second", " ".join(str(c) for c in per_second(times))),
            (f"{label}: max in any 1 s", f"{peak} (from the 3rd second on: {steady})"),
            (f"{label}: mean rate", f"{mean:.2f}/s from the 3rd second on"),
        ]
    by_worker = {n: sum(1 for _, url in plivo.arrivals if f"worker-{n}." in url)
                 for n in WORKERS}
    held = (figures["dispatched_max_1s_steady"] <= math.ceil(rate) + 1
            and figures["dispatched_mean_rate_steady"] <= rate * 1.1
            and figures["at_provider_mean_rate_steady"] <= rate * 1.1)
    rows += [
        ("by worker", ", ".join(f"{n}: {c}" for n, c in by_worker.items())),
        ("cap", f"{'held' if held else 'EXCEEDED'} (limit {rate:g}/s; all cases done in "
                f"{took.seconds:.1f} s)"),
    ]
    table(f"SMS rate limit: {cases} cases, 2 worker processes, limit {rate:g}/s, "
          f"{partitions} task queue partition{'s' if partitions != 1 else ''}", rows)
    return figures | {f"worker_{n}": c for n, c in by_worker.items()}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=60)
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--partitions", type=int, default=1,
                        help="task queue partitions on the dev server (the server's default: 4)")
    args = parser.parse_args(argv)
    return asyncio.run(run(args.cases, args.rate, args.partitions))


if __name__ == "__main__":
    main()
