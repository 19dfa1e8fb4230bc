"""DunningWorkflow: one durable workflow per failed payment.

Read top to bottom, this is the whole reminder logic:
1. Validate the argument (a bad one fails the case at once, naming the field) and register the
   case, which returns the account's schedule.
2. Run two lanes side by side, email and SMS. Each sleeps until its next step is due, then asks an
   activity to send. A step that is overtaken by a later due step (a late start, a long pause) is
   skipped with that reason: customers never get a burst of stale reminders.
3. The SMS lane pauses when the account has no credits (`SmsPaused` = true) and waits for a
   `credits_added` signal, re-checking periodically so no wake-up is ever lost; email goes on.
   Quiet hours in the recipient's time zone hold an SMS back the same way.
4. `payment_recovered` or `cancel` ends the case at once: lanes check before every send. After the
   last step and the grace period the outcome is `exhausted`.

No I/O here: every side effect is an activity, referenced by name. Metrics go through
`workflow.metric_meter()` and logs through `workflow.logger`, both silent while a history is
replayed, so nothing is counted or logged twice.

Changing this workflow: cases run for weeks, and a worker replays a running case's history
through the code it has NOW. Any change to the commands a case issues (activities, timers,
search attributes, their order or count) must keep the old path for cases already running:
branch with `if workflow.patched("short-change-id"): <new> else: <old>`, deploy, and once no
case started before the deploy is open, switch to `workflow.deprecate_patch("short-change-id")`
and finally drop the old branch. tests/test_replay.py replays recorded histories of the current
workflow (tests/histories/) and fails on a change that breaks them; re-record them
(tests/histories/record.py) only when a change is patched this way.
"""


import asyncio
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from dunning.domain.contract import (
        ACT_FINISH_CASE,
        ACT_REGISTER_CASE,
        ACT_RELEASE_SMS,
        ACT_SEND_EMAIL,
        ACT_SEND_SMS,
        ACT_SETTLE_MESSAGE,
        QUERY_STATUS,
        SA_ACCOUNT_ID,
        SA_CUSTOMER_ID,
        SA_SMS_PAUSED,
        SA_STATE,
        SEND_GIVE_UP,
        SEND_RETRY,
        SIGNAL_CANCEL,
        SIGNAL_CREDITS_ADDED,
        SIGNAL_PAYMENT_RECOVERED,
        WORKFLOW_TYPE,
        CaseInput,
        CasePlan,
        FinishCaseRequest,
        InputError,
        MessageRequest,
        MessageResult,
        RegisterCaseRequest,
        ReleaseRequest,
        Reminder,
        SettleRequest,
        currency_rules_agree,
        parse_case_input,
        sms_task_queue,
    )
    from dunning.domain.outbound import (
        ACT_CAMPAIGN_FOR_CASE,
        ACT_END_ACTION,
        ACT_RECORD_EVENTS,
        CampaignRequest,
        CampaignSnapshot,
        CaseEvent,
        EndActionRequest,
        EndActionResult,
        RecordEventsRequest,
        scrub,
    )
    from dunning.platform import metrics

# Bookkeeping: quick database writes as local activities (no extra round trip through the
# server), retried until the database answers.
BOOKKEEPING_TIMEOUT = timedelta(seconds=30)
BOOKKEEPING_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1),
                                maximum_interval=timedelta(minutes=1))
