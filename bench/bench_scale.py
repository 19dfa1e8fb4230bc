"""Scale: N concurrent dunning cases asleep on a local dev server with the real worker process.

    python -m bench.bench_scale [--cases 10000] [--concurrency 200] [--database-url URL]
    python -m bench.bench_scale --cases 100000 --postgres   # on a throwaway PostgreSQL database

The account's schedule is `0s,30d` with SMS off: each case sends its first email at once, then
sleeps for 30 days. With `--schedule 3d,7d,14d` (a first reminder after the card network's own
retries, as most dunning schedules have) each case registers and goes to sleep at once: that is
how `make bench` holds 100,000 sleeping cases without also sending 100,000 first emails.
`--no-cancel` skips the cancel phase (the dev server and its history go away with the temporary
directory).

The benchmark starts its own dev server (`temporal server start-dev`, headless, on a free port,
its SQLite file in /dev/shm when there is one) so that the server's RSS can be read, and the real
worker process (`python worker.py`). It reports:
- the start rate (workflow starts accepted per second, `--concurrency` in flight);
- the time from the first start until every case has sent step 1 (rows in `messages`), or with a
  schedule whose first step is later, until every case is registered and asleep (rows in `cases`);
- worker and server RSS once all cases sleep, and their peaks (VmHWM);
- the cancel rate: `cancel` signals accepted per second, and cases ended per second until every
  case is `canceled` in the database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from temporalio.client import Client

from bench.common import (
    ROOT,
    Stopwatch,
    cpu_seconds,
    peak_rss_mb,
    rss_mb,
    table,
    throwaway_postgres,
)
from dunning.accounts.accounts import AccountOptions, create_account
from dunning.domain.contract import parse_schedule
from dunning.platform.codec import converter_for
from dunning.platform.db import Database
from dunning.platform.settings import Settings
from dunning.platform.temporal import dev_server_command

ACCOUNT = f"scale{os.getpid()}"  # unique, so a shared --database-url can be reused
TASK_QUEUE = "scale"
KEY = "bench:" + "5a" * 32
POLL = 0.5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def case_input(i: int) -> dict[str, Any]:
    return {"account_id": ACCOUNT, "customer_id": f"c{i}", "invoice_id": f"inv-{i}",
            "amount_due": 4900, "currency": "USD", "billing_link": f"https://pay.scale.test/{i}",
            "customer_email": f"c{i}@scale.test", "customer_name": "Pat Doe"}


def workflow_id(i: int) -> str:
    return f"dunning-{ACCOUNT}-inv-{i}"


async def bounded(n: int, fn: Callable[[int], Awaitable[Any]], concurrency: int) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await fn(i)

    await asyncio.gather(*(one(i) for i in range(n)))


class Procs:
    """The dev server and worker processes, their logs, and checks that they are still up."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.running: list[tuple[str, subprocess.Popen[bytes], IO[bytes], Path]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> int:
        log_path = self.tmp / f"{name}.log"
        log = log_path.open("wb")
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})},
                                stdout=subprocess.DEVNULL, stderr=log)
        self.running.append((name, proc, log, log_path))
        return proc.pid

    def check(self) -> None:
        for name, proc, _, log_path in self.running:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def stop(self, name: str) -> None:
        for entry in list(self.running):
            if entry[0] == name:
                _, proc, log, _ = entry
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                log.close()
                self.running.remove(entry)

    def stop_all(self) -> None:
        for name, *_ in reversed(list(self.running)):
            self.stop(name)


