"""The workflow's lane rules, one by one, with scripted activities (see conftest.py).

Each test scripts what the activities answer (sent, no credits, quiet hours, a provider error),
runs the real `DunningWorkflow`, and checks which sends it asked for, when (the `now` each send
request carries is the workflow's time), and what it recorded: the query's reminders, the
result, the bookkeeping calls.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from dunning.domain.contract import (
    ACT_FINISH_CASE,
    ACT_REGISTER_CASE,
    ACT_RELEASE_SMS,
    ACT_SETTLE_MESSAGE,
    SA_SMS_PAUSED,
    SIGNAL_CANCEL,
    SIGNAL_CREDITS_ADDED,
    SIGNAL_PAYMENT_RECOVERED,
    MessageRequest,
    MessageResult,
)
from tests.workflow.conftest import ScriptedCase

OVERTAKEN = "a later reminder was already due"
SCHEDULE_ENDED = "the schedule ended before it could be sent"


def lane(status: dict[str, Any], channel: str) -> list[tuple[str, str]]:
    """(status, reason) of each step on one channel, from the query."""
    return [(r["status"], r["reason"]) for r in status["reminders"] if r["channel"] == channel]


def sent_steps(case: ScriptedCase, channel: str) -> list[int]:
    return [r.step for r in case.sends(channel)]


# --- overtaken steps ------------------------------------------------------------------------


async def test_a_step_due_while_an_earlier_send_was_queued_overtakes_the_one_between(
    scripted_case: Any,
) -> None:
    """SMS step 1 waits in the queue (no SMS worker, as behind a rate limit) until step 3 is
    due. It goes out when it gets its turn; step 2, due in between, is skipped: the next step is
    step 3, not a burst of stale ones. Email, on its own queue, sends every step on time."""
    case: ScriptedCase = scripted_case(offsets=[0, 1, 2], grace=1)
    await case.start(hold_sms=True)
    await case.wait_until(lambda: case.sends("email", 1), "email step 1 sent")
    await case.sleep(2.5)  # step 3 is due; SMS step 1 is still queued
    assert case.sends("sms") == []
    await case.release_sms_queue()
    result = await case.result()
    status = await case.status()

    assert sent_steps(case, "sms") == [1, 3]
    assert case.offset(case.sends("sms", 3)[0].now) >= 2.5
    assert lane(status, "sms") == [("sent", ""), ("skipped", OVERTAKEN), ("sent", "")]
    assert sent_steps(case, "email") == [1, 2, 3]
    for step, offset in ((1, 0), (2, 1), (3, 2)):
        assert offset <= case.offset(case.sends("email", step)[0].now) < offset + 1
    assert result == {"outcome": "exhausted", "emails_sent": 3, "sms_sent": 2,
                      "credits_spent": 2}


async def test_a_late_start_sends_only_the_latest_due_step(scripted_case: Any) -> None:
    """A case that starts after its later steps were due (a failure reported late) skips the
    stale steps on both channels and sends the latest due one at once."""
    case: ScriptedCase = scripted_case(offsets=[0, 2, 30], grace=1)
    failed_at = await case.env.get_current_time() - timedelta(seconds=3)
    await case.start(failed_at=failed_at.isoformat())
    await case.wait_until(lambda: case.sends("email") and case.sends("sms"), "both lanes sent")
    status = await case.status()

    assert case.failed_at == failed_at
    assert sent_steps(case, "email") == [2] and sent_steps(case, "sms") == [2]
    for channel in ("email", "sms"):
        assert lane(status, channel) == [("skipped", OVERTAKEN), ("sent", ""), ("pending", "")]
    await case.signal(SIGNAL_PAYMENT_RECOVERED)
    assert (await case.result())["outcome"] == "recovered"


# --- quiet hours ----------------------------------------------------------------------------


async def test_quiet_hours_hold_the_sms_until_the_window_opens_not_the_email(
    scripted_case: Any,
) -> None:
    case: ScriptedCase = scripted_case(offsets=[0, 10], grace=1)
    opens: list[Any] = []

    def sms(req: MessageRequest, attempt: int) -> MessageResult:
        if req.step == 1 and attempt == 1:
            opens.append(req.now + timedelta(seconds=3))
            return MessageResult("quiet_hours", "recipient's quiet hours", retry_at=opens[0])
        return MessageResult("sent", "", 1)

    case.sms = sms
    await case.start()
    await case.wait_until(lambda: case.sends("sms", 1) and case.sends("email", 1),
                          "step 1 tried on both channels")

    async def held() -> bool:
        return "step 1 held until" in (await case.status())["waiting_for"]

    await case.wait_until(held, "the SMS lane says it is held")
    status = await case.status()
    assert lane(status, "sms")[0] == ("pending", "held: recipient's quiet hours")  # held, says why
    assert not status["sms_paused"]  # held, not paused for credits
    assert f"until {opens[0].isoformat()}" in status["waiting_for"]
    result = await case.result()

    first, second = case.sends("sms", 1)
    assert case.offset(first.now) < 1
    assert opens[0] <= second.now < opens[0] + timedelta(seconds=1)  # held until it opened
    assert case.offset(case.sends("email", 1)[0].now) < 1  # email: not held
    assert lane(await case.status(), "sms") == [("sent", ""), ("sent", "")]
    assert result["sms_sent"] == 2 and result["emails_sent"] == 2


async def test_a_window_opening_after_the_next_step_skips_the_held_step(
    scripted_case: Any,
) -> None:
    """Held past the next step's due time: the held step is overtaken, not sent late."""
    case: ScriptedCase = scripted_case(offsets=[0, 3], grace=1)

    def sms(req: MessageRequest, attempt: int) -> MessageResult:
        if req.step == 1:
            return MessageResult("quiet_hours", "night", retry_at=req.now + timedelta(hours=1))
        return MessageResult("sent", "", 1)

    case.sms = sms
    await case.start()
    result = await case.result()

    assert sent_steps(case, "sms") == [1, 2]  # step 1 tried once, then overtaken
    assert 3 <= case.offset(case.sends("sms", 2)[0].now) < 4
    assert lane(await case.status(), "sms") == [("skipped", OVERTAKEN), ("sent", "")]
    assert result["sms_sent"] == 1 and result["emails_sent"] == 2