# Sends: transient provider failures are retried with backoff for up to a day, then given up
# (SEND_RETRY, SEND_GIVE_UP in dunning.domain.contract). A killed worker's send is noticed by
# the heartbeat timeout and retried soon.
SEND_TIMEOUT = timedelta(seconds=60)
SEND_HEARTBEAT = timedelta(seconds=15)
# Versioning: behaviour changes go behind workflow.patched(...) so running cases replay.
PATCH_END_CANCELS_SENDS = "end-cancels-queued-sends"
PATCH_RESUME_CLEARS_PAUSED = "resume-clears-sms-paused"
PATCH_SIGNAL_ACCOUNT = "signals-name-their-account"
# Currencies in any case (`usd`), stored upper case, checked against ISO 4217.
PATCH_ISO_CURRENCY = "iso-currency"
PATCH_OUTBOUND_EVENTS = "outbound-events"
PATCH_CAMPAIGN_SNAPSHOT = "campaign-snapshot"
# Fewer round trips per case, same guarantees: events wait while a send is under way (or the
# case is ending) and go out in one batch, the last ones riding on finish_case; the campaign
# snapshot comes back with register_case; the end action is a local activity.
PATCH_BATCHED = "batched-bookkeeping"
EVENTS_HOLD = timedelta(seconds=30)  # the longest a held event waits for its batch
CREDITS_RECHECK = timedelta(hours=1)  # safety net for a lost `credits_added` signal


