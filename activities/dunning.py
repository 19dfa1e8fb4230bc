"""The activities: Temporal glue over the message log (dunning.messages.log) and the recipient
rules (dunning.messages.recipients): attempt info, heartbeats and error mapping.

Exactly once per (case, step, channel): the `messages` table is the idempotency record.
1. A send first looks for its row. A finished row (sent, failed, skipped, unknown) is returned as
   recorded, so retries and replays never send again.
2. Otherwise, in one transaction, it checks eligibility, reserves credits (SMS) and claims the
   row. The unique key (workflow, run, step, channel) makes a racing attempt lose. On
   PostgreSQL an SMS's debit, its ledger row and the claim are one statement sent with the
   COMMIT (`_claim_paid`), so the account row is locked only while the server runs them; a
   debit that crosses a notice level or the refill threshold, or a case waiting for credits,
   starts over in a new transaction and takes the locked path (`_reserve`) instead.
3. It calls the provider, then records the outcome in a second transaction.

The one ambiguous window is a crash between 2 and 3 (or a provider timeout or dropped line):
the provider may or may not have taken the message. It is settled, not guessed:
- the provider's answer, once received, is kept in the heartbeat details before it is recorded,
  so a retry after a failed "mark sent" write records `sent` (`_keep_answer`);
- an SMS found `claimed` is looked up in the delivery reports (a report adopts its uuid onto
  the row its callback URL names) and in Plivo's message list (dunning.messages.reconcile):
  found, `sent`; not found after the settling window, back to `retry` and sent once;
- an email found `claimed` is sent again under the same Message-ID (bounded, then `unknown`).
A transient provider error (5xx, 429, refused connection) proves nothing was taken: the row goes
back to `retry` and Temporal retries with backoff, reusing the same credit reservation; the last
attempt before the give-up records it `failed` with the provider's reason (credits back).

Provider rate: besides the SMS task queue's rate limit (which lets a burst through after an idle
spell), the claim's transaction takes the provider's send slot from `dunning.messages.pacing` (one
row in the database, shared by all workers), so provider calls are spaced at least 1/rate apart.
While it waits for the slot, its row is `retry` with the credits reserved: a crash there is simply
retried.

Hot path: the message log's statements are prebuilt Core statements, and the account, the
customer and the opt-out state come back in one query. A send heartbeats only when its database
part was slow enough to eat into the heartbeat timeout; otherwise the attempt's own start already
reset it. On SQLite, which lets one writer in at a time anyway, this process's transactions take
turns on a lock: SQLite's own busy handler sleeps in growing steps, and a burst of sends piles up
behind it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Insert, Table, bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from dunning.cases.campaigns import case_snapshot
from dunning.credits import ledger
from dunning.credits.followups import BalanceFollowups
from dunning.customers.customers import record_case_customer
from dunning.domain.contract import (
    ACT_FINISH_CASE,
    ACT_REGISTER_CASE,
    ACT_RELEASE_SMS,
    ACT_SEND_EMAIL,
    ACT_SEND_REPLY,
    ACT_SEND_SMS,
    ACT_SETTLE_MESSAGE,
    SEND_RETRY,
    CasePlan,
    FinishCaseRequest,
    MessageRequest,
    MessageResult,
    RegisterCaseRequest,
    ReleaseRequest,
    ReplyRequest,
    SettleRequest,
    billing_link_host,
    is_link_host_allowed,
    parse_link_hosts,
    parse_schedule,
)
from dunning.domain.experiments import assign_arm, assign_variant
from dunning.events import outbox
from dunning.messages import log as message_log
from dunning.messages import recipients, replies
from dunning.messages.links import LinkSigner, short_link_for
from dunning.messages.log import (
    Claim,
    ConcurrentSend,
    LoggedRow,
    MessageKey,
    SendLater,
    Unsettled,
    note,
)
from dunning.messages.pacing import SendPacer
from dunning.messages.reconcile import AMBIGUOUS_WINDOWS, SKEW, decide, utc
from dunning.platform import metrics
from dunning.platform.db import (
    Database,
    PreparedStatementLost,
    commits_in_one_trip,
    insert_for,
)
from dunning.platform.db.models import Account, Case, Customer, utcnow
from dunning.platform.providers import ProviderError, mask_email, mask_phone
from dunning.platform.providers.email import EmailProvider, OutgoingEmail
from dunning.platform.providers.sms import OutgoingSms, SmsProvider, SmsRecords, has_records

# A send heartbeats before the provider call only when this share of its heartbeat timeout has
# already gone by (a slow database); on the fast path the attempt's start is only just behind it.
HEARTBEAT_AFTER_SHARE = 0.1
# An email found `claimed` (a send whose answer was lost) is sent again under the same Message-ID
# at most this many times; after that it is recorded `unknown`.
MAX_EMAIL_RESENDS = 2
# A claim younger than this may still be inside its provider call (the provider's timeout plus a
# margin): an ambiguous row is settled only once its claim is older.
DEFAULT_SETTLE_AFTER = 12.0
# Heartbeat details of a provider's answer: {"row": messages.id, "provider_id": uuid or Message-ID}
ANSWER_ROW, ANSWER_ID = "row", "provider_id"

# --- case bookkeeping statements, built once ----------------------------------------------

log = logging.getLogger("dunning.activities")

_A = cast(Table, Account.__table__)
_C = cast(Table, Customer.__table__)
_CASES = cast(Table, Case.__table__)

_ACCOUNT_PLAN = select(
    _A.c.schedule, _A.c.grace_seconds, _A.c.billing_link_hosts, _A.c.sms_holdout_percent,
    _A.c.sms_ab_percent,
).where(_A.c.id == bindparam("p_account"))

_CASE_ARM = select(_CASES.c.arm, _CASES.c.sms_variant).where(
    _CASES.c.workflow_id == bindparam("a_workflow")
)

_FINISH_CASE = (
    update(_CASES)
    .where(_CASES.c.workflow_id == bindparam("f_workflow"))
    .values(
        state=bindparam("f_state"), ended_at=bindparam("f_ended_at"),
        emails_sent=bindparam("f_emails"), sms_sent=bindparam("f_sms"),
        credits_spent=bindparam("f_credits"), recovered_amount=bindparam("f_recovered"),
        last_channel=bindparam("f_channel"),
    )
)


def _case_insert(dialect: str) -> Insert:
    """The case row, inserted unless a retried registration already did."""
    return cast(Insert, insert_for(dialect)(_CASES).on_conflict_do_nothing(
        index_elements=[_CASES.c.workflow_id]))


_CASE_INSERTS: dict[str, Insert] = {}


def _key(req: MessageRequest, channel: str) -> MessageKey:
    info = activity.info()
    return MessageKey(req.workflow_id, info.workflow_run_id or "", req.step, channel)


def _heartbeat_if_slow(started: float) -> None:
    """Before a provider call: heartbeat if the attempt has run long enough that its heartbeat
    timeout (counted from the attempt's start) might expire during the call."""
    info = activity.info()
    timeout = info.heartbeat_timeout
    if timeout is None:
        return
    elapsed = time.monotonic() - started
    if info.started_time is not None:  # the server's clock: covers time queued in the worker
        elapsed = max(elapsed, (datetime.now(info.started_time.tzinfo) - info.started_time)
                      .total_seconds())
    if elapsed >= timeout.total_seconds() * HEARTBEAT_AFTER_SHARE:
        _heartbeat()


def _heartbeat() -> None:
    """A heartbeat that keeps what an earlier attempt left in the details (a provider's answer
    not yet recorded), so a plain heartbeat never erases it."""
    activity.heartbeat(*activity.info().heartbeat_details)


def _keep_answer(row_id: int) -> Callable[[str], None]:
    """Keeps a provider's answer in the heartbeat details, which Temporal hands to the next
    attempt: a failed "mark sent" write is then recorded `sent` on retry, never `unknown`."""

    def keep(provider_id: str) -> None:
        activity.heartbeat({ANSWER_ROW: row_id, ANSWER_ID: provider_id})

    return keep


def _answer_kept(row_id: int) -> str | None:
    """The provider's answer an earlier attempt kept for this row, if any."""
    for detail in activity.info().heartbeat_details:
        if isinstance(detail, dict) and detail.get(ANSWER_ROW) == row_id:
            return str(detail.get(ANSWER_ID) or "")
    return None


def _is_last_attempt() -> bool:
    """Whether this is the last attempt Temporal starts: the attempts are used up, or the
    next backoffs end after the schedule-to-close deadline (the give-up)."""
    info = activity.info()
    policy = info.retry_policy
    if policy is None:  # servers that do not tell (the time-skipping test server): ours
        policy = SEND_RETRY
    if policy.maximum_attempts and info.attempt >= policy.maximum_attempts:
        return True
    if info.schedule_to_close_timeout is None:
        return False
    delay = policy.initial_interval.total_seconds() * (
        policy.backoff_coefficient ** (info.attempt - 1))
    if policy.maximum_interval is not None:
        delay = min(delay, policy.maximum_interval.total_seconds())
    deadline = info.scheduled_time + info.schedule_to_close_timeout
    # The server's clock (this attempt was scheduled just now), also under time skipping.
    now = max(datetime.now(deadline.tzinfo), info.current_attempt_scheduled_time)
    # Two intervals of margin: servers differ on whether a retry that would start just
    # before the deadline is still scheduled (the give-up comes at most that much early).
    return now + 2 * timedelta(seconds=delay) >= deadline


def _concurrent() -> ApplicationError:
    return ApplicationError("a concurrent attempt is sending this reminder")


class DunningActivities:
    """Activities bound to a database and the configured providers."""

    def __init__(
        self,
        db: Database,
        sms: SmsProvider,
        email: EmailProvider,
        *,
        public_url: str = "http://127.0.0.1:8000",
        default_email_from: str = "billing@localhost",
        pacer: SendPacer | None = None,
        followups: BalanceFollowups | None = None,
        links: LinkSigner | None = None,
        settle_after: float = DEFAULT_SETTLE_AFTER,
    ) -> None:
        self.db = db
        self.links = links  # None: billing links go out as given (no tracking)
        self.pacer = pacer
        self.settle_after = timedelta(seconds=settle_after)
        self.sms = sms
        self.email = email
        # Balance notices, auto-refills and their wakes (built by the worker; without one,
        # notices go through `email`, refills use the default gateways and nothing is woken).
        self.followups = followups or BalanceFollowups(
            db, email, default_sender=default_email_from
        )
        self.public_url = public_url.rstrip("/")
        self.default_email_from = default_email_from
        self._turns = threading.RLock() if db.dialect == "sqlite" else None

    @contextmanager
    def _session(self) -> Iterator[Session]:
        """One transaction (see the module's docstring for the SQLite turns)."""
        if self._turns is None:
            with self.db.session() as s:
                yield s
            return
        with self._turns, self.db.session() as s:
            yield s

    def all(self) -> list[Any]:
        """Activities of the case's own task queue (and of the compliance reply workflow)."""
        return [self.register_case, self.send_email, self.release_sms, self.finish_case,
                self.settle_message, self.send_reply]

    def sms_queue(self) -> list[Any]:
        """Activities of the rate-limited SMS task queue."""
        return [self.send_sms]

    # --- case bookkeeping -------------------------------------------------------------------

    @activity.defn(name=ACT_REGISTER_CASE)
    def register_case(self, req: RegisterCaseRequest) -> CasePlan:
        dialect = self.db.dialect
        if dialect not in _CASE_INSERTS:
            _CASE_INSERTS[dialect] = _case_insert(dialect)
        case_insert = _CASE_INSERTS[dialect]
        with self._session() as s:
            account = s.execute(_ACCOUNT_PLAN, {"p_account": req.account_id}).first()
            if account is None:
                return CasePlan([], 0, error=f"account_id: unknown account {req.account_id!r}")
            hosts = parse_link_hosts(account.billing_link_hosts or "")
            if req.billing_link and not is_link_host_allowed(req.billing_link, hosts):
                reason = (f"billing_link: host {billing_link_host(req.billing_link)!r} is not "
                          f"one of the account's billing link hosts ({', '.join(hosts)})")
                log.warning("case refused: %s", reason, extra={"case": req.workflow_id})
                return CasePlan([], 0, error=reason)
            now = utcnow()
            arm = assign_arm(req.workflow_id, account.sms_holdout_percent)
            variant = assign_variant(req.workflow_id, account.sms_ab_percent)
            record_case_customer(s, req.account_id, req.customer_id, email=req.customer_email,
                                 name=req.customer_name, plan=req.plan, now=now)
            s.execute(case_insert, {
                "workflow_id": req.workflow_id, "account_id": req.account_id,
                "customer_id": req.customer_id, "invoice_id": req.invoice_id,
                "amount_due": req.amount_due, "currency": req.currency,
                "failed_at": req.failed_at, "state": "active", "started_at": now, "arm": arm,
                "sms_variant": variant,
            })
            # A retry after a commit keeps the arm first recorded (insert-if-missing).
            recorded = s.execute(_CASE_ARM, {"a_workflow": req.workflow_id}).first()
            return CasePlan(parse_schedule(account.schedule), int(account.grace_seconds),
                            arm=recorded.arm if recorded else arm,
                            sms_variant=recorded.sms_variant if recorded else variant,
                            campaign=case_snapshot(s, req.account_id, req.customer_id, req.plan)
                            if req.with_campaign else None)

    @activity.defn(name=ACT_FINISH_CASE)
    def finish_case(self, req: FinishCaseRequest) -> None:
        with self._session() as s:
            if req.events:  # the case's last events, with its end (patch `batched-bookkeeping`)
                rows = outbox.case_event_rows(req.workflow_id, activity.info().workflow_run_id
                                              or "", req.events)
                outbox.record_case_events(s, req.account_id, req.workflow_id, rows)
            ledger.leave_queue(s, req.account_id, req.workflow_id, f"case {req.outcome}")
            # A send given up while its row was not final (e.g. the database was down on its
            # last attempt): the log ends final, credits back.
            message_log.close_open_rows(s, req.workflow_id, activity.info().workflow_run_id or "",
                                        req.outcome)
            s.execute(_FINISH_CASE, {
                "f_workflow": req.workflow_id, "f_state": req.outcome,
                "f_ended_at": req.ended_at, "f_emails": req.emails_sent, "f_sms": req.sms_sent,
                "f_credits": req.credits_spent, "f_recovered": req.recovered_amount,
                "f_channel": req.last_channel,
            })

    # --- email ------------------------------------------------------------------------------

    @activity.defn(name=ACT_SEND_EMAIL)
    def send_email(self, req: MessageRequest) -> MessageResult:
        started = time.monotonic()
        key = _key(req, "email")
        try:
            prepared = self._prepare_email(key, req)
        except IntegrityError:  # a concurrent attempt claimed it first; nothing of ours stuck
            return self._reread(key)
        except ConcurrentSend:
            raise _concurrent() from None
        if isinstance(prepared, MessageResult):
            return prepared
        claimed, outgoing = prepared
        _heartbeat_if_slow(started)
        return self._deliver(claimed, lambda: self.email.send(outgoing), refund=False)

    def _prepare_email(
        self, key: MessageKey, req: MessageRequest
    ) -> tuple[Claim, OutgoingEmail] | MessageResult:
        with self._session() as s:
            row = message_log.find(s, key)
            if row is not None and message_log.is_final(row):
                return message_log.recorded(row)
            if row is not None and row.status == "claimed":
                answer = self._answer_recorded(s, key, row)
                if answer is not None:
                    return answer
                if row.resends >= MAX_EMAIL_RESENDS:
                    return message_log.mark_unknown(s, key, row)
                self._wait_for_settling(row)
                # Its answer was lost: send it again under the same Message-ID, so a second
                # copy (if the first did arrive) is the same message to the mail client.
                row = message_log.unclaim(
                    s, row, "answer lost: sending again under the same Message-ID")
                note(logging.WARNING, "email answer lost: resending, same Message-ID", key)
            message_id = recipients.email_message_id(key.workflow_id, key.run_id, key.step)
            outgoing = recipients.email_for(s, req, message_id, self.default_email_from,
                                            self._link)
            if isinstance(outgoing, str):
                return message_log.skip(s, key, req.account_id, req.customer_id, outgoing)
            if isinstance(outgoing, MessageResult):  # held: nothing recorded, the case waits
                note(logging.INFO, "email held", key, reason=outgoing.reason)
                return outgoing
            claimed = message_log.claim(s, row, key, req.account_id, req.customer_id,
                                        mask_email(outgoing.to), credits=0)
        return claimed, outgoing

    # --- SMS --------------------------------------------------------------------------------

    @activity.defn(name=ACT_SEND_SMS)
    def send_sms(self, req: MessageRequest) -> MessageResult:
        started = time.monotonic()
        key = _key(req, "sms")
        try:
            prepared = self._prepare_sms(key, req)
        except (IntegrityError, _Settled):  # a concurrent attempt claimed or settled it first
            return self._reread(key)
        except ConcurrentSend:
            raise _concurrent() from None
        if isinstance(prepared, LoggedRow):  # a claim whose answer was lost
            settled = self._reconcile_sms(key, req, prepared)
            if settled is not None:
                return settled
            try:  # not at the provider: the row is `retry` again, send it once
                prepared = self._prepare_sms(key, req)
            except (IntegrityError, _Settled):
                return self._reread(key)
            except ConcurrentSend:
                raise _concurrent() from None
            if isinstance(prepared, LoggedRow):
                raise _concurrent()
        if isinstance(prepared, MessageResult):
            return prepared
        claimed, sms = prepared
        callback = f"{self.public_url}/webhooks/plivo/status?ref={claimed.id}"
        outgoing = OutgoingSms(sms.src, sms.dst, sms.text, callback)
        _heartbeat_if_slow(started)
        return self._deliver(claimed, lambda: self.sms.send(outgoing), refund=True)

    def _prepare_sms(
        self, key: MessageKey, req: MessageRequest
    ) -> tuple[Claim, OutgoingSms] | MessageResult | LoggedRow:
        """Eligibility, credits and the claim: the SMS to hand to the provider, or the result.
        First with the one-trip debit (PostgreSQL); a debit that needs the locked path starts
        over in a new transaction: the one-trip statement's COMMIT also released the customer
        row's lock, so the customer's checks (pause, one conversation per customer) are made
        again under it before anything is reserved or claimed. The same when the one-trip
        statement was no longer prepared on its connection (that transaction rolled back)."""
        try:
            return self._prepare_sms_in(key, req, one_trip=True)
        except (_LockedPath, PreparedStatementLost):
            return self._prepare_sms_in(key, req, one_trip=False)

    def _prepare_sms_in(
        self, key: MessageKey, req: MessageRequest, *, one_trip: bool
    ) -> tuple[Claim, OutgoingSms] | MessageResult | LoggedRow:
        with self._session() as s:
            row = message_log.find(s, key)
            if row is not None and message_log.is_final(row):
                return message_log.recorded(row)
            if row is not None and row.status == "claimed":
                answer = self._answer_recorded(s, key, row)
                if answer is not None:
                    return answer
                if not has_records(self.sms):
                    return message_log.mark_unknown(s, key, row)
                return row  # settled from the provider's records, outside this transaction
            plan = recipients.sms_for(s, req, self._link)
            if isinstance(plan, MessageResult):
                return self._not_now(s, key, req, row, plan)
            hint = mask_phone(plan.sms.dst)
            if row is None:
                # With a pacer the row is `retry`, credits reserved and provider not called
                # yet, and the claim below takes it over once a send slot is ours (a crash
                # meanwhile leaves a row the next attempt sends from, not an ambiguous one).
                paid = self._claim_paid(s, key, req, plan, hint) if one_trip else None
                if paid is not None:  # committed
                    if self.pacer is None:
                        return paid, plan.sms
                else:
                    waiting = self._reserve(s, key, req, plan.credits)
                    if waiting is not None:
                        return waiting
                    if self.pacer is not None:
                        row = message_log.hold(s, key, req.account_id, req.customer_id, hint,
                                               plan.credits, plan.segments, plan.encoding)
            if self.pacer is None:
                claimed = message_log.claim(
                    s, row, key, req.account_id, req.customer_id, hint, credits=plan.credits,
                    segments=plan.segments, encoding=plan.encoding,
                )
                return claimed, plan.sms
        return self._claim_slot(key, req, hint, plan.credits), plan.sms

    def _not_now(self, s: Session, key: MessageKey, req: MessageRequest,
                 row: LoggedRow | None, plan: MessageResult) -> MessageResult:
        """Not sending now (skipped, or held for quiet hours): if this case was queued for
        credits it leaves the queue, so it holds no one back (credits a wake granted it go back
        to the balance)."""
        ledger.leave_queue(s, req.account_id, req.workflow_id, plan.reason)
        if plan.status != "skipped":  # quiet hours: nothing recorded, the case waits
            note(logging.INFO, "SMS held for quiet hours", key, reason=plan.reason)
            return plan
        if row is not None:  # a `retry` row: e.g. opted out since the last try
            message_log.release(s, key, row.id, row.account_id, row.credits, plan.reason,
                                status="skipped")
            return plan
        return message_log.skip(s, key, req.account_id, req.customer_id, plan.reason)

    def _claim_paid(self, s: Session, key: MessageKey, req: MessageRequest,
                    plan: recipients.SmsPlan, hint: str) -> Claim | None:
        """PostgreSQL: the credits and the claim (or the held row) in one statement sent with
        the COMMIT, so the account row is locked only while the server runs it
        (`message_log.claim_paid`). None: not this way (another database, a free text, a case
        waiting in the credit queue: a woken one never matches it), and the send goes on
        through `_reserve` in this transaction. Raises _LockedPath when the statement changed
        nothing (the debit takes `ledger.reserve`'s locked path) but ended the transaction."""
        if plan.credits <= 0 or plan.queued or not commits_in_one_trip(s):
            return None
        paid = message_log.claim_paid(
            s, key, req.account_id, req.customer_id, hint, credits=plan.credits,
            segments=plan.segments, encoding=plan.encoding, hold=self.pacer is not None,
        )
        if paid is None:
            raise _LockedPath()
        reservation, claimed = paid
        self.followups.after_reserve(s, reservation)  # nothing due: that debit matched none
        return claimed

    def _reserve(self, s: Session, key: MessageKey, req: MessageRequest,
                 cost: int) -> MessageResult | None:
        """Reserve the SMS's credits; the `no_credits` result when the balance falls short."""
        # Fair: queues the case as a waiter on failure, dequeues it on success.
        reservation = ledger.reserve(
            s, req.account_id, cost, workflow_id=req.workflow_id, step=req.step, enqueue=True,
        )
        # Notices and auto-refill; never raises, acts after the commit.
        self.followups.after_reserve(s, reservation)
        if reservation.ok:
            return None
        held = " (held for cases waiting longer)" if reservation.balance >= cost else ""
        reason = f"needs {cost} credits, balance is {reservation.balance}{held}"
        note(logging.INFO, "SMS waiting for credits", key, reason=reason)
        return MessageResult("no_credits", reason, cost)

    def _claim_slot(self, key: MessageKey, req: MessageRequest, hint: str, cost: int) -> Claim:
        """The provider's rate, strict across every worker: the claim's transaction takes the
        send slot, and the provider call follows its commit."""
        assert self.pacer is not None
        while True:
            with self._session() as s:
                waited = message_log.find(s, key)
                if waited is None or waited.status != "retry":  # settled while we waited
                    raise _Settled()
                left = self.pacer.take(s)
                if not left:
                    return message_log.claim(s, waited, key, req.account_id, req.customer_id,
                                             hint, credits=cost)
            self.pacer.sleep(left, _heartbeat)

    def _link(self, s: Session, req: MessageRequest, channel: str, who: Any) -> str:
        """The billing link as sent: a tracked short link when the account wants one."""
        if self.links is None or not who.track_links:
            return req.billing_link
        return short_link_for(
            s, self.links, self.public_url, account_id=req.account_id,
            workflow_id=req.workflow_id, step=req.step, channel=channel,
            target=req.billing_link,
        )

    @activity.defn(name=ACT_RELEASE_SMS)
    def release_sms(self, req: ReleaseRequest) -> None:
        """The workflow gave up on a send that kept failing transiently: refund its credits."""
        key = MessageKey(req.workflow_id, activity.info().workflow_run_id or "", req.step, "sms")
        with self._session() as s:
            row = message_log.find(s, key)
            if row is not None and row.status == "retry":
                message_log.release(s, key, row.id, row.account_id, row.credits, req.reason)

    @activity.defn(name=ACT_SETTLE_MESSAGE)
    def settle_message(self, req: SettleRequest) -> MessageResult:
        """The case ended while this send was queued or retrying: report what the message log
        says. Never started: skipped. Waiting for a retry: released (credits back), skipped.
        A claim left by a killed worker: unknown, as everywhere else."""
        key = MessageKey(req.workflow_id, activity.info().workflow_run_id or "", req.step,
                         req.channel)
        with self._session() as s:
            row = message_log.find(s, key)
            if row is None:
                return MessageResult("skipped", req.reason)
            if message_log.is_final(row):
                return message_log.recorded(row)
            if row.status == "retry":
                message_log.release(s, key, row.id, row.account_id, row.credits, req.reason,
                                    status="skipped")
                return MessageResult("skipped", req.reason)
            return message_log.mark_unknown(s, key, row)

    # --- compliance replies ------------------------------------------------------------------

    @activity.defn(name=ACT_SEND_REPLY)
    def send_reply(self, req: ReplyRequest) -> MessageResult:
        """A HELP answer or STOP confirmation (workflows/reply.py), through the message log:
        claimed, sent, recorded; an earlier attempt's lost answer is settled as for a reminder."""
        with self._session() as s:
            prepared = replies.prepare(s, req.message_id, self.public_url)
        if isinstance(prepared, LoggedRow):
            settled = self._settle_reply(prepared)
            if settled is not None:
                return settled
            with self._session() as s:
                prepared = replies.prepare(s, req.message_id, self.public_url)
            if isinstance(prepared, LoggedRow):
                raise _concurrent()
        if isinstance(prepared, MessageResult):
            return prepared
        claimed, sms = prepared
        return self._deliver(claimed, lambda: self.sms.send(sms), refund=False)

    def _settle_reply(self, row: LoggedRow) -> MessageResult | None:
        """A reply claimed by an attempt whose answer was lost: its kept answer, a delivery
        report's uuid, or Plivo's list decide; None when it goes out again."""
        key = MessageKey("reply", str(row.id), 0, "sms")
        with self._session() as s:
            answer = self._answer_recorded(s, key, row)
            if answer is not None:
                return answer
            found = message_log.reply_to_send(s, row.id)
            if found is None or not has_records(self.sms):
                return message_log.mark_unknown(s, key, row)
            src, dst = found[1].src, found[1].dst
        since = utc(row.created_at) - SKEW
        try:
            records = cast(SmsRecords, self.sms).outbound_since(src, dst, since)
        except ProviderError as exc:
            raise ApplicationError(f"cannot settle the reply yet: {exc.reason}",
                                   type="Transient") from None
        with self._session() as s:
            taken = message_log.taken_provider_ids(s, [r.message_uuid for r in records])
            decision = decide(row.id, row.updated_at, [(row.id, row.created_at)], records, taken,
                              utcnow(), self.settle_after)
            if decision.action == "sent":
                message_log.mark_sent(s, row.id, decision.provider_id)
                return MessageResult("sent", "", 0)
            if decision.action == "resend":
                message_log.unclaim(s, row, decision.reason)
                return None
        raise ApplicationError(decision.reason, type="Settling", next_retry_delay=decision.delay)

    # --- shared steps ----------------------------------------------------------------------

    def _answer_recorded(self, s: Session, key: MessageKey,
                         row: LoggedRow) -> MessageResult | None:
        """A row an earlier attempt claimed and never recorded: sent, when that attempt kept
        the provider's answer (heartbeat details) or a delivery report named the row."""
        answer = _answer_kept(row.id)
        if answer is None and row.provider_id:
            answer = row.provider_id
        if answer is None:
            return None
        message_log.mark_sent(s, row.id, answer or None)
        note(logging.INFO, "reminder sent (recorded on retry)", key, credits=row.credits)
        return MessageResult("sent", "", row.credits)

    def _wait_for_settling(self, row: LoggedRow) -> None:
        """A claim younger than the settling window may still be inside its provider call
        (a slow attempt the server gave up on): try again once it has certainly ended."""
        age = utcnow() - utc(row.updated_at)
        if age < self.settle_after:
            raise ApplicationError(
                "an earlier attempt's send may still be under way", type="Settling",
                next_retry_delay=self.settle_after - age,
            )

    def _reconcile_sms(self, key: MessageKey, req: MessageRequest,
                       row: LoggedRow) -> MessageResult | None:
        """Settle an SMS whose answer was lost from the provider's message list (see
        dunning.messages.reconcile): the result when settled, None when it goes out again."""
        window = self.settle_after * AMBIGUOUS_WINDOWS + SKEW
        since = utc(row.created_at) - window
        with self._session() as s:
            who = recipients.recipient(s, req)
            if who is None or not who.sms_sender or not who.phone_e164:
                return message_log.mark_unknown(s, key, row)
            claims = message_log.open_sms_claims(s, req.account_id, req.customer_id, since)
        _heartbeat()
        try:
            records = cast(SmsRecords, self.sms).outbound_since(
                who.sms_sender, who.phone_e164, since - SKEW)
        except ProviderError as exc:
            raise ApplicationError(f"cannot settle the send yet: {exc.reason}",
                                   type="Transient") from None
        with self._session() as s:
            taken = message_log.taken_provider_ids(s, [r.message_uuid for r in records])
            current = message_log.find_by_id(s, row.id)
            if current is None or current.status != "claimed" or (
                    current.updated_at != row.updated_at):
                if current is not None and message_log.is_final(current):
                    return message_log.recorded(current)
                raise _concurrent()
            if current.provider_id:  # a delivery report named the row meanwhile
                return self._answer_recorded(s, key, current)
            decision = decide(row.id, row.updated_at, claims, records, taken, utcnow(),
                              self.settle_after)
            if decision.action == "sent":
                message_log.mark_sent(s, row.id, decision.provider_id)
                note(logging.INFO, "ambiguous send found at the provider: sent", key,
                     credits=row.credits)
                return MessageResult("sent", "", row.credits)
            if decision.action == "unknown":
                return message_log.mark_unknown(s, key, row, decision.reason)
            if decision.action == "resend":
                message_log.unclaim(s, row, decision.reason)
                note(logging.WARNING, "ambiguous send not at the provider: sending once", key)
                return None
        raise ApplicationError(decision.reason, type="Settling",
                               next_retry_delay=decision.delay)

    def _reread(self, key: MessageKey) -> MessageResult:
        with self._session() as s:
            row = message_log.find(s, key)
            if row is None or not message_log.is_final(row):
                raise _concurrent()
            return message_log.recorded(row)

    def _deliver(self, claimed: Claim, call: Callable[[], str], *, refund: bool) -> MessageResult:
        """The provider call and its record (dunning.messages.log.deliver), as Temporal sees
        it: a provider that refused for now is a retryable `Transient` failure."""
        try:
            return message_log.deliver(
                self._session, claimed, call, refund=refund,
                on_accepted=_keep_answer(claimed.id),
                keep_ambiguous=claimed.key.channel == "email" or has_records(self.sms),
            )
        except Unsettled as exc:
            raise ApplicationError(
                f"provider answer lost: {exc.reason}", type="Unsettled",
                next_retry_delay=self.settle_after,
            ) from None
        except SendLater as exc:
            if _is_last_attempt():  # no retry would start before the give-up: end it here
                with self._session() as s:
                    row = message_log.find_by_id(s, claimed.id)
                    if row is not None and row.status == "retry":
                        return message_log.give_up(s, claimed.key, row, exc.reason)
            activity.metric_meter().create_counter(
                metrics.PROVIDER_RETRIES, metrics.DESCRIPTIONS[metrics.PROVIDER_RETRIES]
            ).add(1, {"channel": claimed.key.channel})
            raise ApplicationError(
                f"provider unavailable: {exc.reason}", type="Transient"
            ) from None


class _LockedPath(Exception):
    """The one-trip debit did not match and its COMMIT ended the transaction: start over."""


class _Settled(Exception):
    """The row stopped waiting for a send slot (settled by someone else) while we waited."""
