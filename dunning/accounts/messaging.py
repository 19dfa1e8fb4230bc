"""SMS and email settings of an account: SMS switches per step, templates, previews.

The CLI (`dunning sms ...`, `dunning email ...`) and the demo call these functions; each takes an
open session (one transaction) and raises InputError for anything the user can fix, before
writing anything.

Template lookup and pricing are the engine's own: `sms_template_for` / `email_template_for`
resolve templates exactly as the send activities do, and `quote_sms` renders, counts and prices
exactly as a send does, so a preview shows what a send charges.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from dunning.accounts.accounts import get_account, support_contact_of
from dunning.accounts.pricing import check_country, sms_cost
from dunning.domain.contract import InputError, format_duration, parse_schedule
from dunning.domain.segments import count_segments, non_gsm7_chars
from dunning.domain.templates import (
    DEFAULT_EMAIL_BODY,
    DEFAULT_EMAIL_SUBJECT,
    DEFAULT_SMS_TEMPLATE,
    OPT_OUT_LINE,
    TemplateContext,
    has_opt_out,
    render,
    render_sms,
    sample_context,
    validate_email_template,
    validate_sms_template,
)
from dunning.platform.db.models import Account, EmailTemplate, SmsTemplate

DEFAULT_PREVIEW_COUNTRY = "US"
MAX_PLAN_LENGTH = 100

TemplateSource = Literal["plan", "account", "built-in"]


# --- helpers -------------------------------------------------------------------------------


def _offsets(account: Account) -> list[int]:
    return parse_schedule(account.schedule)


def _check_plan(plan: str | None) -> str:
    """'' (the account default) for None or empty; otherwise the plan name as given."""
    if plan is None or plan == "":
        return ""
    if not plan.strip():
        raise InputError("plan", "must not be blank")
    if len(plan) > MAX_PLAN_LENGTH:
        raise InputError("plan", f"must be at most {MAX_PLAN_LENGTH} characters")
    return plan


def _check_steps(account: Account, steps: Iterable[int], *, allow_zero: bool = False) -> list[int]:
    offsets = _offsets(account)
    count = len(offsets)
    checked: list[int] = []
    low = 0 if allow_zero else 1
    for step in steps:
        if not low <= step <= count:
            zero = " (0 = every step)" if allow_zero else ""
            raise InputError(
                "step",
                f"{step} is not a step of account {account.id!r}: its schedule "
                f"{account.schedule} has {count} reminder{'s' if count != 1 else ''}, "
                f"so use {low} to {count}{zero}",
            )
        if step not in checked:
            checked.append(step)
    return checked


def account_sample_context(
    account: Account, *, currency: str = "USD", days_overdue: int | None = None
) -> TemplateContext:
    """The sample customer, with the account's real company name and support contact."""
    kwargs: dict[str, Any] = {"currency": currency}
    if days_overdue is not None:
        kwargs["days_overdue"] = days_overdue
    return sample_context(account.company_name, support_contact_of(account), **kwargs)


# --- SMS switches --------------------------------------------------------------------------


def set_sms_switch(
    session: Session, account_id: str, on: bool, steps: Iterable[int] | None = None
) -> dict[str, Any]:
    """Switch SMS on or off for the whole account (no steps) or for the given 1-based steps.

    - `on`, no steps: SMS on for the account; the per-step switches are kept.
    - `on`, steps, SMS off for the account: SMS on with only these steps on (the others
      explicitly off).
    - `on`, steps, SMS already on: these steps on, the others unchanged.
    - off, steps: these steps off. Off, no steps: SMS off for the account, per-step switches kept.
    Returns `sms_settings_json` after the change.
    """
    account = get_account(session, account_id, lock=True)
    chosen = _check_steps(account, steps or [])
    switches = {str(k): bool(v) for k, v in (account.sms_steps or {}).items()}
    if not chosen:
        account.sms_enabled = on
    elif on and not account.sms_enabled:
        count = len(_offsets(account))
        switches = {str(n): n in chosen for n in range(1, count + 1)}
        account.sms_enabled = True
    else:
        for step in chosen:
            switches[str(step)] = on
    account.sms_steps = switches  # a new dict, so that the JSON column is seen as changed
    session.flush()
    return sms_settings_json(session, account_id)


# --- templates: lookup (as the engine does it) --------------------------------------------


def sms_template_for(session: Session, account_id: str, plan: str | None) -> str:
    """The SMS template a customer on `plan` gets: the plan's, else the account's, else the
    built-in default. Same lookup as the send activity."""
    return sms_template_source(session, account_id, plan)[0]


