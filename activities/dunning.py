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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from dunning import credits
from dunning.db import Database
from dunning.db.models import (
    Account,
    Case,
    Customer,
    Message,
    OptOut,
    utcnow,
)
from dunning.domain import (
    ACT_FINISH_CASE,
    ACT_REGISTER_CASE,
    ACT_RELEASE_SMS,
    ACT_SEND_EMAIL,
    ACT_SEND_SMS,
    CasePlan,
    FinishCaseRequest,
    MessageRequest,
    MessageResult,
    RegisterCaseRequest,
    ReleaseRequest,
    parse_schedule,
)
from dunning.providers import (
    AmbiguousProviderError,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
    mask_email,
    mask_phone,
)
from dunning.providers.email import EmailProvider, OutgoingEmail
from dunning.providers.sms import OutgoingSms, SmsProvider
from dunning.quiet_hours import next_allowed, zones_for
from dunning.sms_settings import email_template_for, quote_sms, sms_template_for
from dunning.templates import (
    TemplateContext,
    format_amount,
    render,
    render_sms,
)

log = logging.getLogger("dunning.activities")

FINAL = ("sent", "failed", "skipped", "unknown")
UNKNOWN_REASON = (
    "outcome unknown: the worker stopped or the provider timed out during the send; "
    "not resent, to avoid a duplicate"
)


@dataclass(frozen=True)
class _Key:
    workflow_id: str
    run_id: str
    step: int
    channel: str


def _key(req: MessageRequest, channel: str) -> _Key:
    info = activity.info()
    return _Key(req.workflow_id, info.workflow_run_id or "", req.step, channel)


def _find(session: Session, key: _Key) -> Message | None:
    return session.scalar(
        select(Message).where(
            Message.workflow_id == key.workflow_id,
            Message.run_id == key.run_id,
            Message.step == key.step,
            Message.channel == key.channel,
        )
    )


def _recorded(row: Message) -> MessageResult:
    status = row.status
    if status == "unknown":
        return MessageResult("failed", row.reason or UNKNOWN_REASON, row.credits)
    return MessageResult(status, row.reason or "", row.credits if status == "sent" else 0)  # type: ignore[arg-type]


