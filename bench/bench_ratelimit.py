"""The provider rate limit across workers: two real worker processes (`python worker.py`) on the
same task queues, a local dev server, and the loopback Plivo server recording when each SMS
arrives. Every case sends one SMS at once, so without a limit they would arrive in a burst; the
limit (DUNNING_SMS_RATE_LIMIT) must hold them to `--rate` per second in total, whichever worker
sends, in every second: the provider's limit is a cap, not a mean.

    python -m bench.bench_ratelimit [--cases 60] [--rate 5] [--partitions 1]

Two layers enforce it. The SMS task queue's limit (enforced by the Temporal server for the whole
queue) is a token bucket that starts full, so right after an idle spell up to twice the limit is
handed out in the first second; the limit is also split across the queue's partitions, each
with a bucket of its own (the server's default is 4; a queue as slow as the SMS queue needs only
one: `--partitions`, dynamic config `matching.numTaskqueueReadPartitions` / `...WritePartitions`
for the `<queue>-sms` task queue). So each send also takes a slot from the database's send pacer
(dunning.messages.pacing) right before the provider call: slots at least (1 + margin) / rate apart
across
all workers, whatever the server hands out.

Prints, for the moments the server handed out the sends (from the workflows' histories) and the
moments they reached the provider: sends in each calendar second, the most in any sliding
1-second window, and the mean rate; the closest two arrivals at the provider; and how the sends
split between the two workers (each worker's callback URL tells its sends apart). The verdict is
taken at the provider: `held` only when no 1-second window there holds more than the limit
(rounded up for a fractional limit) and the mean stays within it. Arrivals at the provider
jitter around the slots by the HTTP round trip; the pacer's margin absorbs that.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
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
from dunning.accounts.accounts import AccountOptions, create_account
from dunning.credits import ledger
from dunning.domain.contract import SEARCH_ATTRIBUTES
from dunning.messages.pacing import PACING_MARGIN
from dunning.platform.codec import converter_for
from dunning.platform.db import Database
from dunning.platform.db.models import Account, Customer
from dunning.platform.settings import Settings
from dunning.platform.temporal import temporal_binary
from tests.fakes.plivo import FakePlivo

WORKERS = ("a", "b")


class TimedPlivo(FakePlivo):
    """The loopback Plivo server, also noting when each message request arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[tuple[float, str]] = []  # (epoch seconds, callback URL)

    def _handle(self, h: Any, body: bytes) -> None:
        arrived = time.time()
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
    """Events in each calendar second (epoch times), from the first event's to the last's."""
    if not times:
        return []
    first = math.floor(min(times))
    counts = [0] * (math.floor(max(times)) - first + 1)
    for t in times:
        counts[math.floor(t) - first] += 1
    return counts


def min_gap(times: list[float]) -> float:
    """The shortest time between two consecutive events."""
    ordered = sorted(times)
    return min((b - a for a, b in itertools.pairwise(ordered)), default=float("nan"))


def mean_rate(times: list[float]) -> float:
    """Events per second from the first to the last (intervals over the span)."""
    span = max(times) - min(times) if len(times) > 1 else 0.0
    return (len(times) - 1) / span if span else float("nan")


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
        ledger.top_up(s, "rl", cases * 10)
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
        peak = max_in_window(times)
        seconds = per_second(times)
        mean = mean_rate(times)
        key = label.replace(" ", "_")
        figures |= {f"{key}_max_1s": peak, f"{key}_max_calendar_s": max(seconds, default=0),
                    f"{key}_mean_rate": mean}
        rows += [
            (f"{label}: per second", " ".join(str(c) for c in seconds)),
            (f"{label}: max in any 1 s", f"{peak} (sliding window; "
                                         f"max in a calendar second: {max(seconds, default=0)})"),
            (f"{label}: mean rate", f"{mean:.2f}/s"),
        ]
    gap = min_gap(arrived)
    figures["at_provider_min_gap"] = gap
    rows.append(("at provider: closest", f"{gap * 1000:.0f} ms apart (pacer interval "
                                         f"{(1 + PACING_MARGIN) / rate * 1000:.0f} ms)"))
    by_worker = {n: sum(1 for _, url in plivo.arrivals if f"worker-{n}." in url)
                 for n in WORKERS}
    # Any 1-second window may hold `rate` sends (a fractional limit rounded up), never more.
    allowed = math.ceil(rate)
    held = (figures["at_provider_max_1s"] <= allowed
            and not figures["at_provider_mean_rate"] > rate)
    figures["held"] = float(held)
    rows += [
        ("by worker", ", ".join(f"{n}: {c}" for n, c in by_worker.items())),
        ("cap", f"{'held' if held else 'EXCEEDED'} (at the provider: at most "
                f"{figures['at_provider_max_1s']:g} in any 1 s, limit {rate:g}/s; all cases "
                f"done in {took.seconds:.1f} s)"),
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