def sms_template_source(
    session: Session, account_id: str, plan: str | None
) -> tuple[str, TemplateSource]:
    rows = {
        t.plan: t.body
        for t in session.scalars(
            select(SmsTemplate).where(
                SmsTemplate.account_id == account_id, SmsTemplate.plan.in_([plan or "", ""])
            )
        )
    }
    if plan and rows.get(plan):
        return rows[plan], "plan"
    if rows.get(""):
        return rows[""], "account"
    return DEFAULT_SMS_TEMPLATE, "built-in"


def email_template_for(
    session: Session, account_id: str, step: int, plan: str | None
) -> tuple[str, str]:
    """(subject, body) for `step` and `plan`: the most specific of (step, plan), (step, default),
    (every step, plan), (every step, default), else the built-in default."""
    subject, body, _source = email_template_source(session, account_id, step, plan)
    return subject, body


def email_template_source(
    session: Session, account_id: str, step: int, plan: str | None
) -> tuple[str, str, dict[str, Any] | None]:
    rows = {
        (t.step, t.plan): (t.subject, t.body)
        for t in session.scalars(
            select(EmailTemplate).where(
                EmailTemplate.account_id == account_id,
                EmailTemplate.step.in_([step, 0]),
                EmailTemplate.plan.in_([plan or "", ""]),
            )
        )
    }
    for k in ((step, plan or ""), (step, ""), (0, plan or ""), (0, "")):
        if k in rows:
            return rows[k][0], rows[k][1], {"step": k[0], "plan": k[1]}
    return DEFAULT_EMAIL_SUBJECT, DEFAULT_EMAIL_BODY, None


# --- SMS: pricing a rendered text ----------------------------------------------------------


@dataclass(frozen=True)
class SmsQuote:
    text: str
    encoding: str
    segments: int
    units: int
    credits: int


def quote_sms(session: Session, account_id: str, region: str | None, text: str) -> SmsQuote:
    """Encoding, segments and credits of an SMS text, as a send charges it."""
    info = count_segments(text)
    cost = sms_cost(session, account_id, region, info.segments)
    return SmsQuote(text, info.encoding, info.segments, info.units, cost)


# --- SMS templates -------------------------------------------------------------------------


def set_sms_template(
    session: Session, account_id: str, text: str, plan: str | None = None
) -> dict[str, Any]:
    """Validate and store the SMS template of an account (plan None/'') or of one plan.
    Nothing is stored when it is refused. Returns the preview of the stored template."""
    account = get_account(session, account_id)
    plan_key = _check_plan(plan)
    validate_sms_template(text, account_sample_context(account))
    row = session.get(SmsTemplate, (account_id, plan_key))
    if row is None:
        session.add(SmsTemplate(account_id=account_id, plan=plan_key, body=text))
    else:
        row.body = text
    session.flush()
    return preview_sms(session, account_id, plan_key or None)


def clear_sms_template(session: Session, account_id: str, plan: str | None = None) -> None:
    """Remove the account's (or a plan's) SMS template: the fallback applies again."""
    get_account(session, account_id)
    plan_key = _check_plan(plan)
    row = session.get(SmsTemplate, (account_id, plan_key))
    if row is None:
        what = f"plan {plan_key!r}" if plan_key else "the account default"
        raise InputError("plan" if plan_key else "account", f"no SMS template set for {what}")
    session.delete(row)
    session.flush()


def preview_sms(
    session: Session,
    account_id: str,
    plan: str | None = None,
    country: str | None = DEFAULT_PREVIEW_COUNTRY,
    *,
    step: int | None = None,
    currency: str = "USD",
) -> dict[str, Any]:
    """The SMS exactly as it would be sent to a sample customer on `plan` in `country`:
    `{"text", "encoding", "segments", "credits", "units", "plan", "country", "template",
    "template_source", "non_gsm7_chars", ...}`. With `step`, {days_overdue} is that step's
    offset in days (what the engine would fill in); otherwise the sample's 3 days."""
    account = get_account(session, account_id)
    plan_key = _check_plan(plan)
    region = check_country(country or DEFAULT_PREVIEW_COUNTRY)
    days: int | None = None
    if step is not None:
        (step,) = _check_steps(account, [step])
        days = _offsets(account)[step - 1] // 86400
    template, source = sms_template_source(session, account_id, plan_key or None)
    ctx = account_sample_context(account, currency=currency, days_overdue=days)
    text = render_sms(template, ctx)
    quote = quote_sms(session, account_id, region, text)
    result = asdict(quote)
    result.update(
        {
            "characters": len(text),
            "plan": plan_key or None,
            "country": region,
            "step": step,
            "template": template,
            "template_source": source,
            "opt_out_appended": not has_opt_out(render(template, ctx)),
            "non_gsm7_chars": non_gsm7_chars(text),
            "sms_enabled": bool(account.sms_enabled),
        }
    )
    return result


