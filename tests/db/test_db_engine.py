"""The PostgreSQL pool: idle connections are pinged (a dead one is replaced unseen), busy ones
are not (a round trip saved on every checkout under load)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from dunning.platform.db import Database

pytestmark = pytest.mark.postgres


def _kill(url: str, pid: int) -> None:
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # wait until the backend is gone, so the next use cannot race its exit
        for _ in range(100):
            if not admin.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone():
                break
            admin.execute("SELECT pg_sleep(0.02)")


def _backend_pid(database: Database) -> int:
    with database.session() as s:
        return int(s.execute(text("SELECT pg_backend_pid()")).scalar_one())


@pytest.fixture
def one_connection(postgres_url: str, request: pytest.FixtureRequest) -> Iterator[Database]:
    database = Database(postgres_url, pool_size=1, ping_after_idle=request.param)
    yield database
    database.dispose()


@pytest.mark.parametrize("one_connection", [0.0], indirect=True)
def test_an_idle_connection_that_died_is_replaced_before_use(
    one_connection: Database, postgres_url: str
) -> None:
    first = _backend_pid(one_connection)
    _kill(postgres_url, first)
    second = _backend_pid(one_connection)  # pinged at checkout, found dead, reconnected
    assert second != first


@pytest.mark.parametrize("one_connection", [3600.0], indirect=True)
def test_a_connection_in_steady_use_is_not_pinged(
    one_connection: Database, postgres_url: str
) -> None:
    first = _backend_pid(one_connection)
    assert _backend_pid(one_connection) == first  # reused
    _kill(postgres_url, first)
    with pytest.raises(OperationalError):  # no ping: the statement itself finds out, once
        _backend_pid(one_connection)
    assert _backend_pid(one_connection) != first  # the pool was discarded and refilled
