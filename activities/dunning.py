"""The activities: every side effect of a dunning case lives here, behind small named functions.

Exactly once per (case, step, channel): the `messages` table is the idempotency record.
1. A send first looks for its row. A finished row (sent, failed, skipped, unknown) is returned as
   recorded, so retries and replays never send again.
2. Otherwise, in one transaction, it checks eligibility, reserves credits (SMS) and inserts the
   row as `claimed`. The unique key (workflow, run, step, channel) makes a racing attempt lose.
3. It calls the provider, then records the outcome in a second transaction.

The one ambiguous window is a crash between 2 and 3 (or a provider timeout): the provider may or
may not have taken the message. Policy: at most once. The next attempt finds the row `claimed`,
marks it `unknown` and does not send again; the credits stay spent (the provider may have
billed) and a later delivery report for the message (its callback URL carries the row id) settles
it. A transient provider error (5xx, 429, refused connection) proves nothing was taken: the row
goes back to `retry` and Temporal retries with backoff, reusing the same credit reservation.

Provider rate: besides the SMS task queue's rate limit (which lets a burst through after an idle
spell), the claim's transaction takes the provider's send slot from `dunning.messages.pacing` (one
row in
the database, shared by all workers), so provider calls are spaced at least 1/rate apart. While
it waits for the slot, its row is `retry` with the credits reserved: a crash there is simply
retried.

Hot path: the statements a send runs on every reminder are built once, at import, as Core
statements with bind parameters (no ORM unit of work, no per-call statement construction), and
the account, the customer and the opt-out state come back in one query. A send heartbeats only
when its database part was slow enough to eat into the heartbeat timeout; otherwise the attempt's
own start already reset it. On SQLite, which lets one writer in at a time anyway, this process's
transactions take turns on a lock: SQLite's own busy handler sleeps in growing steps, and a burst
of sends piles up behind it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    CursorResult,
    Insert,
    Table,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from dunning.accounts import selectors
from dunning.accounts.messaging import (
    case_context,
    compose_email,
    email_template_choice,
    quote_sms,
    sms_template_choice,
)
from dunning.credits import ledger
from dunning.credits.followups import BalanceFollowups
from dunning.customers import conversation
from dunning.domain.contract import (
    ACT_FINISH_CASE,
    ACT_REGISTER_CASE,
    ACT_RELEASE_SMS,
    ACT_SEND_EMAIL,
    ACT_SEND_SMS,
    ACT_SETTLE_MESSAGE,
    CasePlan,
    FinishCaseRequest,
    MessageRequest,
    MessageResult,
    RegisterCaseRequest,
    ReleaseRequest,
    SettleRequest,
    billing_link_host,
    is_link_host_allowed,
    parse_link_hosts,
    parse_schedule,
)
from dunning.domain.experiments import assign_arm, assign_variant
from dunning.domain.locales import locale_chain
from dunning.domain.quiet_hours import next_allowed, recipient_window, zones_for
from dunning.domain.templates import TemplateContext, render_sms
from dunning.messages.links import LinkSigner, short_link_for
from dunning.messages.pacing import SendPacer
from dunning.platform import metrics
from dunning.platform.db import Database
from dunning.platform.db.models import Account, Case, Customer, Message, OptOut, utcnow
from dunning.platform.providers import (
    AmbiguousProviderError,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
    mask_email,
    mask_phone,
)
from dunning.platform.providers.email import EmailProvider, OutgoingEmail
from dunning.platform.providers.sms import OutgoingSms, SmsProvider

log = logging.getLogger("dunning.activities")

FINAL = ("sent", "failed", "skipped", "unknown")
UNKNOWN_REASON = (
    "outcome unknown: the worker stopped or the provider timed out during the send; "
    "not resent, to avoid a duplicate"
)
# A send heartbeats before the provider call only when this share of its heartbeat timeout has
# already gone by (a slow database); on the fast path the attempt's start is only just behind it.
HEARTBEAT_AFTER_SHARE = 0.1

# --- statements, built once ---------------------------------------------------------------

_M = cast(Table, Message.__table__)
_A = cast(Table, Account.__table__)
_C = cast(Table, Customer.__table__)
_O = cast(Table, OptOut.__table__)
_CASES = cast(Table, Case.__table__)

_FIND = select(
    _M.c.id, _M.c.status, _M.c.reason, _M.c.credits, _M.c.account_id,
).where(
    _M.c.workflow_id == bindparam("k_workflow"),
    _M.c.run_id == bindparam("k_run"),
    _M.c.step == bindparam("k_step"),
    _M.c.channel == bindparam("k_channel"),
)

# The account, the customer and (for SMS) the number's opt-out state, in one round trip.
_RECIPIENT = (
    select(
        _A.c.company_name, _A.c.support_contact, _A.c.email_from, _A.c.sms_enabled,
        _A.c.sms_steps, _A.c.sms_sender, _A.c.quiet_hours, _A.c.timezone,
        _A.c.locale.label("account_locale"), _A.c.track_links,
        _C.c.customer_id, _C.c.name, _C.c.email, _C.c.plan, _C.c.phone_e164,
        _C.c.phone_region, _C.c.phone_time_zones, _C.c.locale.label("customer_locale"),
        _O.c.opted_out,
    )
    .select_from(
        _A.outerjoin(
            _C, and_(_C.c.account_id == _A.c.id, _C.c.customer_id == bindparam("r_customer"))
        ).outerjoin(
            _O, and_(_O.c.account_id == _A.c.id, _O.c.phone_e164 == _C.c.phone_e164)
        )
    )
    .where(_A.c.id == bindparam("r_account"))
)

_ACCOUNT_PLAN = select(
    _A.c.schedule, _A.c.grace_seconds, _A.c.billing_link_hosts, _A.c.sms_holdout_percent,
    _A.c.sms_ab_percent,
).where(_A.c.id == bindparam("p_account"))

_CASE_ARM = select(_CASES.c.arm, _CASES.c.sms_variant).where(
    _CASES.c.workflow_id == bindparam("a_workflow")
)
_AB_TEMPLATE = select(_A.c.sms_ab_template).where(_A.c.id == bindparam("b_account"))

_INSERT_MESSAGE = insert(_M)

_CLAIM_RETRY = (
    update(_M)
    .where(_M.c.id == bindparam("u_id"), _M.c.status == "retry")
    .values(status="claimed", attempts=_M.c.attempts + 1, updated_at=bindparam("u_now"))
)

_SET_OUTCOME = (
    update(_M)
    .where(_M.c.id == bindparam("u_id"))
    .values(
        status=bindparam("u_status"), reason=bindparam("u_reason"),
        updated_at=bindparam("u_now"),
    )
)

_MARK_SENT = (
    update(_M)
    .where(_M.c.id == bindparam("u_id"))
    .values(
        status="sent", reason=None, provider_id=bindparam("u_provider_id"),
        updated_at=bindparam("u_now"),
    )
)

_BACK_TO_RETRY = (
    update(_M)
    .where(_M.c.id == bindparam("u_id"), _M.c.status == "claimed")
    .values(status="retry", reason=bindparam("u_reason"), updated_at=bindparam("u_now"))
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


def _upserts(dialect: str) -> tuple[Insert, Insert]:
    """(customer upsert, case insert-if-missing) for a dialect with INSERT ... ON CONFLICT."""
    ins = postgresql.insert if dialect == "postgresql" else sqlite.insert
    customer = ins(_C).values(
        account_id=bindparam("c_account"), customer_id=bindparam("c_customer"),
        email=bindparam("c_email"), name=bindparam("c_name"), plan=bindparam("c_plan"),
        source="case", updated_at=bindparam("c_now"),
    )
    new = customer.excluded
    changed = [
        and_(new[c].is_not(None), new[c].is_distinct_from(_C.c[c]))
        for c in ("email", "name", "plan")
    ]
    customer_upsert = customer.on_conflict_do_update(
        index_elements=[_C.c.account_id, _C.c.customer_id],
        set_={
            "email": func.coalesce(new.email, _C.c.email),
            "name": func.coalesce(new.name, _C.c.name),
            "plan": func.coalesce(new.plan, _C.c.plan),
            "updated_at": new.updated_at,
        },
        where=or_(*changed),  # a case repeating what is known writes nothing
    )
    case_insert = ins(_CASES).on_conflict_do_nothing(index_elements=[_CASES.c.workflow_id])
    return customer_upsert, case_insert


_UPSERTS: dict[str, tuple[Insert, Insert]] = {}


# --- small records ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    workflow_id: str
    run_id: str
    step: int
    channel: str

    def params(self) -> dict[str, Any]:
        return {"k_workflow": self.workflow_id, "k_run": self.run_id, "k_step": self.step,
                "k_channel": self.channel}


@dataclass(frozen=True)
class _Row:
    """The parts of a `messages` row a retry needs."""

    id: int
    status: str
    reason: str | None
    credits: int
    account_id: str


@dataclass(frozen=True)
class _Claimed:
    """A row this attempt holds as `claimed`: what recording the outcome needs."""

    id: int
    key: _Key
    account_id: str
    credits: int
    hint: str  # the masked recipient, for logs


def _log(level: int, message: str, key: _Key, **fields: Any) -> None:
    """A structured line about one reminder (see dunning.platform.logs); recipients only masked."""
    if log.isEnabledFor(level):
        log.log(level, message, extra={
            "case": key.workflow_id, "step": key.step, "channel": key.channel, **fields,
        })


def _key(req: MessageRequest, channel: str) -> _Key:
    info = activity.info()
    return _Key(req.workflow_id, info.workflow_run_id or "", req.step, channel)


def _find(session: Session, key: _Key) -> _Row | None:
    row = session.execute(_FIND, key.params()).first()
    if row is None:
        return None
    return _Row(int(row.id), row.status, row.reason, int(row.credits or 0), row.account_id)


def _recorded(row: _Row) -> MessageResult:
    status = row.status
    if status == "unknown":
        return MessageResult("failed", row.reason or UNKNOWN_REASON, row.credits)
    return MessageResult(status, row.reason or "", row.credits if status == "sent" else 0)  # type: ignore[arg-type]


def _sms_step_on(sms_enabled: bool | None, sms_steps: dict[str, Any] | None, step: int) -> bool:
    """As `Account.sms_step_on`, on the columns of a query row."""
    if not sms_enabled:
        return False
    return bool((sms_steps or {}).get(str(step), True))


def _context(recipient: Any, req: MessageRequest, link: str) -> TemplateContext:
    """The template variables, from a `_RECIPIENT` row, in the customer's locale."""
    return case_context(
        company_name=recipient.company_name,
        support_contact=recipient.support_contact or recipient.email_from or "",
        customer_name=recipient.name, amount_due=req.amount_due, currency=req.currency,
        invoice_id=req.invoice_id, billing_link=link, failed_at=req.failed_at, now=req.now,
        locale=recipient.customer_locale or recipient.account_locale,
        decline_code=req.decline_code or "",
    )


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
        activity.heartbeat()


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
    ) -> None:
        self.db = db
        self.links = links  # None: billing links go out as given (no tracking)
        self.pacer = pacer
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
        """Activities of the case's own task queue."""
        return [self.register_case, self.send_email, self.release_sms, self.finish_case,
                self.settle_message]

    def sms_queue(self) -> list[Any]:
        """Activities of the rate-limited SMS task queue."""
        return [self.send_sms]

    # --- case bookkeeping -------------------------------------------------------------------

    @activity.defn(name=ACT_REGISTER_CASE)
    def register_case(self, req: RegisterCaseRequest) -> CasePlan:
        dialect = self.db.dialect
        if dialect not in _UPSERTS:
            _UPSERTS[dialect] = _upserts(dialect)
        customer_upsert, case_insert = _UPSERTS[dialect]
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
            s.execute(customer_upsert, {
                "c_account": req.account_id, "c_customer": req.customer_id,
                "c_email": req.customer_email or None, "c_name": req.customer_name or None,
                "c_plan": req.plan or None, "c_now": now,
            })
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
                            sms_variant=recorded.sms_variant if recorded else variant)

    @activity.defn(name=ACT_FINISH_CASE)
    def finish_case(self, req: FinishCaseRequest) -> None:
        with self._session() as s:
            ledger.leave_queue(s, req.account_id, req.workflow_id, f"case {req.outcome}")
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
        if isinstance(prepared, MessageResult):
            return prepared
        claimed, outgoing = prepared
        _heartbeat_if_slow(started)
        return self._deliver(claimed, lambda: self.email.send(outgoing), refund=False)

    def _prepare_email(
        self, key: _Key, req: MessageRequest
    ) -> tuple[_Claimed, OutgoingEmail] | MessageResult:
        with self._session() as s:
            row = _find(s, key)
            if row is not None and row.status in FINAL:
                return _recorded(row)
            if row is not None and row.status == "claimed":
                return self._mark_unknown(s, key, row)
            who = s.execute(
                _RECIPIENT, {"r_account": req.account_id, "r_customer": req.customer_id}
            ).first()
            if who is None:
                return self._skip(s, key, req, "account no longer exists")
            if who.customer_id is None or not who.email:
                return self._skip(s, key, req, "no email address for this customer")
            held = conversation.hold_for(s, req.account_id, req.customer_id, "email",
                                         req.workflow_id, req.now)
            if held is not None:  # nothing recorded: the case waits and tries again
                _log(logging.INFO, "email held", key, reason=held.reason)
                return MessageResult("quiet_hours", held.reason, retry_at=held.until)
            chosen = email_template_choice(
                s, req.account_id, req.step,
                selectors.plan_for(s, req.account_id, "email", req.plan or who.plan,
                                   req.decline_code),
                step_count=req.step_count,
                locale=who.customer_locale, account_locale=who.account_locale,
            )
            ctx = conversation.with_open_cases(
                s, _context(who, req, self._link(s, req, "email", who)),
                (chosen.subject, chosen.body, chosen.html or ""), req.account_id, req.customer_id,
            )
            email = compose_email(chosen, ctx)
            outgoing = OutgoingEmail(
                sender=who.email_from or self.default_email_from,
                to=who.email,
                subject=email.subject,
                body=email.text,
                html=email.html,
                message_id=(  # `:` is not allowed in a Message-ID's left part
                    f"<{key.workflow_id.replace(':', '.')}.{key.run_id[:8]}.{key.step}@dunning>"
                ),
            )
            claimed = self._claim(s, row, key, req, mask_email(who.email), credits=0)
        return claimed, outgoing

    # --- SMS --------------------------------------------------------------------------------

    @activity.defn(name=ACT_SEND_SMS)
    def send_sms(self, req: MessageRequest) -> MessageResult:
        started = time.monotonic()
        key = _key(req, "sms")
        try:
            with self._session() as s:
                row = _find(s, key)
                if row is not None and row.status in FINAL:
                    return _recorded(row)
                if row is not None and row.status == "claimed":
                    return self._mark_unknown(s, key, row)
                plan = self._sms_for(s, req)
                if isinstance(plan, MessageResult):
                    # Not sending now (skipped, or held for quiet hours): if this case was
                    # queued for credits it leaves the queue, so it holds no one back (credits
                    # a wake granted it go back to the balance).
                    ledger.leave_queue(s, req.account_id, req.workflow_id, plan.reason)
                    if plan.status != "skipped":  # quiet hours: nothing recorded, the case waits
                        _log(logging.INFO, "SMS held", key, reason=plan.reason)
                        return plan
                    if row is not None:  # a `retry` row: e.g. opted out since the last try
                        self._release(s, key, row.id, row.account_id, row.credits, plan.reason,
                                      status="skipped")
                        return plan
                    return self._skip(s, key, req, plan.reason)
                sms, cost, segments, encoding = plan
                if row is None:
                    # Fair: queues the case as a waiter on failure, dequeues it on success.
                    reservation = ledger.reserve(
                        s, req.account_id, cost, workflow_id=req.workflow_id, step=req.step,
                        enqueue=True,
                    )
                    # Notices and auto-refill; never raises, acts after the commit.
                    self.followups.after_reserve(s, reservation)
                    if not reservation.ok:
                        held = (" (held for cases waiting longer)"
                                if reservation.balance >= cost else "")
                        reason = f"needs {cost} credits, balance is {reservation.balance}{held}"
                        _log(logging.INFO, "SMS waiting for credits", key, reason=reason)
                        return MessageResult("no_credits", reason, cost)
                if self.pacer is not None and row is None:
                    # Credits reserved, provider not called yet: a `retry` row, which the claim
                    # below takes over once a send slot is ours (a crash meanwhile leaves a
                    # row the next attempt sends from, not an ambiguous one).
                    row = self._hold(s, key, req, mask_phone(sms.dst), cost, segments, encoding)
                if self.pacer is None:
                    claimed = self._claim(
                        s, row, key, req, mask_phone(sms.dst), credits=cost, segments=segments,
                        encoding=encoding,
                    )
            while self.pacer is not None:
                # The provider's rate, strict across every worker: the claim's transaction
                # takes the send slot, and the provider call follows its commit.
                with self._session() as s:
                    waited = _find(s, key)
                    if waited is None or waited.status != "retry":  # settled while we waited
                        return self._reread(key)
                    left = self.pacer.take(s)
                    if not left:
                        claimed = self._claim(s, waited, key, req, mask_phone(sms.dst),
                                              credits=cost)
                        break
                self.pacer.sleep(left, activity.heartbeat)
        except IntegrityError:  # a concurrent attempt claimed it first; nothing of ours stuck
            return self._reread(key)
        callback = f"{self.public_url}/webhooks/plivo/status?ref={claimed.id}"
        outgoing = OutgoingSms(sms.src, sms.dst, sms.text, callback)
        _heartbeat_if_slow(started)
        return self._deliver(claimed, lambda: self.sms.send(outgoing), refund=True)

    def _sms_for(
        self, s: Session, req: MessageRequest
    ) -> tuple[OutgoingSms, int, int, str] | MessageResult:
        """The SMS to send now, or why not (skipped, or quiet hours with the time to retry)."""
        who = s.execute(
            _RECIPIENT, {"r_account": req.account_id, "r_customer": req.customer_id}
        ).first()
        if who is None:
            return MessageResult("skipped", "account no longer exists")
        if not who.sms_enabled:
            return MessageResult("skipped", "SMS is off for this account")
        if not _sms_step_on(who.sms_enabled, who.sms_steps, req.step):
            return MessageResult("skipped", f"SMS is off for step {req.step}")
        if not who.sms_sender:
            return MessageResult("skipped", "the account has no SMS sender number")
        if who.customer_id is None or not who.phone_e164:
            return MessageResult("skipped", "no valid phone number for this customer")
        if who.opted_out:
            return MessageResult("skipped", "the number opted out (STOP)")
        experiment = s.execute(_CASE_ARM, {"a_workflow": req.workflow_id}).first()
        if experiment is not None and experiment.arm == "holdout":
            return MessageResult("skipped", "SMS holdout: this case gets email only (experiment)")
        held = conversation.hold_for(s, req.account_id, req.customer_id, "sms",
                                     req.workflow_id, req.now)
        if held is not None:
            return MessageResult("quiet_hours", held.reason, retry_at=held.until)
        zones = zones_for(who.phone_time_zones, who.timezone)
        window = recipient_window(who.quiet_hours, who.phone_e164)
        opens = next_allowed(req.now, window.window, zones)
        if opens > req.now:
            return MessageResult(
                "quiet_hours",
                f"quiet hours for the recipient ({window.describe()}) until {opens.isoformat()}",
                retry_at=opens,
            )
        chosen = sms_template_choice(
            s, req.account_id,
            selectors.plan_for(s, req.account_id, "sms", req.plan or who.plan, req.decline_code),
            step=req.step, step_count=req.step_count,
            locale=who.customer_locale, account_locale=who.account_locale,
        )
        if experiment is not None and experiment.sms_variant == "B":
            template_b = s.execute(_AB_TEMPLATE, {"b_account": req.account_id}).scalar()
            if template_b:  # the A/B test's template B, in the account's own language
                chosen = dataclasses.replace(
                    chosen, body=template_b, chain=locale_chain(None, who.account_locale)
                )
        link = self._link(s, req, "sms", who)
        ctx = conversation.with_open_cases(
            s, _context(who, req, link), (chosen.body,), req.account_id, req.customer_id
        )
        text = render_sms(chosen.body, ctx, chosen.chain)
        quote = quote_sms(s, req.account_id, who.phone_region, text)
        sms = OutgoingSms(who.sms_sender, who.phone_e164, text)
        return sms, quote.credits, quote.segments, quote.encoding

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
        key = _Key(req.workflow_id, activity.info().workflow_run_id or "", req.step, "sms")
        with self._session() as s:
            row = _find(s, key)
            if row is not None and row.status == "retry":
                self._release(s, key, row.id, row.account_id, row.credits, req.reason)

    @activity.defn(name=ACT_SETTLE_MESSAGE)
    def settle_message(self, req: SettleRequest) -> MessageResult:
        """The case ended while this send was queued or retrying: report what the message log
        says. Never started: skipped. Waiting for a retry: released (credits back), skipped.
        A claim left by a killed worker: unknown, as everywhere else."""
        key = _Key(req.workflow_id, activity.info().workflow_run_id or "", req.step, req.channel)
        with self._session() as s:
            row = _find(s, key)
            if row is None:
                return MessageResult("skipped", req.reason)
            if row.status in FINAL:
                return _recorded(row)
            if row.status == "retry":
                self._release(s, key, row.id, row.account_id, row.credits, req.reason,
                              status="skipped")
                return MessageResult("skipped", req.reason)
            return self._mark_unknown(s, key, row)

    # --- shared steps ----------------------------------------------------------------------

    def _release(
        self, s: Session, key: _Key, row_id: int, account_id: str, amount: int, reason: str,
        status: str = "failed",
    ) -> None:
        """Close a row as `status` and give its credits back."""
        s.execute(_SET_OUTCOME, {
            "u_id": row_id, "u_status": status, "u_reason": reason[:400], "u_now": utcnow(),
        })
        if amount:
            ledger.refund(
                s, account_id, amount, workflow_id=key.workflow_id, step=key.step,
                message_id=row_id, note=reason[:400],
            )

    def _skip(self, s: Session, key: _Key, req: MessageRequest, reason: str) -> MessageResult:
        s.execute(_INSERT_MESSAGE, {
            "workflow_id": key.workflow_id, "run_id": key.run_id, "step": key.step,
            "channel": key.channel, "account_id": req.account_id,
            "customer_id": req.customer_id, "status": "skipped", "reason": reason[:400],
        })
        _log(logging.INFO, "reminder skipped", key, reason=reason)
        return MessageResult("skipped", reason)

    def _claim(
        self,
        s: Session,
        row: _Row | None,
        key: _Key,
        req: MessageRequest,
        hint: str,
        *,
        credits: int,
        segments: int = 0,
        encoding: str | None = None,
    ) -> _Claimed:
        """Hold the row as `claimed` before calling the provider. A new row's INSERT raises
        IntegrityError when a concurrent attempt inserted the same key; a `retry` row is taken
        over only if it is still `retry`, keeping its original credit reservation."""
        now = utcnow()
        if row is None:
            result = cast(CursorResult[Any], s.execute(_INSERT_MESSAGE, {
                "workflow_id": key.workflow_id, "run_id": key.run_id, "step": key.step,
                "channel": key.channel, "account_id": req.account_id,
                "customer_id": req.customer_id, "status": "claimed", "recipient_hint": hint,
                "credits": credits, "segments": segments, "encoding": encoding, "attempts": 1,
                "created_at": now, "updated_at": now,
            }))
            pk = result.inserted_primary_key
            assert pk is not None
            return _Claimed(int(pk[0]), key, req.account_id, credits, hint)
        taken = cast(CursorResult[Any], s.execute(_CLAIM_RETRY, {"u_id": row.id, "u_now": now}))
        if taken.rowcount != 1:
            raise ApplicationError("a concurrent attempt is sending this reminder")
        return _Claimed(row.id, key, row.account_id, row.credits, hint)

    def _hold(self, s: Session, key: _Key, req: MessageRequest, hint: str, cost: int,
              segments: int, encoding: str | None) -> _Row:
        """A new SMS row holding its credit reservation while it waits for a send slot."""
        now = utcnow()
        s.execute(_INSERT_MESSAGE, {
            "workflow_id": key.workflow_id, "run_id": key.run_id, "step": key.step,
            "channel": key.channel, "account_id": req.account_id,
            "customer_id": req.customer_id, "status": "retry",
            "reason": "waiting for a send slot (SMS rate limit)", "recipient_hint": hint,
            "credits": cost, "segments": segments, "encoding": encoding, "attempts": 0,
            "created_at": now, "updated_at": now,
        })
        row = _find(s, key)
        assert row is not None
        return row

    def _reread(self, key: _Key) -> MessageResult:
        with self._session() as s:
            row = _find(s, key)
            if row is None or row.status not in FINAL:
                raise ApplicationError("a concurrent attempt is sending this reminder")
            return _recorded(row)

    def _mark_unknown(self, s: Session, key: _Key, row: _Row) -> MessageResult:
        s.execute(_SET_OUTCOME, {
            "u_id": row.id, "u_status": "unknown", "u_reason": UNKNOWN_REASON,
            "u_now": utcnow(),
        })
        _log(logging.WARNING, "ambiguous send found on retry: outcome unknown, not resent", key)
        return MessageResult("failed", UNKNOWN_REASON, row.credits)

    def _deliver(
        self, claimed: _Claimed, call: Callable[[], str], *, refund: bool
    ) -> MessageResult:
        key = claimed.key
        try:
            provider_id = call()
        except TransientProviderError as exc:
            with self._session() as s:
                s.execute(_BACK_TO_RETRY, {
                    "u_id": claimed.id, "u_reason": exc.reason[:400], "u_now": utcnow(),
                })
            activity.metric_meter().create_counter(
                metrics.PROVIDER_RETRIES, metrics.DESCRIPTIONS[metrics.PROVIDER_RETRIES]
            ).add(1, {"channel": key.channel})
            _log(logging.WARNING, "provider unavailable: retrying with backoff", key,
                 to=claimed.hint, reason=exc.reason, attempt=activity.info().attempt)
            raise ApplicationError(
                f"provider unavailable: {exc.reason}", type="Transient"
            ) from None
        except (PermanentProviderError, AmbiguousProviderError, ProviderError) as exc:
            with self._session() as s:
                if isinstance(exc, AmbiguousProviderError):
                    reason = f"{UNKNOWN_REASON} ({exc.reason})"[:400]
                    s.execute(_SET_OUTCOME, {
                        "u_id": claimed.id, "u_status": "unknown", "u_reason": reason,
                        "u_now": utcnow(),
                    })
                    _log(logging.WARNING, "reminder outcome unknown: not resent", key,
                         to=claimed.hint, reason=exc.reason)
                    return MessageResult("failed", reason, claimed.credits)
                if refund:
                    self._release(s, claimed.key, claimed.id, claimed.account_id,
                                  claimed.credits, exc.reason)
                else:
                    s.execute(_SET_OUTCOME, {
                        "u_id": claimed.id, "u_status": "failed", "u_reason": exc.reason[:400],
                        "u_now": utcnow(),
                    })
            _log(logging.WARNING, "reminder failed", key, to=claimed.hint, reason=exc.reason)
            return MessageResult("failed", exc.reason)
        with self._session() as s:
            s.execute(_MARK_SENT, {
                "u_id": claimed.id, "u_provider_id": provider_id[:64] if provider_id else None,
                "u_now": utcnow(),
            })
        _log(logging.INFO, "reminder sent", key, to=claimed.hint, credits=claimed.credits)
        return MessageResult("sent", "", claimed.credits)
