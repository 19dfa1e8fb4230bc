"""What every CLI command shares: settings, the database, JSON output and user errors.

One `Invocation` per `dunning ...` run is the CLI's composition root: `main` opens it, the
commands reach it through `settings()`, `database()` and `followups()` (built on first use,
once), and `main` closes it (follow-ups finish, the database is disposed). Nothing outlives the
run, so running commands in-process (the tests) needs no reset.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from sqlalchemy.orm import Session

from dunning.platform.db import Database
from dunning.platform.settings import Settings, ensure_data_dir, load_settings

if TYPE_CHECKING:
    from dunning.credits.followups import BalanceFollowups
    from dunning.credits.gateways import Gateways

console = Console()
err_console = Console(stderr=True)

JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout and nothing else.")


class UserError(Exception):
    """A mistake the user can fix: printed on stderr without a traceback, exit status 1."""


def fail(message: str) -> NoReturn:
    raise UserError(message)


class Invocation:
    """The collaborators of one command run, built on first use."""

    def __init__(self, settings: Settings | None = None, *,
                 gateways: Gateways | None = None) -> None:
        self._settings = settings
        self._gateways = gateways  # default: the configured ones
        self._db: Database | None = None
        self._followups: BalanceFollowups | None = None
        self._token: Token[Invocation] | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()  # SettingsError: one line naming the variable
        return self._settings

    def database(self) -> Database:
        """The configured database, migrated to the current schema (idempotent)."""
        if self._db is None:
            cfg = self.settings()
            if not cfg.database_url:
                ensure_data_dir(cfg)
            db = Database(cfg.effective_database_url, pool_size=2)
            try:
                db.upgrade()
            except Exception as exc:  # unreachable server, bad credentials ...
                db.dispose()
                raise UserError(
                    "cannot open the database at DUNNING_DATABASE_URL: "
                    f"{str(exc).splitlines()[0]}"
                ) from None
            self._db = db
        return self._db

    def followups(self) -> BalanceFollowups:
        """Balance notices and auto-refills a command starts (a top-up's grants, `credits
        auto-refill`), with the configured email provider and gateways; wakes they lead to
        connect a client of their own."""
        if self._followups is None:
            from dunning.credits.followups import BalanceFollowups
            from dunning.credits.wake import ThreadWaker
            from dunning.platform.temporal import connect

            cfg = self.settings()
            self._followups = BalanceFollowups.from_settings(
                cfg, self.database(), waker=ThreadWaker(lambda: connect(cfg)),
                gateways=self._gateways,
            )
        return self._followups

    def close(self) -> None:
        if self._followups is not None:
            self._followups.close()  # notices and refills a command started finish first
            self._followups = None
        if self._db is not None:
            self._db.dispose()
            self._db = None

    def __enter__(self) -> Invocation:
        self._token = _current.set(self)
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.close()
        finally:
            if self._token is not None:
                _current.reset(self._token)
                self._token = None


_current: ContextVar[Invocation] = ContextVar("dunning_cli_invocation")


def current() -> Invocation:
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("no dunning command is running (use `with Invocation():`)") from None


def settings() -> Settings:
    return current().settings()


def database() -> Database:
    """The configured database, migrated to the current schema (idempotent)."""
    return current().database()


def followups() -> BalanceFollowups:
    return current().followups()


@contextmanager
def session() -> Iterator[Session]:
    with database().session() as s:
        yield s


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()
