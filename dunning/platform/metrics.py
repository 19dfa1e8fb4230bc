"""Prometheus metrics: Temporal's own (workers, task queues, activities) and the engine's.

With `DUNNING_METRICS_ADDRESS=host:port` (e.g. 127.0.0.1:9464) the worker's Temporal runtime
serves `http://host:port/metrics`. The engine's metrics go out through the same endpoint: the
workflow counts through `workflow.metric_meter()` (replay-aware: a history replayed on another
worker is not counted twice) and the activities through `activity.metric_meter()`.

Engine metrics (counters unless noted; workflow metrics also carry Temporal's `namespace`,
`task_queue` and `workflow_type` labels):
- `dunning_reminders{channel, outcome}`: reminders decided, outcome sent|skipped|failed.
- `dunning_credits_spent`: credits charged for SMS (refunds not counted).
- `dunning_sms_pauses`, `dunning_sms_resumes`: a case's SMS lane paused for credits, and resumed
  (or its case ended while paused). Their rates show how often accounts run dry.
- `dunning_sms_paused_cases` (gauge): cases waiting for credits right now, counted in the
  database's waiters queue by every worker every 15 s (`DUNNING_METRICS_SAMPLE_SECONDS`); each
  worker reports the same number, so aggregate with max, not sum.
- `dunning_cases_started`, `dunning_cases_finished{outcome}`.
- `dunning_recoveries`, `dunning_recovered_amount{currency}` (minor units).
- `dunning_provider_retries{channel}`: transient provider failures (5xx, 429, refused
  connections) that Temporal retries with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from temporalio.common import MetricMeter
    from temporalio.runtime import Runtime

    from dunning.platform.db import Database

REMINDERS = "dunning_reminders"
CREDITS_SPENT = "dunning_credits_spent"
SMS_PAUSES = "dunning_sms_pauses"
SMS_RESUMES = "dunning_sms_resumes"
SMS_PAUSED_CASES = "dunning_sms_paused_cases"
CASES_STARTED = "dunning_cases_started"
CASES_FINISHED = "dunning_cases_finished"
RECOVERIES = "dunning_recoveries"
RECOVERED_AMOUNT = "dunning_recovered_amount"
PROVIDER_RETRIES = "dunning_provider_retries"

DESCRIPTIONS = {
    REMINDERS: "Reminders decided, by channel and outcome (sent, skipped, failed)",
    CREDITS_SPENT: "Credits charged for SMS reminders",
    SMS_PAUSES: "Times a case's SMS lane paused for lack of credits",
    SMS_RESUMES: "Times a paused SMS lane resumed or its case ended",
    SMS_PAUSED_CASES: "Cases whose SMS lane waits for credits now (same value from every worker)",
    CASES_STARTED: "Dunning cases started",
    CASES_FINISHED: "Dunning cases finished, by outcome",
    RECOVERIES: "Cases ended by a recovered payment",
    RECOVERED_AMOUNT: "Amount recovered, in minor units of the currency",
    PROVIDER_RETRIES: "Transient provider failures retried with backoff, by channel",
}

PAUSED_SAMPLE_SECONDS = 15.0

log = logging.getLogger("dunning.metrics")


def runtime_for(address: str) -> Runtime:
    """A Temporal runtime exporting Prometheus metrics on `address` (host:port)."""
    from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=address)))


def paused_cases(db: Database) -> int:
    """Cases waiting for credits now: the waiters queue, all accounts (cases a wake already
    served, whose send has not run yet, no longer wait for credits)."""
    from sqlalchemy import func, select

    from dunning.platform.db.models import SmsWaiter

    with db.session() as s:
        return int(s.scalar(
            select(func.count()).select_from(SmsWaiter).where(SmsWaiter.credits_granted == 0)
        ) or 0)


async def sample_paused_cases(
    db: Database, meter: MetricMeter, stop: asyncio.Event,
    every: float = PAUSED_SAMPLE_SECONDS,
) -> None:
    """Set the `dunning_sms_paused_cases` gauge from the database until `stop` is set, every
    `every` seconds (Settings.metrics_sample_seconds, DUNNING_METRICS_SAMPLE_SECONDS)."""
    gauge = meter.create_gauge(SMS_PAUSED_CASES, DESCRIPTIONS[SMS_PAUSED_CASES], "cases")
    while not stop.is_set():
        try:
            gauge.set(await asyncio.to_thread(paused_cases, db))
        except Exception:  # a database hiccup must not stop the worker
            log.warning("could not count paused cases", exc_info=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
