"""EventDeliveryWorkflow: one per webhook endpoint, delivering its pending events in order.

It drains the endpoint's pending deliveries (the `drain_endpoint` activity posts them oldest
first and stops at the first failure), then waits for the `events_pending` signal (the worker's
kicker, dunning.events.kicker, sends it when new deliveries appear) and drains again. A failing
drain is retried by Temporal with exponential backoff up to `max_backoff_seconds` between
attempts, for `give_up_seconds` (days by default): the events wait, in order, through a receiver's
outage and through worker restarts. After that the endpoint is disabled (`disable_endpoint`) and
the workflow ends. With nothing to deliver for `idle_seconds` it ends too; the kicker starts it
again when events come. It continues as new now and then to keep its history short.
"""

from datetime import timedelta
from functools import partial

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from dunning.domain.outbound import (
        ACT_DISABLE_ENDPOINT,
        ACT_DRAIN_ENDPOINT,
        EVENTS_WORKFLOW_TYPE,
        SIGNAL_EVENTS_PENDING,
        DeliveryInput,
        DisableRequest,
        DrainRequest,
        DrainResult,
    )

DRAIN_TIMEOUT = timedelta(minutes=10)
DRAIN_HEARTBEAT = timedelta(seconds=30)
LOOPS_BEFORE_CONTINUE = 200


@workflow.defn(name=EVENTS_WORKFLOW_TYPE)
class EventDeliveryWorkflow:
    def __init__(self) -> None:
        self._kicks = 0

    @workflow.run
    async def run(self, args: DeliveryInput) -> str:
        retry = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                            maximum_interval=timedelta(seconds=max(1, args.max_backoff_seconds)))
        for _ in range(LOOPS_BEFORE_CONTINUE):
            seen = self._kicks
            try:
                result: DrainResult = await workflow.execute_activity(
                    ACT_DRAIN_ENDPOINT, DrainRequest(args.endpoint_id), result_type=DrainResult,
                    start_to_close_timeout=DRAIN_TIMEOUT, heartbeat_timeout=DRAIN_HEARTBEAT,
                    schedule_to_close_timeout=timedelta(seconds=args.give_up_seconds),
                    retry_policy=retry,
                )
            except ActivityError as err:
                reason = f"deliveries kept failing for {args.give_up_seconds}s: {err.cause or err}"
                await workflow.execute_activity(
                    ACT_DISABLE_ENDPOINT, DisableRequest(args.endpoint_id, reason[:400]),
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
                )
                return "disabled"
            if not result.enabled:
                return "disabled"
            if result.more:
                continue
            try:
                await workflow.wait_condition(partial(self._kicked_since, seen),
                                              timeout=timedelta(seconds=args.idle_seconds))
            except TimeoutError:
                return "idle"
        workflow.continue_as_new(args)

    def _kicked_since(self, seen: int) -> bool:
        return self._kicks != seen

    @workflow.signal(name=SIGNAL_EVENTS_PENDING)
    def events_pending(self) -> None:
        self._kicks += 1
