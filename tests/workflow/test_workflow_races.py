"""Workflow races, staged with scripted activities so the interleaving is certain."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from temporalio import activity
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from dunning.domain.contract import (
    ACT_FINISH_CASE,
    ACT_REGISTER_CASE,
    ACT_SEND_EMAIL,
    ACT_SEND_SMS,
    CasePlan,
    FinishCaseRequest,
    MessageRequest,
    MessageResult,
    RegisterCaseRequest,
    sms_task_queue,
)
from dunning.domain.outbound import (
    ACT_CAMPAIGN_FOR_CASE,
    ACT_RECORD_EVENTS,
    CampaignRequest,
    CampaignSnapshot,
    RecordEventsRequest,
)
from tests.helpers import case_input, query_status, wait_for
from workflows import DunningWorkflow


async def test_credits_added_during_the_failing_send_is_not_lost(
    temporal_env: WorkflowEnvironment, uid: str
) -> None:
    """A top-up's `credits_added` signal that lands while the SMS send which found no credits is
    still running must wake the lane: the case may not wait for a second signal (or, here, for
    the end of its one-minute grace period)."""
    in_send = threading.Event()
    release = threading.Event()
    sms_calls: list[int] = []

    @activity.defn(name=ACT_REGISTER_CASE)
    def register_case(req: RegisterCaseRequest) -> CasePlan:
        return CasePlan([0], 60)

    @activity.defn(name=ACT_SEND_EMAIL)
    def send_email(req: MessageRequest) -> MessageResult:
        return MessageResult("sent")

    @activity.defn(name=ACT_SEND_SMS)
    def send_sms(req: MessageRequest) -> MessageResult:
        sms_calls.append(req.step)
        if len(sms_calls) == 1:  # the balance was empty; the top-up arrives before we return
            in_send.set()
            release.wait(timeout=30)
            return MessageResult("no_credits", "needs 1 credits, balance is 0", 1)
        return MessageResult("sent", "", 1)

    @activity.defn(name=ACT_FINISH_CASE)
    def finish_case(req: FinishCaseRequest) -> None:
        return None

    @activity.defn(name=ACT_CAMPAIGN_FOR_CASE)
    def campaign_for_case(req: CampaignRequest) -> CampaignSnapshot:
        return CampaignSnapshot(False)

    @activity.defn(name=ACT_RECORD_EVENTS)
    def record_events(req: RecordEventsRequest) -> int:
        return len(req.events)

    client, queue = temporal_env.client, f"race-{uid}"
    with ThreadPoolExecutor(max_workers=4) as ex:
        async with (
            Worker(client, task_queue=queue, workflows=[DunningWorkflow],
                   activities=[register_case, send_email, finish_case, campaign_for_case,
                               record_events], activity_executor=ex),
            Worker(client, task_queue=sms_task_queue(queue), activities=[send_sms],
                   activity_executor=ex),
        ):
            handle = await client.start_workflow(
                "DunningWorkflow", case_input(f"race-{uid}", "inv1", "c1"),
                id=f"dunning-race-{uid}-inv1", task_queue=queue,
            )
            await asyncio.to_thread(in_send.wait, 20)
            await handle.signal("credits_added", {"balance": 1})
            release.set()

            async def sms_sent() -> bool:
                st = await query_status(handle)
                return any(r["channel"] == "sms" and r["status"] == "sent"
                           for r in st["reminders"])

            await wait_for(sms_sent, timeout=15)
            status = await query_status(handle)
            await handle.signal("payment_recovered")
            result = await handle.result()
    assert sms_calls == [1, 1]
    assert not status["sms_paused"]
    assert result["sms_sent"] == 1 and result["outcome"] == "recovered"