def sms_settings_json(session: Session, account_id: str) -> dict[str, Any]:
    """What `dunning sms show` prints: switches per step, templates in use."""
    account = get_account(session, account_id)
    offsets = _offsets(account)
    switches = {str(k): bool(v) for k, v in (account.sms_steps or {}).items()}
    plans = {
        t.plan: t.body
        for t in session.scalars(
            select(SmsTemplate)
            .where(SmsTemplate.account_id == account_id)
            .order_by(SmsTemplate.plan)
        )
    }
    default = plans.pop("", None)
    return {
        "account_id": account.id,
        "sms_enabled": bool(account.sms_enabled),
        "sms_sender": account.sms_sender,
        "schedule": account.schedule,
        "steps": [
            {
                "step": n,
                "offset": format_duration(offset),
                "email": True,
                "sms": account.sms_step_on(n),
                "sms_step_switch": switches.get(str(n), True),
            }
            for n, offset in enumerate(offsets, start=1)
        ],
        "template": default if default is not None else DEFAULT_SMS_TEMPLATE,
        "template_source": "account" if default is not None else "built-in",
        "plan_templates": plans,
        "opt_out_line": OPT_OUT_LINE,
        "credit_balance": account.credit_balance,
    }


# --- email templates -----------------------------------------------------------------------


def set_email_template(
    session: Session,
    account_id: str,
    subject: str,
    body: str,
    *,
    step: int = 0,
    plan: str | None = None,
) -> dict[str, Any]:
    """Validate and store an email template for one step (0 = every step) and plan."""
    account = get_account(session, account_id)
    (step,) = _check_steps(account, [step], allow_zero=True)
    plan_key = _check_plan(plan)
    validate_email_template(subject, body)
    row = session.get(EmailTemplate, (account_id, step, plan_key))
    if row is None:
        session.add(
            EmailTemplate(account_id=account_id, step=step, plan=plan_key, subject=subject,
                          body=body)
        )
    else:
        row.subject = subject
        row.body = body
    session.flush()
    return {"account_id": account_id, "step": step, "plan": plan_key or None,
            "subject": subject, "body": body}


def clear_email_template(
    session: Session, account_id: str, *, step: int = 0, plan: str | None = None
) -> None:
    account = get_account(session, account_id)
    (step,) = _check_steps(account, [step], allow_zero=True)
    plan_key = _check_plan(plan)
    row = session.get(EmailTemplate, (account_id, step, plan_key))
    if row is None:
        raise InputError(
            "step",
            f"no email template set for step {step or 'all'} and "
            f"{'plan ' + repr(plan_key) if plan_key else 'the default plan'}",
        )
    session.delete(row)
    session.flush()


def email_templates_json(session: Session, account_id: str) -> dict[str, Any]:
    account = get_account(session, account_id)
    rows = session.scalars(
        select(EmailTemplate)
        .where(EmailTemplate.account_id == account_id)
        .order_by(EmailTemplate.step, EmailTemplate.plan)
    )
    return {
        "account_id": account.id,
        "schedule": account.schedule,
        "default": {"subject": DEFAULT_EMAIL_SUBJECT, "body": DEFAULT_EMAIL_BODY},
        "templates": [
            {"step": t.step, "plan": t.plan or None, "subject": t.subject, "body": t.body}
            for t in rows
        ],
    }


def preview_email(
    session: Session,
    account_id: str,
    *,
    step: int = 1,
    plan: str | None = None,
    currency: str = "USD",
) -> dict[str, Any]:
    """The email for `step` as a sample customer on `plan` would get it."""
    account = get_account(session, account_id)
    (step,) = _check_steps(account, [step])
    plan_key = _check_plan(plan)
    subject_t, body_t, source = email_template_source(session, account_id, step, plan_key)
    ctx = account_sample_context(
        account, currency=currency, days_overdue=_offsets(account)[step - 1] // 86400
    )
    return {
        "account_id": account.id,
        "step": step,
        "plan": plan_key or None,
        "subject": render(subject_t, ctx),
        "body": render(body_t, ctx),
        "template": source or "built-in",
    }
