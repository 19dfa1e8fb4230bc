"""A chaos run that counts at the providers: N cases (default 500, two steps on both channels) on
PostgreSQL with two worker processes, while a seeded schedule SIGKILLs workers (a new one is
started in its place) and cuts the database (a TCP proxy between the workers and PostgreSQL
resets every connection and refuses new ones for a few seconds) and SIGKILLs the Temporal dev
server (restarted a few seconds later on the same port and database file). The loopback Plivo
(with its message list) and SMTP server count what reached them.

Prints: kills, Temporal restarts, database outages, SMS and emails at the providers, duplicates
(an SMS twice; an email twice under one Message-ID, the documented at-most-one repeat per kill
inside an SMTP transaction, counted apart), lost (a reminder recorded sent that no provider got,
or one left without a final record), rows left `unknown`, the ledger check (balance = sum of the
ledger = top-up minus the credits of the SMS sent) and how long the last case took to settle after
the last fault.

    python -m bench.chaos [--cases 500] [--seed 7] [--kills 6] [--outages 2]
                          [--outage-seconds 5] [--temporal-restarts 1]
                          [--restart-down-seconds 3] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import select
from temporalio.client import Client

from bench.common import ROOT, table
from dunning.accounts.accounts import AccountOptions, create_account
from dunning.credits import ledger
from dunning.platform.codec import converter_for
from dunning.platform.db import Database
from dunning.platform.db.models import Account, Customer, Message
from dunning.platform.settings import Settings
from tests.e2e.processes import DevServer, result_across_restarts
from tests.fakes.plivo import FakePlivo, Scripted
from tests.fakes.smtp import SmtpSink
from tests.fakes.tcp_proxy import TcpProxy

ACCOUNT = "chaos"
QUEUE = "bench-chaos"
STEPS = 2
SCHEDULE = "0s,40s"
TOP_UP = 1_000_000
PG_ADMIN = os.environ.get("DUNNING_TEST_POSTGRES_URL",
                          "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def prepare(db: Database, cases: int) -> None:
    with db.session() as s:
        create_account(s, ACCOUNT, AccountOptions(
            company_name="Chaos Co", sms_sender="+14155550100", email_from="billing@chaos.test",
            schedule=SCHEDULE, grace="1s", quiet_hours="off",
        ))
        acct = s.get(Account, ACCOUNT)
        assert acct is not None
        acct.sms_enabled = True
        ledger.top_up(s, ACCOUNT, TOP_UP)
        s.add_all(
            Customer(account_id=ACCOUNT, customer_id=f"c{i}", name="Pat Doe",
                     email=f"c{i}@chaos.test", phone_e164=f"+1415{3000000 + i:07d}",
                     phone_region="US", phone_type="FIXED_LINE_OR_MOBILE",
                     phone_time_zones="America/Los_Angeles", source="bench")
            for i in range(cases)
        )


def fresh_postgres() -> tuple[str, Any]:
    import psycopg

    admin = psycopg.connect(PG_ADMIN.replace("postgresql+psycopg://", "postgresql://"),
                            autocommit=True)
    name = f"dunning_chaos_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}", (admin, name)


def drop_postgres(handle: Any) -> None:
    admin, name = handle
    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                  (name,))
    admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    admin.close()


class Workers:
    """Two worker processes; a killed one is replaced by a new one."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.started = 0

    def start(self) -> subprocess.Popen[bytes]:
        self.started += 1
        out = (self.logs / f"worker-{self.started}.log").open("wb")
        proc = subprocess.Popen([sys.executable, str(ROOT / "worker.py")], env=self.env,
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    def supervise(self, count: int = 2) -> None:
        """As a process supervisor would: a worker that exited (e.g. it could not reach the
        database at start) is replaced."""
        for _ in range(count - len(self.alive())):
            self.start()

    async def supervising(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.supervise()
            await asyncio.sleep(1.0)

    def stop_all(self) -> None:
        for p in self.alive():
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


async def run(args: argparse.Namespace) -> dict[str, float]:
    pg_handle = None
    url = args.database_url
    if url is None:
        url, pg_handle = fresh_postgres()
    db = Database(url, pool_size=8)
    plivo, smtp = FakePlivo().start(), SmtpSink().start()
    try:
        return await _run(args, url, db, plivo, smtp)
    finally:
        plivo.stop()
        smtp.stop()
        db.dispose()
        if pg_handle is not None:
            drop_postgres(pg_handle)


async def _run(args: argparse.Namespace, url: str, db: Database, plivo: FakePlivo,
               smtp: SmtpSink) -> dict[str, float]:
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="dunning-chaos-"))
    db.upgrade()
    prepare(db, args.cases)
    parts = urlsplit(url)
    proxy: TcpProxy | None = None
    worker_url = url
    if parts.scheme.startswith("postgresql"):
        proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
        netloc = (f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username
                  else f"127.0.0.1:{proxy.port}")
        worker_url = urlunsplit(parts._replace(netloc=netloc))
    # Slower answers keep sends in flight when a fault lands.
    plivo.push(*[Scripted(delay=0.05) for _ in range(args.cases * STEPS)])
    # A dev server of our own on a database file, so it can be killed and restarted on it.
    server = DevServer(tmp, tmp / "temporal.log")
    await asyncio.to_thread(server.start)
    key = "k1:" + os.urandom(32).hex()
    worker_env = {
        **os.environ, "DUNNING_TEMPORAL_ADDRESS": server.address,
        "DUNNING_TASK_QUEUE": QUEUE, "DUNNING_DATABASE_URL": worker_url,
        "DUNNING_DATA_DIR": str(tmp), "DUNNING_CODEC_KEYS": key,
        "DUNNING_SMS_BACKEND": "plivo", "PLIVO_AUTH_ID": plivo.auth_id,
        "PLIVO_AUTH_TOKEN": plivo.auth_token, "DUNNING_PLIVO_API_URL": plivo.url,
        "DUNNING_EMAIL_BACKEND": "smtp", "DUNNING_SMTP_HOST": "127.0.0.1",
        "DUNNING_SMTP_PORT": str(smtp.port), "DUNNING_SMS_RATE_LIMIT": "0",
        "DUNNING_LOG_LEVEL": "WARNING",
        # A shared PostgreSQL: each worker keeps at most 2 x 8 connections.
        "DUNNING_ACTIVITY_WORKERS": "8",
    }
    client = await Client.connect(worker_env["DUNNING_TEMPORAL_ADDRESS"],
                                  data_converter=converter_for(Settings(codec_keys=key)))
    workers = Workers(worker_env, tmp)
    kills = outages = restarts = 0
    last_fault = time.monotonic()
    done = asyncio.Event()
    supervisor: asyncio.Task[None] | None = None
    try:
        workers.supervise()
        supervisor = asyncio.create_task(workers.supervising(done))
        handles = []
        for i in range(args.cases):
            handles.append(await client.start_workflow(
                "DunningWorkflow",
                {"account_id": ACCOUNT, "customer_id": f"c{i}", "invoice_id": f"inv-{i}",
                 "amount_due": 4900, "currency": "USD",
                 "billing_link": f"https://pay.example.com/inv-{i}"},
                id=f"dunning-{ACCOUNT}-inv-{i}", task_queue=QUEUE,
            ))
        while plivo.arrived == 0:  # the schedule's clock starts with the first send
            await asyncio.sleep(0.1)
        t0 = time.monotonic()
        # The seeded schedule: faults spread over the case's two steps.
        horizon = 40.0 + 20.0
        faults = sorted(
            [(rng.uniform(0.5, horizon), "kill") for _ in range(args.kills)]
            + [(rng.uniform(1.0, horizon), "outage") for _ in range(args.outages if proxy
                                                                    else 0)]
            # Temporal restarts are aimed at a step's sends (its first seconds), not its sleep.
            + [(rng.choice((0.0, 40.0)) + rng.uniform(0.5, 2.5), "restart")
               for _ in range(args.temporal_restarts)]
        )
        for at, kind in faults:
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            if kind == "kill":
                alive = workers.alive()
                if alive:
                    victim = rng.choice(alive)
                    os.kill(victim.pid, signal.SIGKILL)
                    victim.wait()
                    kills += 1
                    workers.supervise()
            elif kind == "restart":
                server.kill()
                await asyncio.to_thread(server.proc.wait)  # type: ignore[union-attr]
                restarts += 1
                await asyncio.sleep(args.restart_down_seconds)
                await asyncio.to_thread(server.start)  # same port, same database file
            elif proxy is not None:
                proxy.cut()
                outages += 1
                await asyncio.sleep(args.outage_seconds)
                proxy.restore()
            last_fault = time.monotonic()
            # What the providers had taken when the fault ended: a fault that lands while a
            # step's sends are going out shows counts between 0 and a multiple of the cases.
            print(f"  ... {at:5.1f}s {kind} (providers so far: {len(plivo.accepted())} SMS, "
                  f"{len(smtp.messages)} emails)", flush=True)
        results = await asyncio.wait_for(
            asyncio.gather(*(result_across_restarts(h, args.timeout) for h in handles)),
            timeout=args.timeout)
        settled_after = time.monotonic() - last_fault
    finally:
        done.set()
        if supervisor is not None:
            await supervisor
        workers.stop_all()
        server.stop()
        if proxy is not None:
            proxy.stop()
    figures = count(db, plivo, smtp, args.cases, results)
    figures.update({"kills": kills, "outages": outages, "restarts": restarts,
                    "settled_after_s": settled_after, "workers_started": workers.started})
    show(args, figures)
    return figures