async def test_a_window_opening_after_the_schedule_ends_skips_the_last_step(
    scripted_case: Any,
) -> None:
    case: ScriptedCase = scripted_case(offsets=[0], grace=2)
    case.sms = lambda req, attempt: MessageResult(
        "quiet_hours", "night", retry_at=req.now + timedelta(hours=1))
    await case.start()
    result = await case.result()

    assert sent_steps(case, "sms") == [1]
    assert lane(await case.status(), "sms") == [("skipped", SCHEDULE_ENDED)]
    assert result == {"outcome": "exhausted", "emails_sent": 1, "sms_sent": 0,
                      "credits_spent": 0}


# --- pause for credits and resume -----------------------------------------------------------


class Balance:
    """The scripted ledger: an SMS costs one credit; none left answers `no_credits`."""

    def __init__(self, credits: int = 0) -> None:
        self.credits = credits

    def send(self, req: MessageRequest, attempt: int) -> MessageResult:
        if self.credits < 1:
            return MessageResult("no_credits", f"needs 1 credits, balance is {self.credits}", 1)
        self.credits -= 1
        return MessageResult("sent", "", 1)


async def test_sms_pauses_at_zero_credits_and_credits_added_resumes_it(
    scripted_case: Any,
) -> None:
    case: ScriptedCase = scripted_case(offsets=[0, 6], grace=1)
    balance = Balance(0)
    case.sms = balance.send
    handle = await case.start()

    async def paused() -> bool:
        return bool((await case.status())["sms_paused"])

    await case.wait_until(paused, "SMS paused")
    await case.wait_until(lambda: case.sends("email", 1), "email step 1 sent")
    status = await case.status()
    assert "sms: paused at step 1, waiting for credits (needs 1 credits, balance is 0)" in (
        status["waiting_for"])
    assert lane(status, "sms")[0] == ("pending", "")
    assert (await handle.describe()).typed_search_attributes.get(SA_SMS_PAUSED) is True
    assert lane(status, "email")[0] == ("sent", "")  # email goes on while SMS waits

    balance.credits = 2
    await case.signal(SIGNAL_CREDITS_ADDED, {"balance": 2})
    await case.wait_until(lambda: len(case.sends("sms", 1)) == 2, "SMS step 1 retried")
    await case.wait_until(lambda: _not(paused), "SMS no longer paused")
    retried = case.sends("sms", 1)[1]
    assert case.offset(retried.now) < 6  # woken by the signal, not by the next step
    result = await case.result()

    assert lane(await case.status(), "sms") == [("sent", ""), ("sent", "")]
    assert result == {"outcome": "exhausted", "emails_sent": 2, "sms_sent": 2,
                      "credits_spent": 2}
    assert (await handle.describe()).typed_search_attributes.get(SA_SMS_PAUSED) is False


