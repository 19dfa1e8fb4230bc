"""Who may receive a reminder, and why not: eligibility, and the message each channel sends.

One query (`RECIPIENT`) brings the account, the customer and (for SMS) the number's opt-out
state back in one round trip. An SMS goes out only when the account has SMS on (for this step)
and a sender number, the customer has a valid phone, the number has not opted out, and the
recipient's quiet hours allow it now; an email only when the customer has an address. Every
"no" is a reason the message log records.
"""

from __future__ import annotations

from typing import Any, NamedTuple, cast

from sqlalchemy import Table, and_, bindparam, select
from sqlalchemy.orm import Session

from dunning.accounts.messaging import email_template_for, quote_sms, sms_template_for
from dunning.domain.contract import MessageRequest, MessageResult
from dunning.domain.quiet_hours import next_allowed, zones_for
from dunning.domain.templates import TemplateContext, format_amount, render, render_sms
from dunning.platform.db.models import Account, Customer, OptOut
from dunning.platform.providers.email import OutgoingEmail
from dunning.platform.providers.sms import OutgoingSms

_A = cast(Table, Account.__table__)
_C = cast(Table, Customer.__table__)
_O = cast(Table, OptOut.__table__)

# The account, the customer and (for SMS) the number's opt-out state, in one round trip.
RECIPIENT = (
    select(
        _A.c.company_name, _A.c.support_contact, _A.c.email_from, _A.c.sms_enabled,
        _A.c.sms_steps, _A.c.sms_sender, _A.c.quiet_hours, _A.c.timezone,
        _C.c.customer_id, _C.c.name, _C.c.email, _C.c.plan, _C.c.phone_e164,
        _C.c.phone_region, _C.c.phone_time_zones, _O.c.opted_out,
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


class SmsPlan(NamedTuple):
    """The SMS to send now and what it costs."""

    sms: OutgoingSms
    credits: int
    segments: int
    encoding: str


def recipient(session: Session, req: MessageRequest) -> Any:
    """The `RECIPIENT` row of a request; None when the account no longer exists."""
    return session.execute(
        RECIPIENT, {"r_account": req.account_id, "r_customer": req.customer_id}
    ).first()


def is_sms_step_on(sms_enabled: bool | None, sms_steps: dict[str, Any] | None,
                   step: int) -> bool:
    """As `Account.sms_step_on`, on the columns of a query row."""
    if not sms_enabled:
        return False
    return bool((sms_steps or {}).get(str(step), True))


def template_context(who: Any, req: MessageRequest) -> TemplateContext:
    """The template variables, from a `RECIPIENT` row."""
    overdue = max(0, (req.now - req.failed_at).days)
    return TemplateContext(
        company_name=who.company_name,
        billing_link=req.billing_link,
        customer_name=who.name or "there",
        amount=format_amount(req.amount_due, req.currency),
        invoice_id=req.invoice_id,
        days_overdue=overdue,
        support_contact=who.support_contact or who.email_from or "",
    )


def sms_for(session: Session, req: MessageRequest) -> SmsPlan | MessageResult:
    """The SMS to send now, or why not (skipped, or quiet hours with the time to retry)."""
    who = recipient(session, req)
    if who is None:
        return MessageResult("skipped", "account no longer exists")
    if not who.sms_enabled:
        return MessageResult("skipped", "SMS is off for this account")
    if not is_sms_step_on(who.sms_enabled, who.sms_steps, req.step):
        return MessageResult("skipped", f"SMS is off for step {req.step}")
    if not who.sms_sender:
        return MessageResult("skipped", "the account has no SMS sender number")
    if who.customer_id is None or not who.phone_e164:
        return MessageResult("skipped", "no valid phone number for this customer")
    if who.opted_out:
        return MessageResult("skipped", "the number opted out (STOP)")
    zones = zones_for(who.phone_time_zones, who.timezone)
    opens = next_allowed(req.now, who.quiet_hours, zones)
    if opens > req.now:
        return MessageResult(
            "quiet_hours", f"quiet hours for the recipient until {opens.isoformat()}",
            retry_at=opens,
        )
    template = sms_template_for(session, req.account_id, req.plan or who.plan)
    text = render_sms(template, template_context(who, req))
    quote = quote_sms(session, req.account_id, who.phone_region, text)
    sms = OutgoingSms(who.sms_sender, who.phone_e164, text)
    return SmsPlan(sms, quote.credits, quote.segments, quote.encoding)


def email_message_id(workflow_id: str, run_id: str, step: int) -> str:
    """The reminder's Message-ID: the same on every attempt, so a resend after an ambiguous
    crash is the same message to the customer's mail client."""
    return f"<{workflow_id}.{run_id[:8]}.{step}@dunning>"


def email_for(
    session: Session, req: MessageRequest, message_id: str, default_sender: str
) -> OutgoingEmail | str:
    """The email to send now, or why not (the reason it is skipped)."""
    who = recipient(session, req)
    if who is None:
        return "account no longer exists"
    if who.customer_id is None or not who.email:
        return "no email address for this customer"
    subject_t, body_t = email_template_for(session, req.account_id, req.step, req.plan or who.plan)
    ctx = template_context(who, req)
    return OutgoingEmail(
        sender=who.email_from or default_sender,
        to=who.email,
        subject=render(subject_t, ctx),
        body=render(body_t, ctx),
        message_id=message_id,
    )
