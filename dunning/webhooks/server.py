"""Serving the webhook app with uvicorn on DUNNING_HTTP_HOST:DUNNING_HTTP_PORT."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator

import uvicorn
from starlette.applications import Starlette

from dunning.platform.db import Database
from dunning.platform.providers.sms import SmsProvider
from dunning.platform.settings import Settings
from dunning.webhooks.app import create_app
from dunning.webhooks.stripe import TemporalSource


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its caller."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def make_server(
    settings: Settings, app: Starlette, *, handle_signals: bool = True
) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,  # the process's logging set-up applies
        lifespan="off",
        server_header=False,
        proxy_headers=False,
        # SIGTERM: stop accepting, let the requests under way finish (within the grace).
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_seconds)),
    )
    return uvicorn.Server(config) if handle_signals else _QuietServer(config)


async def serve_webhooks(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    db: Database | None = None,
    sms_provider: SmsProvider | None = None,
    temporal: TemporalSource | None = None,
) -> None:
    """Serve until `stop` is set (or, without one, until SIGINT/SIGTERM).

    Temporal (for Stripe events) is connected on first use unless `temporal` is given, so the
    server comes up even when Temporal is not running yet.
    """
    own_db = db is None
    database = db or Database(settings.effective_database_url)
    try:
        server = make_server(settings, create_app(settings, database, sms_provider, temporal),
                             handle_signals=stop is None)
        if stop is None:
            await server.serve()
            return
        task = asyncio.create_task(server.serve())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        stopper.cancel()
        await task
    finally:
        if own_db:
            database.dispose()


def run_webhooks(settings: Settings) -> None:
    """`dunning webhooks`: apply migrations, then serve until Ctrl-C."""
    database = Database(settings.effective_database_url)
    database.upgrade()
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_webhooks(settings, db=database))
    finally:
        database.dispose()
