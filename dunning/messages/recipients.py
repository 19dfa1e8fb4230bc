"""Who may receive a reminder, and why not: eligibility, and the message each channel sends.

One query (`RECIPIENT`) brings the account, the customer, (for SMS) the number's opt-out
state and whether the case waits for credits back in one round trip. An SMS goes out only when
the account has SMS on (for this step) and a sender number, the customer has a valid phone, the
number has not opted out, and the recipient's quiet hours allow it now; an email only when the
customer has an address. Every "no" is a reason the message log records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, and_, bindparam, select
from sqlalchemy.orm import Session

from dunning.accounts import selectors
from dunning.accounts.messaging import (
    case_context,
    compose_email,
    email_template_choice,
    quote_sms,
    sms_template_choice,
)
from dunning.customers import conversation
from dunning.domain.contract import MessageRequest, MessageResult
from dunning.domain.locales import locale_chain
from dunning.domain.quiet_hours import next_allowed, recipient_window, zones_for
from dunning.domain.templates import TemplateContext, render_sms
from dunning.platform.db.models import Account, Case, Customer, OptOut, SmsWaiter
from dunning.platform.providers.email import OutgoingEmail
from dunning.platform.providers.sms import OutgoingSms

_A = cast(Table, Account.__table__)
_C = cast(Table, Customer.__table__)
_O = cast(Table, OptOut.__table__)
_CASES = cast(Table, Case.__table__)
_W = cast(Table, SmsWaiter.__table__)

# The account, the customer, (for SMS) the number's opt-out state and whether the case waits
# for credits, in one round trip.
RECIPIENT = (
    select(
        _A.c.company_name, _A.c.support_contact, _A.c.email_from, _A.c.sms_enabled,
        _A.c.sms_steps, _A.c.sms_sender, _A.c.quiet_hours, _A.c.timezone,
        _A.c.locale.label("account_locale"), _A.c.track_links,
        _C.c.customer_id, _C.c.name, _C.c.email, _C.c.plan, _C.c.phone_e164,
        _C.c.phone_region, _C.c.phone_time_zones, _C.c.locale.label("customer_locale"),
        _O.c.opted_out, _CASES.c.arm, _CASES.c.sms_variant,
        # the case waits in the account's credit queue (its SMS takes the locked path)
        select(_W.c.workflow_id).where(
            _W.c.account_id == bindparam("r_account"), _W.c.workflow_id == bindparam("r_workflow")
        ).exists().label("credits_queued"),
    )
    .select_from(
        _A.outerjoin(
            _C, and_(_C.c.account_id == _A.c.id, _C.c.customer_id == bindparam("r_customer"))
        ).outerjoin(
            _O, and_(_O.c.account_id == _A.c.id, _O.c.phone_e164 == _C.c.phone_e164)
        ).outerjoin(
            # the case's experiment arms, recorded at registration (same round trip)
            _CASES, _CASES.c.workflow_id == bindparam("r_workflow")
        )
    )
    .where(_A.c.id == bindparam("r_account"))
)
_AB_TEMPLATE = select(_A.c.sms_ab_template).where(_A.c.id == bindparam("b_account"))

# The billing link as sent on a channel (a tracked short link when the account wants one):
# (session, request, channel, recipient row) -> URL.
LinkFor = Callable[[Session, MessageRequest, str, Any], str]


def _plain_link(session: Session, req: MessageRequest, channel: str, who: Any) -> str:
    return req.billing_link


class SmsPlan(NamedTuple):
    """The SMS to send now and what it costs."""

    sms: OutgoingSms
    credits: int
    segments: int
    encoding: str
    queued: bool = False  # the case waits in the credit queue (paused for credits)


def recipient(session: Session, req: MessageRequest) -> Any:
    """The `RECIPIENT` row of a request; None when the account no longer exists."""
    return session.execute(
        RECIPIENT, {"r_account": req.account_id, "r_customer": req.customer_id,
                    "r_workflow": req.workflow_id},
    ).first()


def is_sms_step_on(sms_enabled: bool | None, sms_steps: dict[str, Any] | None,
                   step: int) -> bool:
    """As `Account.sms_step_on`, on the columns of a query row."""
    if not sms_enabled:
        return False
    return bool((sms_steps or {}).get(str(step), True))


def template_context(who: Any, req: MessageRequest, link: str) -> TemplateContext:
    """The template variables, from a `RECIPIENT` row, in the customer's locale."""
    return case_context(
        company_name=who.company_name,
        support_contact=who.support_contact or who.email_from or "",
        customer_name=who.name, amount_due=req.amount_due, currency=req.currency,
        invoice_id=req.invoice_id, billing_link=link, failed_at=req.failed_at, now=req.now,
        locale=who.customer_locale or who.account_locale,
        decline_code=req.decline_code or "",
    )


