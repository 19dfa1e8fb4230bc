"""Real worker processes for the fault tests: the environment of `python worker.py` wired to the
session's Temporal dev server, a database and the loopback providers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from dunning.platform.codec import converter_for
from dunning.platform.settings import Settings
from dunning.platform.temporal import dev_server_command
from tests.fakes.plivo import FakePlivo
from tests.fakes.smtp import SmtpSink, free_port

ROOT = Path(__file__).resolve().parents[2]
KEY = "k1:" + "ab" * 32


def worker_env(temporal_env: WorkflowEnvironment, db_url: str, queue: str, plivo: FakePlivo,
               smtp: SmtpSink, data_dir: Path, **extra: str) -> dict[str, str]:
    return env_at(temporal_env.client.service_client.config.target_host, db_url, queue, plivo,
                  smtp, data_dir, **extra)


def env_at(address: str, db_url: str, queue: str, plivo: FakePlivo, smtp: SmtpSink,
           data_dir: Path, **extra: str) -> dict[str, str]:
    """The worker's environment against the Temporal frontend at `address` (host:port)."""
    return {
        **os.environ,
        "DUNNING_TEMPORAL_ADDRESS": address,
        "DUNNING_TASK_QUEUE": queue,
        "DUNNING_DATABASE_URL": db_url,
        "DUNNING_DATA_DIR": str(data_dir),
        "DUNNING_CODEC_KEYS": KEY,
        "DUNNING_SMS_BACKEND": "plivo",
        "PLIVO_AUTH_ID": plivo.auth_id,
        "PLIVO_AUTH_TOKEN": plivo.auth_token,
        "DUNNING_PLIVO_API_URL": plivo.url,
        "DUNNING_EMAIL_BACKEND": "smtp",
        "DUNNING_SMTP_HOST": "127.0.0.1",
        "DUNNING_SMTP_PORT": str(smtp.port),
        **extra,
    }


def start_worker(env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    """`python worker.py`; its log goes to `log` (read it when a test fails), else nowhere."""
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, str(ROOT / "worker.py")], env=env, cwd=ROOT,
        stdout=out, stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
    )


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def client_for(env: dict[str, str], data_dir: Path, timeout: float = 30) -> Client:
    """A client of the worker's server, with the codec. A dev server that has just opened its
    port may still answer "Frontend is not healthy yet": asked again until `timeout`."""
    settings = Settings(codec_keys=KEY, data_dir=data_dir)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await Client.connect(env["DUNNING_TEMPORAL_ADDRESS"],
                                        data_converter=converter_for(settings))
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


class DevServer:
    """`temporal server start-dev` on a fixed port and database file: start, SIGKILL, start."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.cmd = dev_server_command(Settings(data_dir=data_dir), port=self.port,
                                      headless=True, db_file=str(data_dir / "temporal.db"))
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("the Temporal dev server did not come up")

    def kill(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        os.kill(self.proc.pid, signal.SIGKILL)
        self.kills += 1
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.proc is not None:
            self.proc.wait()


async def result_across_restarts(handle: WorkflowHandle[Any, Any], timeout: float) -> Any:
    """The workflow's result, asking again while the server is away."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await handle.result()
        except RPCError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)
