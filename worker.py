"""The Temporal worker: runs DunningWorkflow and its activities. `dunning worker` or
`python worker.py`. Scale out by starting more of these on the same task queue."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager

from temporalio.client import Client
from temporalio.worker import Worker

from activities import DunningActivities
from dunning.db import Database
from dunning.domain import sms_task_queue
from dunning.providers.factory import email_provider, sms_provider
from dunning.settings import Settings, ensure_data_dir, get_settings
from dunning.temporal import connect
from workflows import DunningWorkflow

log = logging.getLogger("dunning.worker")


def build_activities(settings: Settings, db: Database) -> DunningActivities:
    return DunningActivities(
        db,
        sms_provider(settings),
        email_provider(settings),
        public_url=settings.public_url,
        default_email_from=settings.email_from,
    )


def build_workers(
    client: Client, settings: Settings, activities: DunningActivities, executor: ThreadPoolExecutor
) -> list[Worker]:
    """Two workers in one process: the case queue (workflows, email, bookkeeping) and the SMS
    queue, whose rate limit holds across all worker processes together."""
    return [
        Worker(
            client,
            task_queue=settings.task_queue,
            workflows=[DunningWorkflow],
            activities=activities.all(),
            activity_executor=executor,
            max_concurrent_activities=settings.activity_workers,
        ),
        Worker(
            client,
            task_queue=sms_task_queue(settings.task_queue),
            activities=activities.sms_queue(),
            activity_executor=executor,
            max_concurrent_activities=settings.activity_workers,
            max_task_queue_activities_per_second=settings.sms_rate_limit or None,
        ),
    ]


@asynccontextmanager
async def running(workers: list[Worker]) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        for w in workers:
            await stack.enter_async_context(w)
        yield


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    if not settings.database_url:
        ensure_data_dir(settings)
    db = Database(settings.effective_database_url, pool_size=settings.activity_workers)
    db.upgrade()
    client = await connect(settings)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    with ThreadPoolExecutor(max_workers=settings.activity_workers) as executor:
        workers = build_workers(client, settings, build_activities(settings, db), executor)
        log.info("worker polling task queues %s and %s at %s (SMS limit %s/s)",
                 settings.task_queue, sms_task_queue(settings.task_queue),
                 settings.temporal_address, settings.sms_rate_limit or "no")
        async with running(workers):
            await stop.wait()
    db.dispose()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(run_worker(get_settings()))


if __name__ == "__main__":
    main()