def count(db: Database, plivo: FakePlivo, smtp: SmtpSink, cases: int,
          results: list[dict[str, Any]]) -> dict[str, float]:
    with db.session() as s:
        rows = list(s.scalars(select(Message).where(Message.account_id == ACCOUNT)))
        balance = ledger.balance_of(s, ACCOUNT)
        ledger_sum = ledger.ledger_sum(s, ACCOUNT)
        phones = {c.customer_id: c.phone_e164 or "" for c in s.scalars(
            select(Customer).where(Customer.account_id == ACCOUNT))}
    taken_sms = plivo.accepted()
    uuids = {m.message_uuid for m in taken_sms}
    sms_rows = [r for r in rows if r.channel == "sms"]
    email_rows = [r for r in rows if r.channel == "email"]
    sent_sms = [r for r in sms_rows if r.status == "sent"]
    # SMS: per number, what the provider got beyond what the log holds as sent.
    per_dst: dict[str, int] = {}
    for m in taken_sms:
        per_dst[m.dst] = per_dst.get(m.dst, 0) + 1
    sent_per_dst: dict[str, int] = {}
    for r in sent_sms:
        dst = phones.get(r.customer_id, "").lstrip("+")
        sent_per_dst[dst] = sent_per_dst.get(dst, 0) + 1
    sms_dup = sum(max(0, n - sent_per_dst.get(d, 0)) for d, n in per_dst.items())
    sms_lost = sum(1 for r in sent_sms if r.provider_id not in uuids)
    ids = [str(m["Message-ID"]) for m in smtp.messages]
    email_repeats = len(ids) - len(set(ids))
    sent_email = [r for r in email_rows if r.status == "sent"]
    at_smtp = set(ids)
    email_lost = sum(1 for r in sent_email
                     if f"<{r.workflow_id}.{r.run_id[:8]}.{r.step}@dunning>" not in at_smtp)
    open_rows = sum(1 for r in rows if r.status in ("claimed", "retry"))
    spent = sum(r.credits for r in sent_sms)
    reminders = len(results) * STEPS * 2
    return {
        "cases": cases, "reminders": reminders,
        "sms_at_provider": len(taken_sms), "emails_at_provider": len(ids),
        "sms_sent_rows": len(sent_sms), "email_sent_rows": len(sent_email),
        "skipped_rows": sum(1 for r in rows if r.status == "skipped"),
        "failed_rows": sum(1 for r in rows if r.status == "failed"),
        "unknown_rows": sum(1 for r in rows if r.status == "unknown"),
        "open_rows": open_rows,
        "sms_duplicates": sms_dup, "email_repeats_same_id": email_repeats,
        "lost": sms_lost + email_lost + open_rows,
        "ledger_ok": float(balance == ledger_sum == TOP_UP - spent),
    }


