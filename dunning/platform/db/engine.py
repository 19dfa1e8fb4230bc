"""Engines for SQLite (embedded default) and PostgreSQL (production), and the schema upgrade.

SQLite is set up for several processes at once (worker, webhook server, CLI): WAL journal, a busy
timeout, and every transaction opened with BEGIN IMMEDIATE so that a read-then-write never fails
with a lock upgrade error.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from dunning.platform.files import private_file

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
PING_AFTER_IDLE = 10.0  # seconds a pooled PostgreSQL connection may sit unused unchecked


def make_engine(url: str, *, pool_size: int = 10, ping_after_idle: float = PING_AFTER_IDLE
                ) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not (
            parsed.database.startswith("file:")
        ):
            # 0600 (and a 0700 directory if we create it): customers, ledger and secrets.
            private_file(Path(parsed.database))
        engine = create_engine(
            url,
            hide_parameters=True,  # no customer data in logged or raised SQL errors
            connect_args={"timeout": 30, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=pool_size,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    engine = create_engine(
        parsed, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800,
        hide_parameters=True,  # no customer data in logged or raised SQL errors
    )
    _ping_when_idle(engine, ping_after_idle)
    return engine


def _ping_when_idle(engine: Engine, after: float) -> None:
    """A pre-ping that costs nothing under load. `pool_pre_ping` spends a round trip on every
    checkout, a quarter of a credit reservation's; yet a connection that worked a moment ago
    is as good as pinged. So only a connection that sat in the pool for `after` seconds or
    more is pinged (where a restarted server or a dropped idle connection shows up), and a dead
    one is replaced before the caller sees it. A connection that breaks while in steady use
    fails its statement once and SQLAlchemy discards the pool: the activity is retried by
    Temporal, a webhook by its sender (who gets a 5xx)."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None or time.monotonic() - idle_since < after:
            return  # fresh, or used a moment ago
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # the pool reconnects and tries once more
            raise DisconnectionError(f"idle connection failed its ping: {exc}") from exc


def insert_for(dialect: str) -> Any:
    """`insert()` with ON CONFLICT for a dialect (PostgreSQL's, else SQLite's)."""
    from sqlalchemy.dialects import postgresql, sqlite

    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def commits_in_one_trip(session: Session) -> bool:
    """Whether `execute_on_driver` runs on this session's database (PostgreSQL through psycopg,
    whose pipeline mode also sends a statement and its COMMIT together)."""
    bind = session.get_bind()
    return bind.dialect.name == "postgresql" and bind.dialect.driver == "psycopg"


@functools.cache
def compiled_sql(stmt: Any, dialect: Any) -> tuple[str, dict[str, Any]]:
    """A statement built once, compiled once per dialect: (SQL text, default parameters), to
    run on the driver's cursor without SQLAlchemy's per-execution work."""
    compiled = stmt.compile(dialect=dialect)
    return str(compiled), dict(compiled.params)


def execute_on_driver(session: Session, stmt: Any, params: dict[str, Any], *,
                      commit: bool = False) -> Any:
    """Run a hot-path statement on psycopg's cursor in the session's transaction (compiled once
    per dialect; SQLAlchemy's per-execution work would double its cost) and return its first
    row (None: no row). A driver error is raised as SQLAlchemy raises it (IntegrityError...).
    PostgreSQL through psycopg only (`commits_in_one_trip`).

    `commit`: the statement is the LAST of the transaction and goes with BEGIN and COMMIT in
    one round trip (pipeline mode, one Sync): the row locks it takes are held while the server
    runs it and commits, never across a round trip to this process and its wait for the GIL. A
    failing statement commits nothing. The session's own commit then finds nothing left to do,
    and a statement the caller still runs in this session goes into a new transaction."""
    conn = session.connection()
    sql, defaults = compiled_sql(stmt, conn.dialect)
    driver = conn.connection.driver_connection
    assert driver is not None
    try:
        if not commit:
            with driver.cursor() as cur:
                cur.execute(sql, {**defaults, **params})
                return cur.fetchone()
        with driver.pipeline():
            cur = driver.cursor()
            cur.execute(sql, {**defaults, **params})
            driver.cursor().execute(b"COMMIT")  # (`commit()` would add a Sync of its own)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(sql, None, exc, conn.dialect.loaded_dbapi.Error,
                                  hide_parameters=True, dialect=conn.dialect) from exc
    row = cur.fetchone()
    cur.close()
    return row


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


class Database:
    """An engine plus a session factory; `upgrade()` applies migrations (idempotent)."""

    def __init__(self, url: str, *, pool_size: int = 10,
                 ping_after_idle: float = PING_AFTER_IDLE) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size, ping_after_idle=ping_after_idle)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on error."""
        with self._sessions() as s, s.begin():
            yield s

    def upgrade(self) -> None:
        from alembic import command

        cfg = alembic_config(self.url)
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def dispose(self) -> None:
        self.engine.dispose()
