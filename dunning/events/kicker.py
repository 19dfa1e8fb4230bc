"""The worker's kicker: gets an endpoint's delivery workflow going when deliveries are pending.

Every `poll` seconds it reads, per endpoint, the newest pending delivery. A newer one than it saw
last time: signal-with-start `events:<endpoint>` (`events_pending`), so a running workflow drains
again and a finished one starts. Every `sweep` seconds it also starts the workflow of every
endpoint with pending deliveries, ignoring "already running": that catches a lost signal and work
recorded while no worker ran, without adding to a running workflow's history. Any worker may run
one; several only repeat each other's harmless kicks.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from temporalio.client import Client
from temporalio.exceptions import WorkflowAlreadyStartedError

from dunning.domain.outbound import (
    EVENTS_WORKFLOW_TYPE,
    SIGNAL_EVENTS_PENDING,
    DeliveryInput,
    delivery_workflow_id,
)
from dunning.events.outbox import pending_heads
from dunning.platform.db import Database

log = logging.getLogger("dunning.events")


@dataclass(frozen=True)
class KickerConfig:
    task_queue: str
    poll_seconds: float = 2.0
    sweep_seconds: float = 30.0
    give_up_seconds: int = 3 * 86400
    max_backoff_seconds: int = 3600
    idle_seconds: int = 300


class Kicker:
    def __init__(self, client: Client, db: Database, config: KickerConfig) -> None:
        self.client = client
        self.db = db
        self.config = config
        self._seen: dict[str, int] = {}

    def _heads(self) -> dict[str, int]:
        with self.db.session() as s:
            return pending_heads(s)

    def _input(self, endpoint_id: str) -> DeliveryInput:
        c = self.config
        return DeliveryInput(endpoint_id, c.give_up_seconds, c.max_backoff_seconds,
                             c.idle_seconds)

    async def kick(self, endpoint_id: str, *, signal: bool) -> None:
        try:
            await self.client.start_workflow(
                EVENTS_WORKFLOW_TYPE, self._input(endpoint_id),
                id=delivery_workflow_id(endpoint_id), task_queue=self.config.task_queue,
                start_signal=SIGNAL_EVENTS_PENDING if signal else None,
            )
        except WorkflowAlreadyStartedError:
            pass

    async def once(self, *, sweep: bool) -> int:
        """One pass; returns how many endpoints were kicked."""
        heads = await asyncio.to_thread(self._heads)
        kicked = 0
        for endpoint_id, top in heads.items():
            newer = top > self._seen.get(endpoint_id, 0)
            if not (newer or sweep):
                continue
            try:
                await self.kick(endpoint_id, signal=newer)
            except Exception as exc:  # Temporal unreachable: the next pass tries again
                log.warning("could not start event delivery: %s", type(exc).__name__,
                            extra={"endpoint": endpoint_id})
                continue
            self._seen[endpoint_id] = top
            kicked += 1
        return kicked

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        last_sweep = float("-inf")
        while not stop.is_set():
            sweep = loop.time() - last_sweep >= self.config.sweep_seconds
            try:
                await self.once(sweep=sweep)
            except Exception as exc:  # the database is away: try again next time
                log.warning("event kicker pass failed: %s", type(exc).__name__)
            if sweep:
                last_sweep = loop.time()
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.config.poll_seconds)
            except TimeoutError:
                pass