class Rss:
    """RSS sampled in the background: the latest value and the highest seen, per process."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.top = dict.fromkeys(pids, 0.0)
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        for name, pid in self.pids.items():
            self.top[name] = max(self.top[name], rss_mb(pid))

    async def _loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(POLL)

    def __enter__(self) -> Rss:
        self._task = asyncio.get_running_loop().create_task(self._loop())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()


async def wait_count(
    engine: Engine, sql: str, target: int, procs: Procs, label: str, timeout: float,
) -> float:
    """Poll `sql` (a count) until it reaches `target`; seconds waited. Progress on stderr."""
    start = time.perf_counter()
    last_report = start
    while True:
        with engine.connect() as conn:
            count = int(conn.execute(text(sql), {"account": ACCOUNT}).scalar_one())
        now = time.perf_counter()
        if count >= target:
            return now - start
        procs.check()
        if now - start > timeout:
            raise TimeoutError(f"{label}: {count}/{target} after {timeout:.0f} s")
        if now - last_report >= 10:
            print(f"  ... {label}: {count}/{target}", file=sys.stderr, flush=True)
            last_report = now
        await asyncio.sleep(POLL)


SENT_STEP_1 = ("SELECT count(*) FROM messages WHERE account_id = :account AND step = 1 "
               "AND channel = 'email' AND status = 'sent'")
# both lanes done with step 1: the email sent and the SMS recorded as skipped (SMS is off)
SETTLED_STEP_1 = ("SELECT count(*) FROM messages WHERE account_id = :account AND step = 1 "
                  "AND status IN ('sent', 'skipped', 'failed')")
REGISTERED = "SELECT count(*) FROM cases WHERE account_id = :account"
CANCELED = "SELECT count(*) FROM cases WHERE account_id = :account AND state = 'canceled'"


async def connect(address: str, settings: Settings, procs: Procs) -> Client:
    deadline = time.monotonic() + 60
    while True:
        try:
            return await Client.connect(address, data_converter=converter_for(settings))
        except RuntimeError:
            procs.check()
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def run(cases: int, concurrency: int, database_url: str | None,
              keep: bool = False, server_db: str | None = None,
              sms_rate_limit: str = "0", schedule: str = "0s,30d",
              cancel: bool = True) -> dict[str, float]:
    sleep_first = parse_schedule(schedule)[0] > 0  # no send before the cases fall asleep
    tmp = Path(tempfile.mkdtemp(prefix="dunning-scale-"))
    # The dev server's SQLite file: in memory-backed storage when there is some (as the engine
    # and wake benches' dev server, which keeps its history in memory), so that the figures are
    # Temporal's and ours, not this machine's disk flushes (3x slower starts on its virtual
    # disk); outside the process, so that its RSS is still the server's own.
    shm = Path("/dev/shm")
    server_dir = Path(tempfile.mkdtemp(prefix="dunning-scale-", dir=shm)) if (
        server_db is None and shm.is_dir() and os.access(shm, os.W_OK)) else tmp
    server_db = server_db or str(server_dir / "temporal.db")
    url = database_url or f"sqlite:///{tmp / 'scale.db'}"
    db = Database(url)
    db.upgrade()
    with db.session() as s:
        create_account(s, ACCOUNT, AccountOptions(
            company_name="Scale Co", schedule=schedule, grace="0s", quiet_hours="off",
            email_from="billing@scale.test",
        ))  # SMS stays off (the default)
    db.dispose()
    reader = create_engine(url)  # plain reads: no BEGIN IMMEDIATE against the worker's writes
    settings = Settings(codec_keys=KEY, data_dir=tmp)
    port = free_port()
    address = f"127.0.0.1:{port}"
    procs = Procs(tmp)
    try:
        server_pid = procs.start("server", dev_server_command(
            settings, port=port, headless=True, db_file=server_db))
        client = await connect(address, settings, procs)
        worker_pid = procs.start("worker", [sys.executable, "worker.py"], {
            "DUNNING_TEMPORAL_ADDRESS": address, "DUNNING_DATABASE_URL": url,
            "DUNNING_TASK_QUEUE": TASK_QUEUE, "DUNNING_CODEC_KEYS": KEY,
            "DUNNING_DATA_DIR": str(tmp), "DUNNING_SMS_BACKEND": "console",
            "DUNNING_EMAIL_BACKEND": "console", "DUNNING_SMS_RATE_LIMIT": sms_rate_limit,
        })
        # warm-up: one case through step 1 (or registered, if it sleeps first) and canceled,
        # before anything is timed
        warm = await client.start_workflow("DunningWorkflow", case_input(cases), id="warm",
                                           task_queue=TASK_QUEUE)
        if sleep_first:
            await wait_count(reader, REGISTERED, 1, procs, "warm-up", 120)
        else:
            await wait_count(reader, SETTLED_STEP_1, 2, procs, "warm-up", 120)
        await warm.signal("cancel", {"reason": "warm-up"})
        await warm.result()
        server_idle = rss_mb(server_pid)
        worker_idle = rss_mb(worker_pid)
        cpu0 = cpu_seconds(worker_pid), cpu_seconds(server_pid)

        async def start(i: int) -> None:
            await client.start_workflow("DunningWorkflow", case_input(i), id=workflow_id(i),
                                        task_queue=TASK_QUEUE)

        with Rss({"worker": worker_pid, "server": server_pid}) as rss:
            first = time.perf_counter()
            with Stopwatch() as starting:
                await bounded(cases, start, concurrency)
            print(f"  ... started {cases} cases in {starting.seconds:.1f} s", file=sys.stderr,
                  flush=True)
            if sleep_first:  # registered in its first workflow task, which then sets its timers
                await wait_count(reader, REGISTERED, cases + 1, procs, "registered",
                                 timeout=max(600, cases * 0.2))
                all_sent = all_settled = time.perf_counter() - first
            else:
                await wait_count(reader, SENT_STEP_1, cases + 1, procs, "step 1 sent",
                                 timeout=max(600, cases * 0.2))
                all_sent = time.perf_counter() - first
                await wait_count(reader, SETTLED_STEP_1, 2 * (cases + 1), procs, "step 1 settled",
                                 timeout=max(600, cases * 0.5))
                all_settled = time.perf_counter() - first
            cpu_sent = (cpu_seconds(worker_pid) - cpu0[0], cpu_seconds(server_pid) - cpu0[1])
            await asyncio.sleep(5)  # let the last workflow tasks settle: everyone sleeps now
            rss.sample()
            asleep = {"worker": rss_mb(worker_pid), "server": rss_mb(server_pid)}
            history_mb = sum(f.stat().st_size for f in Path(server_db).parent.glob(
                Path(server_db).name + "*")) / 2**20  # (in /dev/shm: memory, outside the RSS)
            running = (await client.count_workflows(
                f'DunningAccountId = "{ACCOUNT}" AND ExecutionStatus = "Running"')).count

            async def cancel_one(i: int) -> None:
                await client.get_workflow_handle(workflow_id(i)).signal(
                    "cancel", {"reason": "bench"})

            signal_seconds = all_canceled = float("nan")
            if cancel:
                first = time.perf_counter()
                with Stopwatch() as signalling:
                    await bounded(cases, cancel_one, concurrency)
                signal_seconds = signalling.seconds
                await wait_count(reader, CANCELED, cases + 1, procs, "canceled",
                                 timeout=max(600, cases * 0.2))
                all_canceled = time.perf_counter() - first
            rss.sample()
        peaks = {"worker": peak_rss_mb(worker_pid), "server": peak_rss_mb(server_pid)}
        procs.check()
    finally:
        procs.stop_all()
        reader.dispose()
        for kept in dict.fromkeys((tmp, server_dir)):
            if keep:
                print(f"  ... kept {kept}", file=sys.stderr)
            else:
                shutil.rmtree(kept, ignore_errors=True)

    figures = {
        "cases": cases,
        "start_per_s": cases / starting.seconds,
        "start_seconds": starting.seconds,
        "step1_seconds": all_sent,
        "step1_per_s": cases / all_sent,
        "step1_settled_seconds": all_settled,
        "running_after_step1": running,
        "worker_rss_mb": asleep["worker"],
        "worker_rss_mb_per_1000": (asleep["worker"] - worker_idle) / cases * 1000,
        "worker_peak_rss_mb": max(peaks["worker"], rss.top["worker"]),
        "worker_idle_rss_mb": worker_idle,
        "server_rss_mb": asleep["server"],
        "server_db_mb": history_mb,
        "server_peak_rss_mb": max(peaks["server"], rss.top["server"]),
        "server_idle_rss_mb": server_idle,
        "worker_cpu_s": cpu_sent[0],
        "server_cpu_s": cpu_sent[1],
        "cancel_signals_per_s": cases / signal_seconds,
        "cancel_seconds": all_canceled,
        "canceled_per_s": cases / all_canceled,
    }
    backend = "SQLite" if url.startswith("sqlite") else "PostgreSQL"
    if sleep_first:
        progress = [("all registered, asleep", f"{all_sent:.1f} s after the first start "
                                               f"({figures['step1_per_s']:.0f} cases/s)")]
    else:
        progress = [
            ("all sent step 1", f"{all_sent:.1f} s after the first start "
                                f"({figures['step1_per_s']:.0f} cases/s)"),
            ("both lanes settled", f"{all_settled:.1f} s (SMS off: step 1 SMS recorded as "
                                   f"skipped; SMS queue limit {sms_rate_limit or '0'}/s)")]
    canceling = [("cancel rate", f"{figures['cancel_signals_per_s']:.0f} signals/s; all {cases} "
                                 f"canceled in {all_canceled:.1f} s "
                                 f"({figures['canceled_per_s']:.0f} cases/s)")] if cancel else []
    table(f"scale: {cases} sleeping cases, schedule {schedule}, email only ({backend}; dev server "
          f"SQLite {server_db}; {concurrency} in flight)", [
        ("start rate", f"{figures['start_per_s']:.0f} cases/s ({starting.seconds:.1f} s)"),
        *progress,
        ("running (visibility)", f"{running} (expected {cases}; visibility lags 1-2 s)"),
        ("worker RSS", f"{asleep['worker']:.0f} MB asleep, peak {figures['worker_peak_rss_mb']:.0f}"
                       f" MB (idle {worker_idle:.0f} MB)"),
        ("worker RSS per 1,000", f"{figures['worker_rss_mb_per_1000']:.1f} MB per 1,000 sleeping "
                                 f"cases (asleep - idle; the cache holds "
                                 f"{Settings().max_cached_workflows:,} of them)"),
        ("server RSS", f"{asleep['server']:.0f} MB asleep, peak {figures['server_peak_rss_mb']:.0f}"
                       f" MB (idle {server_idle:.0f} MB)"),
        ("server's SQLite file", f"{history_mb:,.0f} MB ({history_mb / cases * 1000:.1f} MB per "
                                 f"1,000 cases; in /dev/shm it is memory too)"),
        ("CPU until all asleep" if sleep_first else "CPU to step 1 settled",
         f"worker {cpu_sent[0]:.1f} s, server {cpu_sent[1]:.1f} s "
         f"({cpu_sent[0] / cases * 1000:.1f} ms and {cpu_sent[1] / cases * 1000:.1f} ms per case)"),
        *canceling,
    ])
    return figures


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=200,
                        help="starts and signals in flight at once")
    parser.add_argument("--postgres", action="store_true",
                        help="on a throwaway PostgreSQL database (DUNNING_BENCH_POSTGRES_URL)")
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    parser.add_argument("--sms-rate-limit", default="0",
                        help="DUNNING_SMS_RATE_LIMIT for the worker (default 0: no limit; "
                        "even skipped SMS steps pass through the rate-limited SMS queue)")
    parser.add_argument("--schedule", default="0s,30d",
                        help="the account's schedule (default 0s,30d: step 1 at once); one whose "
                        "first step is later (3d,7d,14d) measures cases that go straight to sleep")
    parser.add_argument("--no-cancel", action="store_true",
                        help="skip the cancel phase (the dev server's history is thrown away)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directories (the one in /dev/shm is memory)")
    parser.add_argument("--server-db", default=None,
                        help="the dev server's SQLite file (default: a temporary directory in "
                        "/dev/shm when it exists, else beside the database)")
    args = parser.parse_args(argv)
    if args.cases < 1 or args.concurrency < 1:
        parser.error("--cases and --concurrency must be positive")
    try:
        parse_schedule(args.schedule)
    except ValueError as exc:
        parser.error(str(exc))

    def on(url: str | None) -> dict[str, float]:
        return asyncio.run(run(args.cases, args.concurrency, url, args.keep, args.server_db,
                               args.sms_rate_limit, args.schedule, not args.no_cancel))

    if args.postgres:
        with throwaway_postgres("dunning_bench_scale") as url:
            return on(url)
    return on(args.database_url)


if __name__ == "__main__":
    main()
