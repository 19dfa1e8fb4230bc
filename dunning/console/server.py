"""Serving the console and API with uvicorn on DUNNING_CONSOLE_HOST:DUNNING_CONSOLE_PORT."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator

import uvicorn

from dunning.console.app import create_app
from dunning.platform.db import Database
from dunning.platform.serving import serve_until
from dunning.platform.settings import Settings


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its caller."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def make_server(settings: Settings, db: Database, *, handle_signals: bool = True
                ) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(settings, db), host=settings.console_host, port=settings.console_port,
        log_config=None, lifespan="off", server_header=False, proxy_headers=False,
    )
    return uvicorn.Server(config) if handle_signals else _QuietServer(config)


async def serve_console(settings: Settings, stop: asyncio.Event | None = None,
                        *, db: Database | None = None) -> None:
    """Serve until `stop` is set (or, without one, until SIGINT/SIGTERM)."""
    own_db = db is None
    database = db or Database(settings.effective_database_url)
    try:
        server = make_server(settings, database, handle_signals=stop is None)
        await serve_until(server, stop)
    finally:
        if own_db:
            database.dispose()


def run_console(settings: Settings) -> None:
    """`dunning console`: serve until Ctrl-C."""
    database = Database(settings.effective_database_url)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_console(settings, db=database))
    finally:
        database.dispose()
