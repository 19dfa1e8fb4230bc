"""Engines for SQLite (embedded default) and PostgreSQL (production), and the schema upgrade.

SQLite is set up for several processes at once (worker, webhook server, CLI): WAL journal, a busy
timeout, and every transaction opened with BEGIN IMMEDIATE so that a read-then-write never fails
with a lock upgrade error.
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, StatementError
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
    _forget_prepared_on_rollback(engine)
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
    which also sends a statement and its COMMIT together)."""
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

    `commit`: the statement is the LAST of the transaction and is sent with its COMMIT in one
    round trip (`_run_and_commit`): the row locks it takes are held while the server runs it
    and commits, never across a round trip to this process and its wait for the GIL. A failing
    statement commits nothing. The session's own commit then finds nothing left to do, and a
    statement the caller still runs in this session goes into a new transaction."""
    conn = session.connection()
    driver = conn.connection.driver_connection
    assert driver is not None
    if commit:
        return _run_and_commit(conn, driver, stmt, params)
    sql, defaults = compiled_sql(stmt, conn.dialect)
    try:
        with driver.cursor() as cur:
            cur.execute(sql, {**defaults, **params})
            return cur.fetchone()
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _as_sqlalchemy(conn, sql, exc) from exc


def _as_sqlalchemy(conn: Any, sql: str, exc: Exception) -> StatementError:
    return DBAPIError.instance(sql, None, exc, conn.dialect.loaded_dbapi.Error,
                               hide_parameters=True, dialect=conn.dialect)


# --- one statement and its COMMIT in one round trip (PostgreSQL) ---------------------------
#
# The statement is prepared once per connection under a name (PREPARE; the server keeps its
# plan) and run with EXECUTE in a simple query: `EXECUTE name(...); COMMIT` when the session's
# transaction is open (its locks and earlier writes commit with it), or the EXECUTE alone in
# autocommit when nothing is open yet (one statement is its own transaction, committed when it
# ends). One message out, one answer back, on psycopg's plain path: its pipeline mode, the other
# way to send a statement with its COMMIT, flushed every command on its own and cost twice the
# client's CPU per debit (measured in bench/RESULTS.md, 2026-12-08). The values are bound
# client-side by psycopg (`ClientCursor`, quoted by libpq), into a statement that is only an
# EXECUTE; the hot-path statements pass no personal data (a masked phone hint at most).
#
# psycopg discards every prepared statement of a connection (DEALLOCATE ALL) when it rolls a
# transaction back, ours included; so a rollback on a connection forgets that ours was prepared
# there (`_forget_prepared_on_rollback`), and the next use looks it up in pg_prepared_statements
# before preparing it again. One found missing anyway (DISCARD ALL, DDL) is prepared again: at
# once when nothing else was in the transaction, else by the caller starting over
# (PreparedStatementLost).

_PREPARED = "dunning_prepared"  # key in the pooled connection's info: names prepared there
_IS_PREPARED = "SELECT 1 FROM pg_prepared_statements WHERE name = %s"


class PreparedStatementLost(Exception):
    """The one-trip statement was no longer prepared on the connection, and the transaction it
    was to commit is lost (rolled back): start it over. Raised only when other work was in it."""


@dataclass(frozen=True)
class _ServerStatement:
    name: str
    prepare: str  # PREPARE name AS <statement with $1, $2, ...>
    order: tuple[str, ...]  # the parameter names, in $n order
    defaults: dict[str, Any]
    alone: bytes  # EXECUTE name(%s, ...)
    with_commit: bytes  # EXECUTE name(%s, ...); COMMIT


@functools.cache
def _server_statement(stmt: Any, dialect: Any) -> _ServerStatement:
    sql, defaults = compiled_sql(stmt, dialect)
    order: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m.group(1) not in order:
            order.append(m.group(1))
        return f"${order.index(m.group(1)) + 1}"

    body = re.sub(r"%\((\w+)\)s", number, sql).replace("%%", "%")
    name = "dunning_" + hashlib.sha256(body.encode()).hexdigest()[:20]
    call = f"EXECUTE {name}(" + ", ".join(["%s"] * len(order)) + ")"
    return _ServerStatement(name, f"PREPARE {name} AS {body}", tuple(order), defaults,
                            call.encode(), (call + "; COMMIT").encode())


def _run_and_commit(conn: Any, driver: Any, stmt: Any, params: dict[str, Any]) -> Any:
    import psycopg
    from psycopg.pq import TransactionStatus

    server = _server_statement(stmt, conn.dialect)
    values = {**server.defaults, **params}
    args = [values[name] for name in server.order]
    prepared: set[str] = conn.connection.info.setdefault(_PREPARED, set())
    alone = driver.info.transaction_status == TransactionStatus.IDLE

    def run() -> Any:
        if server.name not in prepared:  # (new here, or a rollback may have dropped it)
            if driver.execute(_IS_PREPARED, (server.name,)).fetchone() is None:
                driver.execute(server.prepare)  # kept by the session, even on rollback
            prepared.add(server.name)
        with psycopg.ClientCursor(driver) as cur:
            cur.execute(server.alone if alone else server.with_commit, args)
            return cur.fetchone()

    if alone:
        driver.autocommit = True  # no BEGIN: the statement is its own transaction
    try:
        # Dropped unseen: alone, nothing happened and it is prepared again once; else the
        # caller's transaction went with it.
        for last in (not alone, True):
            try:
                return run()
            except psycopg.errors.InvalidSqlStatementName as exc:
                prepared.discard(server.name)
                if last:
                    raise PreparedStatementLost(server.name) from exc
        raise AssertionError("unreachable")
    except psycopg.Error as exc:
        raise _as_sqlalchemy(conn, server.prepare, exc) from exc
    finally:
        if alone:
            with suppress(psycopg.Error):  # (a broken connection: SQLAlchemy discards it)
                driver.autocommit = False


def _forget_prepared_on_rollback(engine: Engine) -> None:
    """psycopg deallocates a connection's prepared statements when it rolls back a transaction
    there (or a savepoint): so do we, in our record of what is prepared on it."""

    from psycopg.pq import TransactionStatus

    def forget(info: dict[str, Any], driver: Any) -> None:
        if driver is not None and driver.info.transaction_status != TransactionStatus.IDLE:
            info.pop(_PREPARED, None)  # (with nothing open, psycopg sends no ROLLBACK)

    @event.listens_for(engine, "rollback")
    def _on_rollback(conn: Any) -> None:
        if not conn.invalidated:  # (an invalidated one is discarded, its info with it)
            forget(conn.connection.info, conn.connection.driver_connection)

    @event.listens_for(engine, "rollback_savepoint")
    def _on_rollback_savepoint(conn: Any, *_args: Any) -> None:
        if not conn.invalidated:
            forget(conn.connection.info, conn.connection.driver_connection)

    @event.listens_for(engine, "reset")
    def _on_reset(dbapi_conn: Any, record: Any, reset_state: Any) -> None:
        forget(record.info, dbapi_conn)


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
