"""Graceful shutdown, with real processes: SIGTERM on a worker while an SMS is inside the
provider call lets that send finish and be recorded (within DUNNING_SHUTDOWN_GRACE_SECONDS) and
takes nothing new; a later worker carries the case on with nothing lost and nothing twice."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from temporalio.testing import WorkflowEnvironment

from dunning.platform.db import Database
from dunning.platform.db.models import Message
from tests.e2e.processes import client_for, start_worker, stop_worker, worker_env
from tests.fakes.plivo import FakePlivo, Scripted
from tests.fakes.smtp import SmtpSink
from tests.helpers import add_customer, case_input, make_account, wait_for


@pytest.mark.slow
async def test_sigterm_finishes_the_send_under_way_and_takes_no_new_one(
    temporal_env: WorkflowEnvironment, sqlite_db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str, tmp_path: Path,
) -> None:
    db = sqlite_db
    account, queue = f"term-{uid}", f"term-q-{uid}"
    phone = f"+1415556{int(uid[:4], 16) % 1000:03d}9"
    make_account(db, account, schedule="0s,8s", grace="1s", balance=10)
    add_customer(db, account, "c1", phone=phone, email=f"term.{uid}@example.com")
    env = worker_env(temporal_env, db.url, queue, plivo_server, smtp_server, tmp_path,
                     DUNNING_SHUTDOWN_GRACE_SECONDS="10", DUNNING_SMS_RATE_LIMIT="0")
    client = await client_for(env, tmp_path)
    plivo_server.reset()
    plivo_server.push(Scripted(delay=3.0))  # the first SMS sits in the provider call
    first = start_worker(env)
    second = None
    try:
        handle = await client.start_workflow(
            "DunningWorkflow", case_input(account, "inv1", "c1"),
            id=f"dunning-{account}-inv1", task_queue=queue,
        )
        mine = phone.lstrip("+")
        await wait_for(lambda: mine in plivo_server.arrived_to, timeout=30, interval=0.02)
        first.send_signal(signal.SIGTERM)
        sent_at = time.monotonic()
        rc = await asyncio.to_thread(first.wait, 20)
        waited = time.monotonic() - sent_at
        assert rc == 0
        assert 1.5 < waited < 10 + 5  # it waited for the provider's answer, within the grace
        with db.session() as s:
            rows = {(r.step, r.channel): r for r in s.scalars(
                select(Message).where(Message.account_id == account))}
        sms = rows[(1, "sms")]
        taken = plivo_server.accepted(phone.lstrip("+"))
        assert (sms.status, sms.provider_id) == ("sent", taken[0].message_uuid)
        assert len(taken) == 1
        assert plivo_server.arrived_to.count(mine) == 1  # nothing new taken after the SIGTERM
        second = start_worker(env)
        result = await asyncio.wait_for(handle.result(), timeout=90)
        assert result["sms_sent"] == 2 and result["emails_sent"] == 2
        assert len(plivo_server.accepted(phone.lstrip("+"))) == 2
        ids = [m["Message-ID"] for m in smtp_server.to(f"term.{uid}@example.com")]
        assert len(ids) == 2 == len(set(ids))
    finally:
        stop_worker(first)
        if second is not None:
            stop_worker(second)
        plivo_server.reset()


@pytest.mark.postgres
def test_sigterm_on_the_webhook_server_finishes_the_request_under_way(
    pg_db: Database, postgres_url: str, tmp_path: Path,
) -> None:
    """A request is inside the handler (its database has stopped answering, through a TCP
    proxy) when the server gets SIGTERM: it still gets its answer, then the process exits."""
    import http.client
    import os
    import subprocess
    import sys
    import threading
    from urllib.parse import urlsplit, urlunsplit

    from tests.e2e.processes import ROOT
    from tests.fakes.smtp import free_port
    from tests.fakes.tcp_proxy import TcpProxy

    parts = urlsplit(postgres_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    netloc = f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username else (
        f"127.0.0.1:{proxy.port}")
    port = free_port()
    env = {**os.environ, "DUNNING_DATABASE_URL": urlunsplit(parts._replace(netloc=netloc)),
           "DUNNING_HTTP_PORT": str(port), "DUNNING_DATA_DIR": str(tmp_path),
           "DUNNING_SHUTDOWN_GRACE_SECONDS": "10", "PLIVO_AUTH_TOKEN": "t"}
    server = subprocess.Popen([str(Path(sys.executable).parent / "dunning"), "webhooks"], env=env,
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    answers: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/healthz")
                assert conn.getresponse().status == 200
                break
            except OSError:
                assert time.monotonic() < deadline, server.stderr.read() if server.stderr else ""
                time.sleep(0.2)
        proxy.pause()

        def ask() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            conn.request("GET", "/healthz")
            answers.append(conn.getresponse().status)

        asker = threading.Thread(target=ask)
        asker.start()
        time.sleep(0.5)  # the request is inside the handler, waiting for the database
        server.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert server.poll() is None  # still finishing the request under way
        proxy.resume()
        asker.join(timeout=20)
        assert answers == [200]
        # uvicorn re-raises the signal once it has shut down cleanly
        assert server.wait(timeout=15) in (0, -signal.SIGTERM)
    finally:
        proxy.resume()
        if server.poll() is None:
            server.kill()
            server.wait()
        proxy.stop()