def _context(account: Account, customer: Customer | None, req: MessageRequest) -> TemplateContext:
    overdue = max(0, (req.now - req.failed_at).days)
    return TemplateContext(
        company_name=account.company_name,
        billing_link=req.billing_link,
        customer_name=(customer.name if customer and customer.name else "there"),
        amount=format_amount(req.amount_due, req.currency),
        invoice_id=req.invoice_id,
        days_overdue=overdue,
        support_contact=account.support_contact or account.email_from or "",
    )


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
    ) -> None:
        self.db = db
        self.sms = sms
        self.email = email
        self.public_url = public_url.rstrip("/")
        self.default_email_from = default_email_from

    def all(self) -> list[Any]:
        """Activities of the case's own task queue."""
        return [self.register_case, self.send_email, self.release_sms, self.finish_case]

    def sms_queue(self) -> list[Any]:
        """Activities of the rate-limited SMS task queue."""
        return [self.send_sms]

    # --- case bookkeeping -------------------------------------------------------------------

    @activity.defn(name=ACT_REGISTER_CASE)
    def register_case(self, req: RegisterCaseRequest) -> CasePlan:
        with self.db.session() as s:
            account = s.get(Account, req.account_id)
            if account is None:
                return CasePlan([], 0, error=f"account_id: unknown account {req.account_id!r}")
            customer = s.get(Customer, (req.account_id, req.customer_id))
            if customer is None:
                customer = Customer(
                    account_id=req.account_id, customer_id=req.customer_id, source="case"
                )
                s.add(customer)
            if req.customer_email:
                customer.email = req.customer_email
            if req.customer_name:
                customer.name = req.customer_name
            if req.plan:
                customer.plan = req.plan
            if s.get(Case, req.workflow_id) is None:
                s.add(
                    Case(
                        workflow_id=req.workflow_id,
                        account_id=req.account_id,
                        customer_id=req.customer_id,
                        invoice_id=req.invoice_id,
                        amount_due=req.amount_due,
                        currency=req.currency,
                        failed_at=req.failed_at,
                        state="active",
                    )
                )
            return CasePlan(parse_schedule(account.schedule), account.grace_seconds)

    @activity.defn(name=ACT_FINISH_CASE)
    def finish_case(self, req: FinishCaseRequest) -> None:
        with self.db.session() as s:
            credits.remove_waiter(s, req.account_id, req.workflow_id)
            s.execute(
                update(Case)
                .where(Case.workflow_id == req.workflow_id)
                .values(
                    state=req.outcome,
                    ended_at=req.ended_at,
                    emails_sent=req.emails_sent,
                    sms_sent=req.sms_sent,
                    credits_spent=req.credits_spent,
                    recovered_amount=req.recovered_amount,
                    last_channel=req.last_channel,
                )
            )

    # --- email ------------------------------------------------------------------------------

    @activity.defn(name=ACT_SEND_EMAIL)
    def send_email(self, req: MessageRequest) -> MessageResult:
        activity.heartbeat()
        key = _key(req, "email")
        try:
            return self._send_email(key, req)
        except IntegrityError:
            return self._reread(key)

    def _send_email(self, key: _Key, req: MessageRequest) -> MessageResult:
        with self.db.session() as s:
            row = _find(s, key)
            if row is not None and row.status in FINAL:
                return _recorded(row)
            if row is not None and row.status == "claimed":
                return self._mark_unknown(s, row)
            account = s.get(Account, req.account_id)
            customer = s.get(Customer, (req.account_id, req.customer_id))
            if account is None:
                return self._skip(s, key, req, "account no longer exists")
            if customer is None or not customer.email:
                return self._skip(s, key, req, "no email address for this customer")
            plan = req.plan or customer.plan
            subject_t, body_t = email_template_for(s, req.account_id, req.step, plan)
            ctx = _context(account, customer, req)
            outgoing = OutgoingEmail(
                sender=account.email_from or self.default_email_from,
                to=customer.email,
                subject=render(subject_t, ctx),
                body=render(body_t, ctx),
                message_id=f"<{key.workflow_id}.{key.run_id[:8]}.{key.step}@dunning>",
            )
            row = self._claim(s, row, key, req, mask_email(customer.email), credits=0)
            row_id = row.id
        return self._deliver(row_id, lambda: self.email.send(outgoing), refund=False)

    # --- SMS --------------------------------------------------------------------------------

    @activity.defn(name=ACT_SEND_SMS)
    def send_sms(self, req: MessageRequest) -> MessageResult:
        activity.heartbeat()
        key = _key(req, "sms")
        try:
            with self.db.session() as s:
                row = _find(s, key)
                if row is not None and row.status in FINAL:
                    return _recorded(row)
                if row is not None and row.status == "claimed":
                    return self._mark_unknown(s, row)
                plan = self._sms_for(s, req)
                if isinstance(plan, MessageResult):
                    if plan.status != "skipped":
                        return plan  # quiet hours: nothing recorded, the case waits
                    if row is not None:  # a `retry` row: e.g. opted out since the last try
                        self._release(s, row, plan.reason, status="skipped")
                        return plan
                    return self._skip(s, key, req, plan.reason)
                sms, cost, segments, encoding = plan
                if row is None:
                    reservation = credits.reserve(
                        s, req.account_id, cost, workflow_id=req.workflow_id, step=req.step
                    )
                    if not reservation.ok:
                        credits.add_waiter(s, req.account_id, req.workflow_id, cost)
                        return MessageResult(
                            "no_credits",
                            f"needs {cost} credits, balance is {reservation.balance}",
                            cost,
                        )
                    credits.remove_waiter(s, req.account_id, req.workflow_id)
                row = self._claim(
                    s, row, key, req, mask_phone(sms.dst), credits=cost, segments=segments,
                    encoding=encoding,
                )
                row_id = row.id
        except IntegrityError:  # a concurrent attempt claimed it first; nothing of ours stuck
            return self._reread(key)
        callback = f"{self.public_url}/webhooks/plivo/status?ref={row_id}"
        outgoing = OutgoingSms(sms.src, sms.dst, sms.text, callback)
        return self._deliver(row_id, lambda: self.sms.send(outgoing), refund=True)

    def _sms_for(
        self, s: Session, req: MessageRequest
    ) -> tuple[OutgoingSms, int, int, str] | MessageResult:
        """The SMS to send now, or why not (skipped, or quiet hours with the time to retry)."""
        account = s.get(Account, req.account_id)
        if account is None:
            return MessageResult("skipped", "account no longer exists")
        if not account.sms_enabled:
            return MessageResult("skipped", "SMS is off for this account")
        if not account.sms_step_on(req.step):
            return MessageResult("skipped", f"SMS is off for step {req.step}")
        if not account.sms_sender:
            return MessageResult("skipped", "the account has no SMS sender number")
        customer = s.get(Customer, (req.account_id, req.customer_id))
        if customer is None or not customer.phone_e164:
            return MessageResult("skipped", "no valid phone number for this customer")
        opt = s.get(OptOut, (req.account_id, customer.phone_e164))
        if opt is not None and opt.opted_out:
            return MessageResult("skipped", "the number opted out (STOP)")
        zones = zones_for(customer.phone_time_zones, account.timezone)
        opens = next_allowed(req.now, account.quiet_hours, zones)
        if opens > req.now:
            return MessageResult(
                "quiet_hours", f"quiet hours for the recipient until {opens.isoformat()}",
                retry_at=opens,
            )
        template = sms_template_for(s, req.account_id, req.plan or customer.plan)
        text = render_sms(template, _context(account, customer, req))
        quote = quote_sms(s, account.id, customer.phone_region, text)
        sms = OutgoingSms(account.sms_sender, customer.phone_e164, text)
        return sms, quote.credits, quote.segments, quote.encoding


    @activity.defn(name=ACT_RELEASE_SMS)
    def release_sms(self, req: ReleaseRequest) -> None:
        """The workflow gave up on a send that kept failing transiently: refund its credits."""
        run_id = activity.info().workflow_run_id or ""
        with self.db.session() as s:
            row = s.scalar(
                select(Message).where(
                    Message.workflow_id == req.workflow_id,
                    Message.run_id == run_id,
                    Message.step == req.step,
                    Message.channel == "sms",
                )
            )
            if row is not None and row.status == "retry":
                self._release(s, row, req.reason)

    # --- shared steps ----------------------------------------------------------------------

    def _release(self, s: Session, row: Message, reason: str, status: str = "failed") -> None:
        row.status = status
        row.reason = reason[:400]
        if row.credits:
            credits.refund(
                s, row.account_id, row.credits, workflow_id=row.workflow_id, step=row.step,
                message_id=row.id, note=reason[:400],
            )

    def _skip(self, s: Session, key: _Key, req: MessageRequest, reason: str) -> MessageResult:
        s.add(
            Message(
                workflow_id=key.workflow_id, run_id=key.run_id, step=key.step,
                channel=key.channel, account_id=req.account_id, customer_id=req.customer_id,
                status="skipped", reason=reason[:400],
            )
        )
        return MessageResult("skipped", reason)

    def _claim(
        self,
        s: Session,
        row: Message | None,
        key: _Key,
        req: MessageRequest,
        hint: str,
        *,
        credits: int,
        segments: int = 0,
        encoding: str | None = None,
    ) -> Message:
        if row is None:
            row = Message(
                workflow_id=key.workflow_id, run_id=key.run_id, step=key.step,
                channel=key.channel, account_id=req.account_id, customer_id=req.customer_id,
                recipient_hint=hint, credits=credits, segments=segments, encoding=encoding,
                attempts=0,
            )
            s.add(row)
        row.status = "claimed"
        row.attempts += 1
        s.flush()  # IntegrityError here when a concurrent attempt inserted the same key
        return row

    def _reread(self, key: _Key) -> MessageResult:
        with self.db.session() as s:
            row = _find(s, key)
            if row is None or row.status not in FINAL:
                raise ApplicationError("a concurrent attempt is sending this reminder")
            return _recorded(row)

    def _mark_unknown(self, s: Session, row: Message) -> MessageResult:
        row.status = "unknown"
        row.reason = UNKNOWN_REASON
        log.warning("ambiguous send workflow=%s step=%s channel=%s: not resent",
                    row.workflow_id, row.step, row.channel)
        return MessageResult("failed", UNKNOWN_REASON, row.credits)

    def _deliver(self, row_id: int, call: Any, *, refund: bool) -> MessageResult:
        activity.heartbeat()
        try:
            provider_id = call()
        except TransientProviderError as exc:
            with self.db.session() as s:
                s.execute(
                    update(Message).where(Message.id == row_id, Message.status == "claimed")
                    .values(status="retry", reason=exc.reason[:400], updated_at=utcnow())
                )
            raise ApplicationError(
                f"provider unavailable: {exc.reason}", type="Transient"
            ) from None
        except (PermanentProviderError, AmbiguousProviderError, ProviderError) as exc:
            with self.db.session() as s:
                row = s.get(Message, row_id)
                assert row is not None
                if isinstance(exc, AmbiguousProviderError):
                    row.status = "unknown"
                    row.reason = f"{UNKNOWN_REASON} ({exc.reason})"[:400]
                    return MessageResult("failed", row.reason, row.credits)
                if refund:
                    self._release(s, row, exc.reason)
                else:
                    row.status = "failed"
                    row.reason = exc.reason[:400]
                return MessageResult("failed", exc.reason)
        with self.db.session() as s:
            row = s.get(Message, row_id)
            assert row is not None
            row.status = "sent"
            row.provider_id = provider_id[:64] if provider_id else None
            row.reason = None
            return MessageResult("sent", "", row.credits)

