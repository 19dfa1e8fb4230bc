"""The Temporal worker: runs DunningWorkflow and its activities. `dunning worker` or
`python worker.py`. Scale out by starting more of these on the same task queue.

Logs are structured (dunning.platform.logs); with DUNNING_METRICS_ADDRESS the worker serves
Prometheus
metrics, Temporal's and the engine's (dunning.platform.metrics), on that address."""

from __future__ import annotations

import asyncio
import importlib.abc
import importlib.machinery
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from types import CodeType, ModuleType

from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities import DunningActivities
from activities.events import EventActivities
from dunning.cases.billing import StripeBilling
from dunning.credits.followups import BalanceFollowups
from dunning.credits.gateways import Gateways
from dunning.credits.wake import LoopWaker
from dunning.domain.contract import sms_task_queue
from dunning.events.kicker import Kicker, KickerConfig
from dunning.messages.links import signer_for
from dunning.messages.pacing import pacer_for
from dunning.platform import logs, metrics
from dunning.platform.db import Database
from dunning.platform.providers.email import EmailProvider
from dunning.platform.providers.factory import email_provider, sms_provider
from dunning.platform.settings import Settings, ensure_data_dir, get_settings
from dunning.platform.temporal import connect
from workflows.dunning import DunningWorkflow
from workflows.events import EventDeliveryWorkflow
from workflows.reply import ComplianceReplyWorkflow

log = logging.getLogger("dunning.worker")


def build_followups(
    settings: Settings, db: Database, client: Client, email: EmailProvider
) -> BalanceFollowups:
    """Balance notices (through the worker's email provider), auto-refills (through the
    configured gateways) and the wakes they lead to (through this worker's own client)."""
    return BalanceFollowups(
        db,
        email,
        gateways=Gateways.from_settings(settings),
        waker=LoopWaker(client),
        default_sender=settings.email_from,
    )


def build_activities(
    settings: Settings, db: Database, client: Client | None = None,
    followups: BalanceFollowups | None = None,
) -> DunningActivities:
    """The activities with their collaborators, built here once: the database, the providers,
    the SMS pacer and the balance follow-ups (with `client`, auto-refills wake paused cases
    through it)."""
    email = email_provider(settings)
    if followups is None and client is not None:
        followups = build_followups(settings, db, client, email)
    return DunningActivities(
        db,
        sms_provider(settings),
        email,
        public_url=settings.public_url,
        default_email_from=settings.email_from,
        pacer=pacer_for(db, settings.sms_rate_limit),
        followups=followups,
        links=signer_for(settings),
        # An ambiguous send is settled once its provider call has certainly ended.
        settle_after=max(settings.plivo_timeout, settings.smtp_timeout) + 2.0,
    )


def kicker_config(settings: Settings) -> KickerConfig:
    return KickerConfig(
        task_queue=settings.task_queue,
        poll_seconds=settings.events_poll_seconds,
        give_up_seconds=settings.events_give_up_seconds,
        max_backoff_seconds=settings.events_max_backoff_seconds,
    )


# --- the workflow sandbox ------------------------------------------------------------------
#
# On by default (Settings.workflow_sandbox; `off` saves about a quarter of the CPU per case);
# always on in the tests. When on, it re-imports the workflow's module for every workflow run
# (fresh module state, checked imports). Executing the module is cheap; compiling it is not, and
# without cached bytecode (PYTHONDONTWRITEBYTECODE=1, as in the image, or a read-only install)
# every run compiled the source again. `_WorkflowCodeCache` keeps the compiled code of our
# workflow packages in memory (keyed by path, mtime and size), so each run only executes it:
# same isolation, same checks.

WORKFLOW_PACKAGES = ("workflows",)


class _CachedSourceLoader(importlib.machinery.SourceFileLoader):
    _codes: dict[tuple[str, int, int], CodeType] = {}
    _lock = threading.Lock()

    def get_code(self, fullname: str) -> CodeType:
        path = self.get_filename(fullname)
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size)
        code = self._codes.get(key)
        if code is None:
            code = super().get_code(fullname)
            assert code is not None
            with self._lock:
                self._codes[key] = code
        return code


class _WorkflowCodeCache(importlib.abc.MetaPathFinder):
    """Finds our workflow modules as the other finders do, with a caching loader."""

    def __init__(self, packages: Sequence[str]) -> None:
        self.packages = tuple(packages)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] not in self.packages:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is None:
                continue
            if type(spec.loader) is importlib.machinery.SourceFileLoader and spec.origin:
                spec.loader = _CachedSourceLoader(fullname, spec.origin)
            return spec
        return None


