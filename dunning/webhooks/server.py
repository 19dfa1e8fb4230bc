"""Serving the webhook app with uvicorn on DUNNING_HTTP_HOST:DUNNING_HTTP_PORT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Generator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol

from dunning.platform.db import Database
from dunning.platform.providers.sms import SmsProvider
from dunning.platform.serving import serve_until
from dunning.platform.settings import Settings
from dunning.webhooks.app import create_app
from dunning.webhooks.stripe import TemporalSource

log = logging.getLogger("dunning.webhooks")


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a per-request read deadline: a request's headers and
    body must arrive within `read_timeout` seconds of its first byte (or of the connection),
    else the connection is closed. A slow client (slowloris) cannot hold a connection, and so
    a slot of `limit_concurrency`, for long."""

    read_timeout: float = 10.0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._read_deadline: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        if self._read_deadline is None:
            self._read_deadline = self.loop.call_later(self.read_timeout, self._read_expired)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def data_received(self, data: bytes) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self._arm()  # a new request begins (also on a kept-alive connection)
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete and (
            not self.cycle.more_body
        ):
            self._disarm()  # read in full: the app takes its time, not the client

    def _read_expired(self) -> None:
        self._read_deadline = None
        reading = self.cycle is None or self.cycle.response_complete or self.cycle.more_body
        if reading and not self.transport.is_closing():
            log.debug("closing a connection whose request did not arrive within %ss",
                      self.read_timeout)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def protocol_for(settings: Settings) -> type[DeadlineH11Protocol]:
    return type("WebhookH11Protocol", (DeadlineH11Protocol,),
                {"read_timeout": settings.http_read_timeout})


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
        http=protocol_for(settings),  # per-request read deadline (DUNNING_HTTP_READ_TIMEOUT)
        limit_concurrency=settings.http_max_connections,  # beyond it: 503 at once
        timeout_keep_alive=5,
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
        await serve_until(server, stop)
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