def sms_for(
    session: Session, req: MessageRequest, link_for: LinkFor = _plain_link
) -> SmsPlan | MessageResult:
    """The SMS to send now, or why not (skipped, or held with the time to retry: quiet hours,
    one conversation per customer, an operator's pause)."""
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
    if who.arm == "holdout":
        return MessageResult("skipped", "SMS holdout: this case gets email only (experiment)")
    held = conversation.hold_for(session, req.account_id, req.customer_id, "sms",
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
        session, req.account_id,
        selectors.plan_for(session, req.account_id, "sms", req.plan or who.plan,
                           req.decline_code),
        step=req.step, step_count=req.step_count,
        locale=who.customer_locale, account_locale=who.account_locale,
    )
    if who.sms_variant == "B":
        template_b = session.execute(_AB_TEMPLATE, {"b_account": req.account_id}).scalar()
        if template_b:  # the A/B test's template B, in the account's own language
            chosen = dataclasses.replace(
                chosen, body=template_b, chain=locale_chain(None, who.account_locale)
            )
    ctx = conversation.with_open_cases(
        session, template_context(who, req, link_for(session, req, "sms", who)),
        (chosen.body,), req.account_id, req.customer_id,
    )
    text = render_sms(chosen.body, ctx, chosen.chain)
    quote = quote_sms(session, req.account_id, who.phone_region, text)
    sms = OutgoingSms(who.sms_sender, who.phone_e164, text)
    return SmsPlan(sms, quote.credits, quote.segments, quote.encoding,
                   bool(who.credits_queued))


def email_message_id(workflow_id: str, run_id: str, step: int) -> str:
    """The reminder's Message-ID: the same on every attempt, so a resend after an ambiguous
    crash is the same message to the customer's mail client. (`:` of the workflow id is not
    allowed in a Message-ID's left part.)"""
    return f"<{workflow_id.replace(':', '.')}.{run_id[:8]}.{step}@dunning>"


def email_for(
    session: Session, req: MessageRequest, message_id: str, default_sender: str,
    link_for: LinkFor = _plain_link,
) -> OutgoingEmail | MessageResult | str:
    """The email to send now, held (a `quiet_hours` result with the time to retry: one
    conversation per customer, an operator's pause), or why not (the reason it is skipped)."""
    who = recipient(session, req)
    if who is None:
        return "account no longer exists"
    if who.customer_id is None or not who.email:
        return "no email address for this customer"
    held = conversation.hold_for(session, req.account_id, req.customer_id, "email",
                                 req.workflow_id, req.now)
    if held is not None:  # nothing recorded: the case waits and tries again
        return MessageResult("quiet_hours", held.reason, retry_at=held.until)
    chosen = email_template_choice(
        session, req.account_id, req.step,
        selectors.plan_for(session, req.account_id, "email", req.plan or who.plan,
                           req.decline_code),
        step_count=req.step_count,
        locale=who.customer_locale, account_locale=who.account_locale,
    )
    ctx = conversation.with_open_cases(
        session, template_context(who, req, link_for(session, req, "email", who)),
        (chosen.subject, chosen.body, chosen.html or ""), req.account_id, req.customer_id,
    )
    email = compose_email(chosen, ctx)
    return OutgoingEmail(
        sender=who.email_from or default_sender,
        to=who.email,
        subject=email.subject,
        body=email.text,
        html=email.html,
        message_id=message_id,
    )