async def _not(predicate: Any) -> bool:
    return not await predicate()


async def test_paused_past_the_next_step_skips_the_stale_one(scripted_case: Any) -> None:
    """No credits ever come: each step waits until the next one is due, then is skipped with a
    reason; nothing is sent and the case ends unpaused."""
    case: ScriptedCase = scripted_case(offsets=[0, 3], grace=1)
    case.sms = Balance(0).send
    await case.start()
    result = await case.result()
    status = await case.status()

    assert sent_steps(case, "sms") == [1, 2]  # one try each: a wait, not a retry loop
    assert 3 <= case.offset(case.sends("sms", 2)[0].now) < 4
    assert lane(status, "sms") == [("skipped", OVERTAKEN), ("skipped", SCHEDULE_ENDED)]
    assert not status["sms_paused"]
    assert result == {"outcome": "exhausted", "emails_sent": 2, "sms_sent": 0,
                      "credits_spent": 0}


async def test_a_lost_credits_added_signal_is_made_up_by_the_hourly_recheck(
    scripted_case: Any,
) -> None:
    case: ScriptedCase = scripted_case(offsets=[0, 3 * 3600], grace=60)
    if not case.time_skipping:
        pytest.skip("needs an hour of workflow time: time-skipping server only")
    balance = Balance(0)
    case.sms = balance.send
    await case.start()
    await case.wait_until(lambda: case.sends("sms", 1), "SMS step 1 tried")
    balance.credits = 5  # topped up, but the signal never arrives
    await case.sleep(3600 + 5)
    await case.signal(SIGNAL_PAYMENT_RECOVERED)
    await case.result()

    _first, second = case.sends("sms", 1)
    assert 3600 <= case.offset(second.now) < 3601
    assert lane(await case.status(), "sms")[0] == ("sent", "")


async def test_credits_added_while_the_failing_send_runs_is_not_lost(
    scripted_case: Any,
) -> None:
    """The top-up's signal lands while the send that found no credits is still running: the
    lane retries at once instead of pausing until the next step (or the end of the grace)."""
    case: ScriptedCase = scripted_case(offsets=[0], grace=60)
    in_send, release = asyncio.Event(), asyncio.Event()

    async def sms(req: MessageRequest, attempt: int) -> MessageResult:
        if attempt == 1:  # the balance was empty; the top-up arrives before we answer
            in_send.set()
            await release.wait()
            return MessageResult("no_credits", "needs 1 credits, balance is 0", 1)
        return MessageResult("sent", "", 1)

    case.sms = sms
    await case.start()
    await asyncio.wait_for(in_send.wait(), 20)
    await case.signal(SIGNAL_CREDITS_ADDED, {"balance": 1})
    release.set()
    await case.wait_until(lambda: len(case.sends("sms", 1)) == 2, "SMS step 1 retried")
    await case.wait_until(
        lambda: _lane_is(case, "sms", [("sent", "")]), "SMS step 1 recorded as sent")
    status = await case.status()
    await case.signal(SIGNAL_PAYMENT_RECOVERED)
    result = await case.result()

    assert case.offset(case.sends("sms", 1)[1].now) < 60
    assert not status["sms_paused"]
    assert result["sms_sent"] == 1 and result["outcome"] == "recovered"


async def _lane_is(case: ScriptedCase, channel: str, expected: list[tuple[str, str]]) -> bool:
    return lane(await case.status(), channel) == expected


