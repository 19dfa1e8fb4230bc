"""The webhook server process SIGKILLed while it handles a STOP, then Plivo's retry of the same
inbound message (same MessageUUID, signed afresh) reaches a restarted server.

Real processes: `dunning webhooks` on a free port (PLIVO_AUTH_TOKEN, DUNNING_PUBLIC_URL set,
durable replies through Temporal) and a worker (`python worker.py`) that sends the replies to the
loopback Plivo.

The window hit: the first server's DUNNING_TEMPORAL_ADDRESS points at a listener of this test
that accepts connections and never answers, so the request, once it committed the opt-out and
planned the confirmation, hangs while it connects to Temporal to start the reply workflow. The
test waits until the opt-out is in the database and that connection is open, then SIGKILLs the
server: the opt-out is stored, the confirmation is planned but neither sent nor started, and
Plivo never got an answer (so it retries). This is the crash the issue names ("killed while
sending a STOP confirmation": before the fix the reply was a background task of this process).

Proved: the opt-out is stored once (one consent event), exactly one confirmation reaches Plivo
(also after a further retry), and no `messages` row is left `claimed`. On SQLite and on
PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import select
from temporalio.testing import WorkflowEnvironment

from dunning.platform.db import Database
from dunning.platform.db.models import Message
from tests.db.test_webhooks import (
    INBOUND,
    PUBLIC_URL,
    Tenant,
    digits,
    events,
    fresh_number,
    opted_out,
    signed_headers,
)
from tests.e2e.processes import ROOT, start_worker, stop_worker, worker_env
from tests.fakes.plivo import FakePlivo
from tests.fakes.smtp import SmtpSink, free_port
from tests.helpers import wait_for


class SilentListener:
    """Accepts TCP connections and never answers: a Temporal frontend that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent() -> Iterator[SilentListener]:
    listener = SilentListener()
    yield listener
    listener.close()


def start_webhooks(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "dunning"), "webhooks"], env=env,
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    port = int(env["DUNNING_HTTP_PORT"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise TimeoutError(log.read_text()[-2000:])


def deliver(port: int, body: dict[str, str], token: str) -> httpx.Response:
    """One delivery of Plivo's, signed (V3, a fresh nonce) as Plivo signs it."""
    items = list(body.items())
    headers = signed_headers(INBOUND, items, token=token, nonce=uuid.uuid4().hex)
    return httpx.post(f"http://127.0.0.1:{port}{INBOUND}", content=urlencode(items),
                      headers=headers, timeout=30)


def _rows(db: Database, account: str) -> list[Message]:
    with db.session() as s:
        return list(s.scalars(select(Message).where(Message.account_id == account)))


@pytest.mark.slow
async def test_webhook_killed_while_handling_stop_then_plivo_retry_confirms_once(
    temporal_env: WorkflowEnvironment, db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, silent: SilentListener, uid: str, tmp_path: Path,
) -> None:
    queue = f"wk-q-{uid}"
    t = Tenant(db, f"wk-{uid}", fresh_number(), "Acme Cloud")
    phone = fresh_number()
    plivo_server.reset()
    base = worker_env(temporal_env, db.url, queue, plivo_server, smtp_server, tmp_path,
                      DUNNING_SMS_RATE_LIMIT="0")
    http_port = free_port()
    hooks_env = {**base, "DUNNING_HTTP_PORT": str(http_port), "DUNNING_PUBLIC_URL": PUBLIC_URL,
                 "PLIVO_AUTH_TOKEN": plivo_server.auth_token}
    body = {"From": digits(phone), "To": digits(t.sender), "Text": "STOP", "Type": "sms",
            "MessageUUID": str(uuid.uuid4())}
    token = plivo_server.auth_token
    worker = start_worker(base, tmp_path / "worker.log")
    hooks = start_webhooks({**hooks_env, "DUNNING_TEMPORAL_ADDRESS": f"127.0.0.1:{silent.port}"},
                           tmp_path / "webhooks-1.log")
    try:
        first = asyncio.create_task(asyncio.to_thread(deliver, http_port, body, token))
        await wait_for(lambda: opted_out(db, t.id, phone) and silent.accepted, timeout=20,
                       interval=0.02)
        assert not first.done()  # the request is still inside the server
        os.kill(hooks.pid, signal.SIGKILL)
        hooks.wait(10)
        with pytest.raises(httpx.TransportError):  # Plivo got no answer: it will retry
            await first
        # At the kill: the opt-out is stored, the confirmation planned, not sent, not claimed.
        assert opted_out(db, t.id, phone)
        assert [r.status for r in _rows(db, t.id)] == ["retry"]
        await asyncio.sleep(1.0)
        assert plivo_server.accepted(digits(phone)) == []

        hooks = start_webhooks(hooks_env, tmp_path / "webhooks-2.log")  # the real Temporal
        retried = await asyncio.to_thread(deliver, http_port, body, token)  # Plivo's retry
        assert retried.status_code == 200, retried.text
        await wait_for(lambda: [r for r in _rows(db, t.id) if r.status == "sent"], timeout=30)
        again = await asyncio.to_thread(deliver, http_port, body, token)  # and once more
        assert again.status_code == 200, again.text
        await asyncio.sleep(2.0)  # time for a second confirmation to show up, if one would
    finally:
        if hooks.poll() is None:
            hooks.terminate()
            hooks.wait(15)
        stop_worker(worker)
    assert opted_out(db, t.id, phone)
    assert [a for a, _ in events(db, t.id, phone)].count("opt_out") == 1, events(db, t.id, phone)
    got = plivo_server.accepted(digits(phone))
    assert len(got) == 1, [g.text for g in got]
    assert "unsubscribed" in got[0].text and "Acme Cloud" in got[0].text  # the STOP reply
    assert got[0].src == digits(t.sender)
    rows = _rows(db, t.id)
    assert [(r.status, r.provider_id) for r in rows] == [("sent", got[0].message_uuid)]
    assert not [r for r in rows if r.status == "claimed"]
