"""The unit tier needs nothing but Python: no database, no Temporal server, no network.

Two guards keep it that way. A test here that asks for a server fixture (a database, Temporal,
the Plivo fake, the SMTP sink) is refused at collection, naming the tier it belongs in; and a
test that opens a TCP connection fails at that call. `pytest tests/unit` runs in seconds.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

# Server fixtures (tests/conftest.py, tests/workflow/conftest.py) and where their tests go.
_SERVER_FIXTURES = {
    "db": "tests/db", "sqlite_db": "tests/db", "pg_db": "tests/db", "sqlite_url": "tests/db",
    "postgres_url": "tests/db", "cli": "tests/db", "temporal_env": "tests/e2e",
    "skipping_env": "tests/workflow", "workflow_env": "tests/workflow",
    "scripted_case": "tests/workflow", "plivo_server": "tests/db or tests/e2e",
    "smtp_server": "tests/db or tests/e2e",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/unit/" not in item.nodeid:
            continue
        wanted = sorted(set(getattr(item, "fixturenames", ())) & set(_SERVER_FIXTURES))
        if wanted:
            raise pytest.UsageError(
                f"{item.nodeid} uses {', '.join(wanted)}: the unit tier needs no server; "
                f"move it to {_SERVER_FIXTURES[wanted[0]]}"
            )


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any TCP connection from a unit test fails with the address it tried."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def refuse(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"unit tests need no network: connect to {address!r}")
        return real_connect(self, address)

    def refuse_ex(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"unit tests need no network: connect to {address!r}")
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse_ex)
    yield