# --- the end of a case ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signal", "payload", "outcome", "pending_reason"),
    [
        (SIGNAL_PAYMENT_RECOVERED, {"amount": 4900}, "recovered", "case recovered"),
        (SIGNAL_CANCEL, {"reason": "invoice voided"}, "canceled",
         "case canceled: invoice voided"),
    ],
)
async def test_the_end_of_a_case_withdraws_a_queued_send(
    scripted_case: Any, signal: str, payload: dict[str, Any], outcome: str, pending_reason: str,
) -> None:
    """SMS step 1 is queued (not started) when the case ends: it is withdrawn and settled in
    the message log, never sent, even once the queue is served again."""
    case: ScriptedCase = scripted_case(offsets=[0, 5], grace=1)
    await case.start(hold_sms=True)
    await case.wait_until(lambda: case.sends("email", 1), "email step 1 sent")

    async def sms_queued() -> bool:
        return "sms: sending step 1" in (await case.status())["waiting_for"]

    await case.wait_until(sms_queued, "SMS step 1 queued")
    await case.signal(signal, payload)
    result = await case.result()
    status = await case.status()

    interrupted = f"case {outcome} before it was sent"
    assert [(r.step, r.channel, r.reason) for r in case.requests(ACT_SETTLE_MESSAGE)] == [
        (1, "sms", interrupted)]
    assert lane(status, "sms") == [("skipped", interrupted), ("skipped", pending_reason)]
    assert lane(status, "email") == [("sent", ""), ("skipped", pending_reason)]
    assert result == {"outcome": outcome, "emails_sent": 1, "sms_sent": 0, "credits_spent": 0}
    (finish,) = case.requests(ACT_FINISH_CASE)
    assert finish.outcome == outcome and finish.last_channel == "email"
    assert finish.recovered_amount == (4900 if outcome == "recovered" else 0)

    await case.release_sms_queue()
    await asyncio.sleep(0.5)
    assert case.sends("sms") == []


async def test_the_case_is_exhausted_after_the_last_step_and_the_grace_period(
    scripted_case: Any,
) -> None:
    case: ScriptedCase = scripted_case(offsets=[0, 2], grace=3)
    await case.start()
    result = await case.result()
    status = await case.status()

    (finish,) = case.requests(ACT_FINISH_CASE)
    assert 5 <= case.offset(finish.ended_at) < 6  # last step at 2s, then 3s of grace
    assert finish.outcome == "exhausted" and finish.recovered_amount == 0
    assert result == {"outcome": "exhausted", "emails_sent": 2, "sms_sent": 2,
                      "credits_spent": 2}
    assert status["state"] == "exhausted" and status["next_reminder_at"] is None
    assert status["waiting_for"] == "case: exhausted"
    assert case.requests(ACT_SETTLE_MESSAGE) == [] and case.requests(ACT_RELEASE_SMS) == []


async def test_a_payment_in_the_grace_period_still_recovers(scripted_case: Any) -> None:
    case: ScriptedCase = scripted_case(offsets=[0], grace=30)
    await case.start()

    async def in_grace() -> bool:
        return "case: waiting: grace period" in (await case.status())["waiting_for"]

    await case.wait_until(in_grace, "the case waits out its grace period")
    await case.signal(SIGNAL_PAYMENT_RECOVERED, {"amount": 1200})
    result = await case.result()

    (finish,) = case.requests(ACT_FINISH_CASE)
    assert case.offset(finish.ended_at) < 30
    assert finish.outcome == "recovered" and finish.recovered_amount == 1200
    assert result == {"outcome": "recovered", "emails_sent": 1, "sms_sent": 1,
                      "credits_spent": 1}


# --- failures -------------------------------------------------------------------------------


async def test_a_provider_that_keeps_failing_records_failed_and_releases_the_credits(
    scripted_case: Any,
) -> None:
    case: ScriptedCase = scripted_case(offsets=[0], grace=1)

    def sms(req: MessageRequest, attempt: int) -> MessageResult:
        raise ApplicationError("carrier rejected the number", non_retryable=True)

    case.sms = sms
    await case.start()
    result = await case.result()
    status = await case.status()

    (released,) = case.requests(ACT_RELEASE_SMS)
    assert released.step == 1 and "carrier rejected the number" in released.reason
    ((state, reason),) = lane(status, "sms")
    assert state == "failed" and reason.startswith("provider kept failing: ")
    assert lane(status, "email") == [("sent", "")]
    assert result == {"outcome": "exhausted", "emails_sent": 1, "sms_sent": 0,
                      "credits_spent": 0}


@pytest.mark.parametrize(
    ("fields", "error"),
    [({"amount_due": 0}, "invalid input: amount_due: must be greater than zero"),
     ({}, "unknown account: acct1")],
)
async def test_a_bad_case_fails_at_once_and_sends_nothing(
    scripted_case: Any, fields: dict[str, Any], error: str
) -> None:
    case: ScriptedCase = scripted_case(offsets=[0], grace=1)
    if not fields:
        case.plan_error = "unknown account: acct1"
    await case.start(**fields)
    with pytest.raises(WorkflowFailureError) as failure:
        await case.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "InvalidInput" and cause.message == error
    assert cause.non_retryable
    assert len(case.requests(ACT_REGISTER_CASE)) == (0 if fields else 1)
    assert case.sends("email") == [] and case.sends("sms") == []
    assert case.requests(ACT_FINISH_CASE) == []