def show(args: argparse.Namespace, f: dict[str, float]) -> None:
    table(f"chaos: {args.cases} cases x {STEPS} steps x 2 channels, seed {args.seed}", [
        ("kills (SIGKILL, worker replaced)", f"{f['kills']:.0f} "
                                             f"({f['workers_started']:.0f} workers started)"),
        ("Temporal server restarts (SIGKILL)", f"{f['restarts']:.0f} x "
                                               f"{args.restart_down_seconds:g} s down"),
        ("database outages", f"{f['outages']:.0f} x {args.outage_seconds:g} s"),
        ("SMS at Plivo / recorded sent", f"{f['sms_at_provider']:.0f} / "
                                         f"{f['sms_sent_rows']:.0f}"),
        ("emails at SMTP / recorded sent", f"{f['emails_at_provider']:.0f} / "
                                           f"{f['email_sent_rows']:.0f}"),
        ("skipped / failed / unknown rows", f"{f['skipped_rows']:.0f} / {f['failed_rows']:.0f}"
                                            f" / {f['unknown_rows']:.0f}"),
        ("duplicates (SMS)", f"{f['sms_duplicates']:.0f}"),
        ("email repeats, same Message-ID", f"{f['email_repeats_same_id']:.0f}"),
        ("lost", f"{f['lost']:.0f}"),
        ("ledger = balance", "ok" if f["ledger_ok"] else "MISMATCH"),
        ("settled after the last fault", f"{f['settled_after_s']:.1f} s"),
    ])


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--outages", type=int, default=2)
    parser.add_argument("--outage-seconds", type=float, default=5.0)
    parser.add_argument("--temporal-restarts", type=int, default=1,
                        help="times the Temporal dev server is SIGKILLed and restarted")
    parser.add_argument("--restart-down-seconds", type=float, default=3.0)
    parser.add_argument("--database-url", default=None,
                        help="default: a fresh PostgreSQL database on 127.0.0.1:5432")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args(argv)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: workers, server, database

    signal.signal(signal.SIGTERM, stop)
    return asyncio.run(run(args))


if __name__ == "__main__":
    main()
