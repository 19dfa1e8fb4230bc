"""What every CLI command shares: settings, the database, JSON output and user errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from sqlalchemy.orm import Session

from dunning.platform.db import Database
from dunning.platform.settings import Settings, ensure_data_dir, get_settings

console = Console()
err_console = Console(stderr=True)

JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout and nothing else.")


class UserError(Exception):
    """A mistake the user can fix: printed on stderr without a traceback, exit status 1."""


def fail(message: str) -> NoReturn:
    raise UserError(message)


def settings() -> Settings:
    return get_settings()


_DB: Database | None = None


def database() -> Database:
    """The configured database, migrated to the current schema (idempotent)."""
    global _DB
    if _DB is None:
        cfg = settings()
        if not cfg.database_url:
            ensure_data_dir(cfg)
        db = Database(cfg.effective_database_url, pool_size=2)
        try:
            db.upgrade()
        except Exception as exc:  # unreachable server, bad credentials ...
            raise UserError(
                f"cannot open the database at DUNNING_DATABASE_URL: {str(exc).splitlines()[0]}"
            ) from None
        _DB = db
    return _DB


@contextmanager
def session() -> Iterator[Session]:
    with database().session() as s:
        yield s


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()