@workflow.defn(name=WORKFLOW_TYPE)
class DunningWorkflow:
    def __init__(self) -> None:
        self._outcome: str | None = None
        self._outcome_reason = ""
        self._recovered_amount = 0
        self._credits_seq = 0
        self._sms_paused = False
        self._waiting_for = "starting"
        self._lanes: dict[str, str] = {}
        self._interrupted: list[tuple[int, str]] = []
        self._due: list[datetime] = []
        self._end_at: datetime | None = None
        self._reminders: dict[tuple[int, str], Reminder] = {}
        self._lanes_done = 0
        self._emails_sent = self._sms_sent = self._credits_spent = 0
        self._last_channel: str | None = None
        self._amount_due = 0
        self._account_id: str | None = None
        self._currency = ""
        self._failed_at = datetime.min
        self._counters: dict[str, Any] = {}
        self._arm: str | None = None
        self._sms_variant: str | None = None
        # Outbound events (dunning.events): emitted in order, recorded by one flusher.
        self._events_on = False
        self._outbox: list[CaseEvent] = []
        self._events_closing = False
        self._flusher: asyncio.Task[None] | None = None
        self._batched = False
        self._sending = 0  # sends under way (events wait for them, up to EVENTS_HOLD)
        self._event_ids: dict[str, str] = {}
        self._pauses = 0
        self._end_action: EndActionResult | None = None
        self._campaign: CampaignSnapshot | None = None

    # --- the case, top to bottom -----------------------------------------------------------

    @workflow.run
    async def run(self, raw: dict[str, Any]) -> dict[str, Any]:
        case = self._parse(raw)
        # Asked before the first command, so every replay meets the markers where the first run
        # put them (a patch asked between local activities fails queries after an eviction).
        use_campaign = workflow.patched(PATCH_CAMPAIGN_SNAPSHOT)
        self._events_on = workflow.patched(PATCH_OUTBOUND_EVENTS)
        self._batched = use_campaign and self._events_on and workflow.patched(PATCH_BATCHED)
        failed_at = self._failed_at = case.failed_at or workflow.now()
        workflow.upsert_search_attributes([
            SA_ACCOUNT_ID.value_set(case.account_id),
            SA_CUSTOMER_ID.value_set(case.customer_id),
            SA_STATE.value_set("active"),
            SA_SMS_PAUSED.value_set(False),
        ])
        plan: CasePlan = await workflow.execute_local_activity(
            ACT_REGISTER_CASE,
            RegisterCaseRequest(
                workflow.info().workflow_id, case.account_id, case.customer_id, case.invoice_id,
                case.amount_due, case.currency, failed_at, case.customer_email,
                case.customer_name, case.plan, case.billing_link, with_campaign=self._batched,
            ),
            result_type=CasePlan,
            start_to_close_timeout=BOOKKEEPING_TIMEOUT,
            retry_policy=BOOKKEEPING_RETRY,
        )
        if plan.error:
            raise ApplicationError(plan.error, type="InvalidInput", non_retryable=True)
        self._arm = plan.arm  # state only (no command): shown by the status query
        self._sms_variant = plan.sms_variant
        if use_campaign:
            # The plan's campaign as it is now: kept in this history, never re-read.
            snapshot = plan.campaign if self._batched and plan.campaign else (
                await workflow.execute_local_activity(
                    ACT_CAMPAIGN_FOR_CASE,
                    CampaignRequest(case.account_id, case.customer_id, case.plan or None),
                    result_type=CampaignSnapshot,
                    start_to_close_timeout=BOOKKEEPING_TIMEOUT,
                    retry_policy=BOOKKEEPING_RETRY,
                )
            )
            if snapshot.found:
                self._campaign = snapshot
                plan = CasePlan(list(snapshot.offsets), snapshot.grace_seconds)
            if snapshot.excluded:  # no reminder: the case ends at once, saying why
                self._outcome = "canceled"
                self._outcome_reason = "the customer is excluded from dunning by the operator"
        self._count(metrics.CASES_STARTED)
        if self._events_on:
            self._event_ids = {"customer_id": case.customer_id, "invoice_id": case.invoice_id}
            self._flusher = asyncio.create_task(self._flush_events(case.account_id))
            self._emit("case.started", "case.started", {
                "amount_due": case.amount_due, "currency": case.currency,
                "plan": case.plan or None, "failed_at": failed_at.isoformat(),
                "steps": len(plan.offsets),
                "campaign": self._campaign.plan if self._campaign else None,
            })
        workflow.logger.info("case started: %s steps, failed at %s", len(plan.offsets),
                             failed_at.isoformat())

        self._due = [failed_at + timedelta(seconds=o) for o in plan.offsets]
        self._end_at = self._due[-1] + timedelta(seconds=plan.grace_seconds)
        for step, due in enumerate(self._due, start=1):
            for channel in ("email", "sms"):
                self._reminders[(step, channel)] = Reminder(
                    step, channel, "pending", "", due.isoformat()
                )

        lanes = [
            asyncio.create_task(self._lane(case, "email")),
            asyncio.create_task(self._lane(case, "sms")),
        ]
        await workflow.wait_condition(lambda: self._outcome is not None or self._lanes_done == 2)
        if self._outcome is None and await self._sleep_until(
            self._end_at, "case", "grace period: the schedule is done, a payment may come"
        ):
            self._outcome = "exhausted"
        if self._lanes_done < 2 and workflow.patched(PATCH_END_CANCELS_SENDS):
            # Recovered or canceled: no queued send may start now (one waiting behind the SMS
            # rate limit would otherwise go out after the signal). Sends already running finish.
            for lane in lanes:
                lane.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
            for step, channel in self._interrupted:
                settled: MessageResult = await workflow.execute_local_activity(
                    ACT_SETTLE_MESSAGE,
                    SettleRequest(workflow.info().workflow_id, step, channel,
                                  f"case {self._outcome} before it was sent"),
                    result_type=MessageResult,
                    start_to_close_timeout=BOOKKEEPING_TIMEOUT,
                    retry_policy=BOOKKEEPING_RETRY,
                )
                self._record(step, channel, settled.status, settled.reason, settled.credits)
        await asyncio.gather(*lanes, return_exceptions=True)
        return await self._finish(case)

    async def _lane(self, case: CaseInput, channel: str) -> None:
        """One channel's reminders, step by step."""
        step, retrying = 1, False
        while step <= len(self._due):
            if not await self._sleep_until(
                self._due[step - 1], channel, f"step {step} due {self._due[step - 1].isoformat()}"
            ):
                break
            overtaken = self._overtaken(step, retrying) or self._campaign_skips(step, channel)
            if overtaken:
                self._record(step, channel, "skipped", overtaken)
                step, retrying = step + 1, False
                continue
            credits_seen = self._credits_seq
            result = await self._send(case, step, channel)
            if result.status == "no_credits":
                await self._wait_for_credits(step, result.reason, credits_seen)
                retrying = True
                continue
            if result.status == "quiet_hours":
                # Held (the recipient's quiet hours, one conversation per customer, an operator
                # pause): the pending reminder says why, and the case tries again then.
                assert result.retry_at is not None
                # State only (no command): the status query shows why, and the window used.
                self._reminders[(step, channel)].reason = f"held: {result.reason}"
                await self._sleep_until(
                    min(result.retry_at, self._next_due(step)), channel,
                    f"step {step} held until {result.retry_at.isoformat()}: {result.reason}",
                )
                retrying = True
                continue
            if channel == "sms":
                self._set_paused(False)
            self._record(step, channel, result.status, result.reason, result.credits)
            step, retrying = step + 1, False
        if channel == "sms":
            self._set_paused(False)
        self._describe(channel, "no more reminders")
        self._lanes_done += 1

    async def _wait_for_credits(self, step: int, reason: str, seq: int) -> None:
        """Pause the SMS lane until credits are added, the next step is due, or the case ends.
        `seq` is the `credits_added` count from before the send that found no credits: a top-up
        signalled while that send was under way retries at once (no lost wake-up)."""
        if self._credits_seq != seq:
            return
        self._set_paused(True)
        self._describe("sms", f"paused at step {step}, waiting for credits ({reason})")
        deadline = min(self._next_due(step), workflow.now() + CREDITS_RECHECK)
        try:
            await workflow.wait_condition(
                lambda: self._outcome is not None or self._credits_seq != seq,
                timeout=max(timedelta(0), deadline - workflow.now()),
            )
        except TimeoutError:
            return  # re-check: a lost signal never leaves a case paused for good
        if self._outcome is None and workflow.patched(PATCH_RESUME_CLEARS_PAUSED):
            # Woken (a wake set its credits aside): no longer paused, even while its send
            # waits its turn behind the provider's rate limit. Paused again if still short.
            self._set_paused(False)

    async def _send(self, case: CaseInput, step: int, channel: str) -> MessageResult:
        request = MessageRequest(
            workflow.info().workflow_id, case.account_id, case.customer_id, case.invoice_id,
            step, len(self._due), case.amount_due, case.currency, case.billing_link,
            self._failed_at, workflow.now(),
            case.plan, case.decline_code,
        )
        self._describe(channel, f"sending step {step}")
        self._sending += 1
        try:
            return await workflow.execute_activity(
                ACT_SEND_EMAIL if channel == "email" else ACT_SEND_SMS,
                request,
                task_queue=(
                    sms_task_queue(workflow.info().task_queue) if channel == "sms" else None
                ),
                result_type=MessageResult,
                start_to_close_timeout=SEND_TIMEOUT,
                heartbeat_timeout=SEND_HEARTBEAT,
                schedule_to_close_timeout=SEND_GIVE_UP,
                retry_policy=SEND_RETRY,
                # When the case ends, a queued send is withdrawn; a running one finishes.
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        except asyncio.CancelledError:
            self._interrupted.append((step, channel))
            raise
        except ActivityError as err:
            if self._outcome is not None and isinstance(err.cause, CancelledError):
                self._interrupted.append((step, channel))
                raise asyncio.CancelledError() from None
            reason = f"provider kept failing: {err.cause or err}"[:300]
            if channel == "sms":
                await workflow.execute_activity(
                    ACT_RELEASE_SMS, ReleaseRequest(request.workflow_id, step, reason),
                    start_to_close_timeout=BOOKKEEPING_TIMEOUT, retry_policy=BOOKKEEPING_RETRY,
                )
            return MessageResult("failed", reason)
        finally:
            self._sending -= 1

    async def _finish(self, case: CaseInput) -> dict[str, Any]:
        outcome = self._outcome or "exhausted"
        for reminder in self._reminders.values():
            if reminder.status == "pending":
                reminder.status = "skipped"
                reminder.reason = f"case {outcome}" + (
                    f": {self._outcome_reason}" if self._outcome_reason else ""
                )
                self._count(metrics.REMINDERS, 1, channel=reminder.channel, outcome="skipped")
        self._set_paused(False)
        self._count(metrics.CASES_FINISHED, outcome=outcome)
        if outcome == "recovered":
            self._count(metrics.RECOVERIES)
            self._count(metrics.RECOVERED_AMOUNT, self._recovered_amount,
                        currency=self._currency)
        workflow.logger.info(
            "case %s: %s emails, %s SMS, %s credits", outcome, self._emails_sent, self._sms_sent,
            self._credits_spent,
        )
        workflow.upsert_search_attributes([SA_STATE.value_set(outcome)])
        self._lanes = {}
        self._describe("case", outcome)
        if self._events_on and outcome == "exhausted":
            self._end_action = await self._take_end_action(case)
            self._describe("case", outcome)  # state only: the action is done
        if self._events_on:
            self._emit(f"case.{outcome}", "case.ended", {
                **({"end_action": self._end_action.as_json()} if self._end_action else {}),
                "emails_sent": self._emails_sent, "sms_sent": self._sms_sent,
                "credits_spent": self._credits_spent,
                "recovered_amount": self._recovered_amount if outcome == "recovered" else 0,
                "currency": self._currency,
                **({"reason": scrub(self._outcome_reason)} if self._outcome_reason else {}),
            })
            await self._close_events()
        last_events, self._outbox = self._outbox, []  # batched: the flusher left them to us
        await workflow.execute_local_activity(
            ACT_FINISH_CASE,
            FinishCaseRequest(
                workflow.info().workflow_id, case.account_id, outcome, self._emails_sent,
                self._sms_sent, self._credits_spent, workflow.now(),
                self._recovered_amount if outcome == "recovered" else 0, self._last_channel,
                last_events,
            ),
            start_to_close_timeout=BOOKKEEPING_TIMEOUT,
            retry_policy=BOOKKEEPING_RETRY,
        )
        return {
            "outcome": outcome,
            "emails_sent": self._emails_sent,
            "sms_sent": self._sms_sent,
            "credits_spent": self._credits_spent,
        }

    # --- signals and query ----------------------------------------------------------------

    @workflow.signal(name=SIGNAL_PAYMENT_RECOVERED)
    async def payment_recovered(self, payload: dict[str, Any] | None = None) -> None:
        if not await self._is_for_this_case(SIGNAL_PAYMENT_RECOVERED, payload):
            return
        if self._outcome is None:
            self._outcome = "recovered"
            amount = (payload or {}).get("amount")
            self._recovered_amount = amount if isinstance(amount, int) else self._amount_due

    @workflow.signal(name=SIGNAL_CANCEL)
    async def cancel(self, payload: dict[str, Any] | None = None) -> None:
        if not await self._is_for_this_case(SIGNAL_CANCEL, payload):
            return
        if self._outcome is None:
            self._outcome = "canceled"
            self._outcome_reason = str((payload or {}).get("reason") or "")[:200]

    @workflow.signal(name=SIGNAL_CREDITS_ADDED)
    async def credits_added(self, payload: dict[str, Any] | None = None) -> None:
        if not await self._is_for_this_case(SIGNAL_CREDITS_ADDED, payload):
            return
        self._credits_seq += 1

    async def _is_for_this_case(self, name: str, payload: Any) -> bool:
        """A signal naming an account (`{"account_id": ...}`) acts only on that account's case;
        one meant for another account (a mistaken or forged id) is ignored and logged. Signals
        without an account act as before."""
        account = payload.get("account_id") if isinstance(payload, dict) else None
        if account is None:
            return True
        if self._account_id is None:  # signalled before the run parsed its argument
            await workflow.wait_condition(lambda: self._account_id is not None)
        if account == self._account_id or not workflow.patched(PATCH_SIGNAL_ACCOUNT):
            return True
        workflow.logger.warning("%s ignored: it was meant for another account", name)
        return False

    @workflow.query(name=QUERY_STATUS)
    def status(self) -> dict[str, Any]:
        pending = [r.due_at for r in self._reminders.values() if r.status == "pending"]
        return {
            "state": self._outcome or "active",
            "sms_paused": self._sms_paused,
            "next_reminder_at": min(pending) if pending and self._outcome is None else None,
            "waiting_for": self._waiting_for,
            "reminders": [
                r.as_json() for _, r in sorted(self._reminders.items(), key=lambda kv: kv[0])
            ],
            "emails_sent": self._emails_sent,
            "sms_sent": self._sms_sent,
            "credits_spent": self._credits_spent,
            "experiment": (
                {"sms_holdout": self._arm, "sms_template": self._sms_variant}
                if self._arm or self._sms_variant else None
            ),
            **({"end_action": self._end_action.as_json()} if self._end_action else {}),
            **({"campaign": self._campaign.as_json()} if self._campaign else {}),
        }

    # --- helpers ----------------------------------------------------------------------------

    def _parse(self, raw: Any) -> CaseInput:
        try:
            # The patch is asked only when the two currency rules would differ (`usd`, `XYZ`):
            # an upper-case ISO code is taken alike by both, and records no marker.
            iso = currency_rules_agree(raw) or workflow.patched(PATCH_ISO_CURRENCY)
            case = parse_case_input(raw, iso_currency=iso)
        except InputError as err:
            raise ApplicationError(
                f"invalid input: {err}", {"field": err.field}, type="InvalidInput",
                non_retryable=True,
            ) from None
        self._amount_due = case.amount_due
        self._account_id = case.account_id
        self._currency = case.currency
        return case

    async def _sleep_until(self, when: datetime, lane: str, why: str) -> bool:
        """Sleep until `when` or until the case ends; True if the case is still active."""
        delay = when - workflow.now()
        if delay > timedelta(0) and self._outcome is None:
            self._describe(lane, f"waiting: {why}")
            try:
                await workflow.wait_condition(lambda: self._outcome is not None, timeout=delay)
            except TimeoutError:
                pass
        return self._outcome is None

    def _next_due(self, step: int) -> datetime:
        """When step `step` stops being the latest due one: the next step, or the case's end."""
        assert self._end_at is not None
        return self._due[step] if step < len(self._due) else self._end_at

    def _overtaken(self, step: int, retrying: bool) -> str:
        """Why step `step` is no longer worth sending ('' if it still is)."""
        if step < len(self._due):
            return "a later reminder was already due" if self._due[step] <= workflow.now() else ""
        assert self._end_at is not None
        if retrying and workflow.now() >= self._end_at:
            return "the schedule ended before it could be sent"
        return ""

    def _campaign_skips(self, step: int, channel: str) -> str:
        """Why the case's campaign leaves this SMS step out ('' if it does not)."""
        campaign = self._campaign
        if channel != "sms" or campaign is None or campaign.sms_steps is None:
            return ""
        if step in campaign.sms_steps:
            return ""
        return f"SMS is off for step {step} in the {campaign.plan!r} campaign"

    def _record(self, step: int, channel: str, status: str, reason: str, credits: int = 0) -> None:
        self._reminders[(step, channel)] = Reminder(
            step, channel, status, reason,  # type: ignore[arg-type]
            self._reminders[(step, channel)].due_at,
        )
        if status == "sent":
            self._last_channel = channel
            if channel == "email":
                self._emails_sent += 1
            else:
                self._sms_sent += 1
        self._count(metrics.REMINDERS, channel=channel, outcome=status)
        if status in ("sent", "failed", "skipped"):
            self._emit(f"reminder.{status}", f"reminder:{step}:{channel}", {
                "step": step, "channel": channel,
                **({"reason": scrub(reason)} if reason and status != "sent" else {}),
            })
        if channel == "sms" and status in ("sent", "failed") and credits:
            self._credits_spent += credits
            self._count(metrics.CREDITS_SPENT, credits)

    def _set_paused(self, paused: bool) -> None:
        if paused != self._sms_paused:
            self._sms_paused = paused
            workflow.upsert_search_attributes([SA_SMS_PAUSED.value_set(paused)])
            self._count(metrics.SMS_PAUSES if paused else metrics.SMS_RESUMES)
            if paused:
                self._pauses += 1
            self._emit("sms.paused" if paused else "sms.resumed",
                       f"sms.{'paused' if paused else 'resumed'}:{self._pauses}", {})
            workflow.logger.info("SMS %s", "paused: waiting for credits" if paused
                                 else "resumed")

    def _emit(self, event_type: str, key: str, data: dict[str, Any]) -> None:
        """Queue an outbound event (dunning.events) for the flusher; only on the patched path."""
        if self._events_on and not self._events_closing:
            self._outbox.append(
                CaseEvent(key, event_type, workflow.now(), {**self._event_ids, **data})
            )

    async def _flush_events(self, account_id: str) -> None:
        """Record queued events, in emission order, batch by batch (one local activity each);
        keys make a retried batch idempotent. Batched (patch `batched-bookkeeping`): a batch waits
        while a send is under way or the case is ending (up to EVENTS_HOLD), and what is left
        when the case ends rides on finish_case."""
        info = workflow.info()
        while True:
            await workflow.wait_condition(lambda: bool(self._outbox) or self._events_closing)
            if self._batched and not self._events_closing and not self._flush_now():
                try:
                    await workflow.wait_condition(
                        lambda: self._events_closing or self._flush_now(), timeout=EVENTS_HOLD
                    )
                except TimeoutError:
                    pass  # held long enough (a send retrying through an outage): record them
            if not self._outbox or (self._batched and self._events_closing):
                return
            batch, self._outbox = self._outbox, []
            await workflow.execute_local_activity(
                ACT_RECORD_EVENTS,
                RecordEventsRequest(info.workflow_id, info.run_id, account_id, batch),
                start_to_close_timeout=BOOKKEEPING_TIMEOUT,
                retry_policy=BOOKKEEPING_RETRY,
            )

    def _flush_now(self) -> bool:
        """Batched: record the queued events now, or let them wait for the next ones (a send
        under way will add its outcome; an ending case records them with its end)?"""
        return (bool(self._outbox) and self._sending == 0 and self._outcome is None
                and self._lanes_done < 2)

    async def _take_end_action(self, case: CaseInput) -> EndActionResult:
        """The account's end-of-dunning action through Stripe (dunning.cases.end_actions):
        once, retried with backoff while Stripe is unreachable, for up to a day."""
        self._describe("case", "taking the end-of-dunning action")
        request = EndActionRequest(
            workflow.info().workflow_id, case.account_id, case.invoice_id,
            self._campaign.on_exhausted if self._campaign else None,
        )
        # Batched: a local activity (most accounts have none: no round trip through the server
        # to learn that); retried with backoff as before, the same idempotency key at Stripe.
        run = workflow.execute_local_activity if self._batched else workflow.execute_activity
        try:
            result: EndActionResult = await run(
                ACT_END_ACTION,
                request,
                result_type=EndActionResult,
                start_to_close_timeout=SEND_TIMEOUT,
                schedule_to_close_timeout=SEND_GIVE_UP,
                retry_policy=SEND_RETRY,
            )
        except ActivityError as err:
            return EndActionResult("unknown", "failed", None,
                                   f"gave up: {err.cause or err}"[:300])
        return result

    async def _close_events(self) -> None:
        self._events_closing = True
        if self._flusher is not None:
            await self._flusher

    def _count(self, name: str, value: int = 1, **attributes: str) -> None:
        """Add to one of the engine's counters (see dunning.platform.metrics); replay-aware."""
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = workflow.metric_meter().create_counter(
                name, metrics.DESCRIPTIONS[name]
            )
        if value > 0:
            counter.add(value, attributes or None)

    def _describe(self, lane: str, text: str) -> None:
        """What each lane is doing, in words: the query's `waiting_for` and the UI's details."""
        self._lanes[lane] = text
        self._waiting_for = " | ".join(f"{k}: {v}" for k, v in sorted(self._lanes.items()))
        workflow.set_current_details(self._waiting_for)