def workflow_runner(sandboxed: bool = True) -> WorkflowRunner:
    """Temporal's default sandbox, with our workflow modules' bytecode cached between runs; or,
    with `sandboxed=False` (DUNNING_WORKFLOW_SANDBOX=off), no sandbox (see Settings)."""
    if not sandboxed:
        return UnsandboxedWorkflowRunner()
    if not any(isinstance(f, _WorkflowCodeCache) for f in sys.meta_path):
        sys.meta_path.insert(0, _WorkflowCodeCache(WORKFLOW_PACKAGES))
    return SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default)


def build_workers(
    client: Client, settings: Settings, activities: DunningActivities, executor: ThreadPoolExecutor,
    events: EventActivities | None = None,
) -> list[Worker]:
    """Two workers in one process: the case queue (workflows, email, bookkeeping) and the SMS
    queue, whose rate limit holds across all worker processes together. With a pacer (see
    dunning.messages.pacing) the queue hands out sends at the pacer's rate, so the pacer only has to
    absorb the queue's burst after an idle spell, not a standing backlog. The case queue also
    runs the outbound events' delivery workflows (workflows/events.py) and their activities."""
    events = events or EventActivities(
        activities.db, timeout=settings.events_timeout,
        billing=StripeBilling(settings.stripe_api_key.get_secret_value(), settings.stripe_api_url),
    )
    pacer = activities.pacer
    rate = 1 / pacer.interval if pacer is not None else settings.sms_rate_limit
    # On shutdown (SIGTERM) the workers stop polling at once and let the sends under way finish
    # for this long before they are cancelled: a rolling deploy loses and duplicates nothing.
    grace = timedelta(seconds=settings.shutdown_grace_seconds)
    return [
        Worker(
            client,
            task_queue=settings.task_queue,
            workflows=[DunningWorkflow, EventDeliveryWorkflow, ComplianceReplyWorkflow],
            workflow_runner=workflow_runner(settings.workflow_sandbox),
            max_cached_workflows=settings.max_cached_workflows,
            activities=[*activities.all(), *events.all()],
            activity_executor=executor,
            max_concurrent_activities=settings.activity_workers,
            graceful_shutdown_timeout=grace,
        ),
        Worker(
            client,
            task_queue=sms_task_queue(settings.task_queue),
            activities=activities.sms_queue(),
            activity_executor=executor,
            max_concurrent_activities=settings.activity_workers,
            max_task_queue_activities_per_second=rate or None,
            graceful_shutdown_timeout=grace,
        ),
    ]


@asynccontextmanager
async def running(workers: list[Worker]) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        for w in workers:
            await stack.enter_async_context(w)
        yield


async def connect_worker_client(settings: Settings, runtime: Runtime | None = None) -> Client:
    """The worker's client (TLS and API key as configured); with a runtime (e.g. one exporting
    metrics), on that runtime."""
    return await connect(settings, runtime=runtime)


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    if not settings.database_url:
        ensure_data_dir(settings)
    db = Database(settings.effective_database_url, pool_size=settings.activity_workers)
    db.upgrade()
    runtime = metrics.runtime_for(settings.metrics_address) if settings.metrics_address else None
    client = await connect_worker_client(settings, runtime)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    activities = build_activities(settings, db, client)
    with ThreadPoolExecutor(max_workers=settings.activity_workers) as executor:
        workers = build_workers(client, settings, activities, executor)
        log.info("worker polling task queues %s and %s at %s (SMS limit %s/s, sandbox %s)",
                 settings.task_queue, sms_task_queue(settings.task_queue),
                 settings.temporal_address, settings.sms_rate_limit or "no",
                 "on" if settings.workflow_sandbox else "off")
        if runtime is not None:
            log.info("metrics on http://%s/metrics", settings.metrics_address)
        async with running(workers):
            kicker = asyncio.create_task(
                Kicker(client, db, kicker_config(settings)).run(stop)
            )
            sampler = (
                asyncio.create_task(metrics.sample_paused_cases(
                    db, runtime.metric_meter, stop, settings.metrics_sample_seconds))
                if runtime is not None else None
            )
            await stop.wait()
            await kicker
            if sampler is not None:
                await sampler
        # Refills and notices already under way finish.
        await asyncio.to_thread(activities.followups.close)
    db.dispose()


def main() -> None:
    settings = get_settings()
    logs.configure(settings.log_level, settings.log_format, queued=True)
    asyncio.run(run_worker(settings))


if __name__ == "__main__":
    main()