# --- the status query -----------------------------------------------------------------------


async def test_the_status_query_shows_each_reminder_and_what_the_lanes_wait_for(
    scripted_case: Any,
) -> None:
    case: ScriptedCase = scripted_case(offsets=[0, 4, 8], grace=2)
    await case.start()

    async def step_one_done() -> bool:
        status = await case.status()
        return bool(status["emails_sent"] == 1 and status["sms_sent"] == 1)

    await case.wait_until(step_one_done, "step 1 sent on both channels")
    status = await case.status()
    due = [(case.failed_at + timedelta(seconds=o)).isoformat() for o in (0, 4, 8)]

    assert status["state"] == "active" and not status["sms_paused"]
    assert status["next_reminder_at"] == due[1]
    assert status["waiting_for"] == (
        f"email: waiting: step 2 due {due[1]} | sms: waiting: step 2 due {due[1]}")
    assert status["reminders"] == [
        {"step": step, "channel": channel, "status": "sent" if step == 1 else "pending",
         "reason": "", "due_at": due[step - 1]}
        for step in (1, 2, 3) for channel in ("email", "sms")
    ]
    assert (status["emails_sent"], status["sms_sent"], status["credits_spent"]) == (1, 1, 1)

    await case.result()
    final = await case.status()
    assert final["state"] == "exhausted" and final["next_reminder_at"] is None
    assert {r["status"] for r in final["reminders"]} == {"sent"}
    assert (final["emails_sent"], final["sms_sent"], final["credits_spent"]) == (3, 3, 3)


async def test_a_woken_case_is_not_shown_paused_while_its_send_runs(scripted_case: Any) -> None:
    """Once `credits_added` wakes the lane the case is no longer paused, even before the retried
    send answers (it may wait its turn behind the SMS rate limit)."""
    case: ScriptedCase = scripted_case(offsets=[0], grace=60)
    retrying, release = asyncio.Event(), asyncio.Event()

    async def sms(req: MessageRequest, attempt: int) -> MessageResult:
        if attempt == 1:
            return MessageResult("no_credits", "needs 1 credits, balance is 0", 1)
        retrying.set()
        await release.wait()
        return MessageResult("sent", "", 1)

    case.sms = sms
    await case.start()

    async def paused() -> bool:
        return bool((await case.status())["sms_paused"])

    await case.wait_until(paused, "SMS paused")
    await case.signal(SIGNAL_CREDITS_ADDED)
    await asyncio.wait_for(retrying.wait(), 20)
    status = await case.status()
    release.set()
    await case.wait_until(
        lambda: _lane_is(case, "sms", [("sent", "")]), "SMS step 1 recorded as sent")
    await case.signal(SIGNAL_PAYMENT_RECOVERED)
    result = await case.result()

    assert not status["sms_paused"]
    assert "sms: sending step 1" in status["waiting_for"]
    assert lane(status, "sms") == [("pending", "")]
    assert result["sms_sent"] == 1


async def test_a_send_running_when_the_case_ends_finishes_and_counts(
    real_time_scripted_case: Any,
) -> None:
    """The case ends while SMS step 1 is with the provider: the send is not cut off, its own
    result is recorded (nothing to settle), and the later step is skipped."""
    case: ScriptedCase = real_time_scripted_case(offsets=[0, 30], grace=1)
    in_send, release = asyncio.Event(), asyncio.Event()

    async def sms(req: MessageRequest, attempt: int) -> MessageResult:
        in_send.set()
        await release.wait()
        return MessageResult("sent", "", 1)

    case.sms = sms
    await case.start()
    await asyncio.wait_for(in_send.wait(), 20)
    await case.signal(SIGNAL_PAYMENT_RECOVERED)

    async def recovered() -> bool:
        return bool((await case.status())["state"] == "recovered")

    await case.wait_until(recovered, "the case took the signal in")
    release.set()
    result = await case.result()
    status = await case.status()

    assert case.requests(ACT_SETTLE_MESSAGE) == []
    assert lane(status, "sms") == [("sent", ""), ("skipped", "case recovered")]
    assert result["outcome"] == "recovered"
    assert (result["sms_sent"], result["credits_spent"]) == (1, 1)
    assert len(case.sends("sms")) == 1
