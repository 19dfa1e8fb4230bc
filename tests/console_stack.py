"""A running console for the console tests: `dunning console` as a real process on loopback,
on the session's database and Temporal dev server, plus helpers to sign in over HTTP."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.fakes.smtp import free_port

DUNNING = str(Path(sys.executable).parent / "dunning")
PASSWORD = "correct horse battery staple"


@dataclass
class ConsoleProcess:
    url: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log: Path

    def dunning(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DUNNING, *args], env={**os.environ, **self.env}, input=stdin,
                              capture_output=True, text=True, timeout=60)

    def add_user(self, email: str, account: str, role: str) -> None:
        done = self.dunning("users", "add", email, "--account", account, "--role", role,
                            stdin=PASSWORD + "\n")
        assert done.returncode == 0, done.stderr

    def api_key(self, account: str) -> str:
        import json

        done = self.dunning("api-keys", "create", "--account", account, "--json")
        assert done.returncode == 0, done.stderr
        return str(json.loads(done.stdout)["api_key"])


def start_console(env: dict[str, str], tmp: Path) -> Iterator[ConsoleProcess]:
    port = free_port()
    full = {**env, "DUNNING_CONSOLE_HOST": "127.0.0.1", "DUNNING_CONSOLE_PORT": str(port),
            "DUNNING_LOG_LEVEL": "WARNING"}
    log = tmp / f"console-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([DUNNING, "console"], env={**os.environ, **full}, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the console did not start:\n" + log.read_text())
        time.sleep(0.1)
    try:
        yield ConsoleProcess(url, full, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def coded_client(env: Any, codec_keys: str) -> Any:
    """The test server's client with the payload codec the console process uses."""
    from dunning.platform.codec import converter_for
    from dunning.platform.settings import Settings

    client = env.client
    return type(client)(client.service_client, namespace="default",
                        data_converter=converter_for(Settings(codec_keys=codec_keys)))


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def sign_in(url: str, email: str, password: str = PASSWORD) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=30)
    page = client.get("/login")
    answer = client.post("/login", data={"csrf_token": csrf_of(page.text), "email": email,
                                         "password": password})
    assert answer.status_code == 303, answer.text
    return client


def page_csrf(client: httpx.Client, path: str) -> str:
    match = re.search(r'data-csrf="([^"]+)"', client.get(path).text)
    assert match
    return match.group(1)
