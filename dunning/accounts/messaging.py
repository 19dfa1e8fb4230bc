"""SMS and email settings of an account: SMS switches per step, templates, previews.

The CLI (`dunning sms ...`, `dunning email ...`) and the demo call these functions; each takes an
open session (one transaction) and raises InputError for anything the user can fix, before
writing anything.

Template lookup and pricing are the engine's own: `sms_template_for` / `email_template_for`
resolve templates exactly as the send activities do, and `quote_sms` renders, counts and prices
exactly as a send does, so a preview shows what a send charges.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from dunning.accounts.accounts import get_account, support_contact_of
from dunning.accounts.pricing import check_country, sms_cost
from dunning.domain.contract import InputError, format_duration, parse_schedule
from dunning.domain.email_layout import compose_html
from dunning.domain.locales import (
    DEFAULT_LOCALE,
    SHIPPED_LOCALES,
    format_amount,
    format_day,
    language_of,
    locale_chain,
    normalize_locale,
    shipped_email,
    shipped_sms,
    stage_of,
)
from dunning.domain.segments import count_segments, non_gsm7_chars
from dunning.domain.templates import (
    DEFAULT_EMAIL_BODY,
    DEFAULT_EMAIL_SUBJECT,
    TemplateContext,
    has_opt_out,
    opt_out_line,
    render,
    render_sms,
    sample_context,
    validate_email_template,
    validate_sms_template,
)
from dunning.platform.db.models import Account, EmailTemplate, SmsTemplate

SHORT_TOKEN_LENGTH = 22  # dunning.messages.links.TOKEN_LENGTH
# What billing links usually look like (a Stripe hosted-invoice URL, 125 characters): the
# preview compares the short link with this to show what tracking saves.
TYPICAL_BILLING_LINK = (
    "https://invoice.stripe.com/i/acct_1Nv0FGQ9RKHgCVdK/"
    "live_YWNjdF8xTnYwRkdROVJLSGdDVmRLLF9QcTNUbGJCZkJ0aGRVR0RqN0F5cWNE?s=ap"
)

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
    account: Account,
    *,
    currency: str = "USD",
    days_overdue: int | None = None,
    locale: str | None = None,
    billing_link: str | None = None,
) -> TemplateContext:
    """The sample customer, with the account's real company name and support contact; amounts
    and dates formatted for `locale` (the account's default locale without one)."""
    kwargs: dict[str, Any] = {"currency": currency}
    if days_overdue is not None:
        kwargs["days_overdue"] = days_overdue
    return sample_context(account.company_name, support_contact_of(account),
                          locale=locale or account.locale or DEFAULT_LOCALE,
                          billing_link=billing_link, **kwargs)


def sample_short_link(public_url: str) -> str:
    """A short link as long as the engine's (see dunning.messages.links)."""
    return f"{public_url.rstrip('/')}/l/{'x' * SHORT_TOKEN_LENGTH}"


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


@dataclass(frozen=True)
class ChosenTemplate:
    """The template a message uses, and where it came from.

    `locale` is the locale the text is written in (the chain position it was found at);
    `chain` is the lookup chain from there on: the opt-out line, the HELP answer and the email's
    button follow its first language that ships them."""

    subject: str  # '' for SMS
    body: str
    html: str | None
    locale: str
    chain: list[str]
    source: TemplateSource
    step: int  # the row's step (0 = every step); the stage's step for built-in texts
    plan: str


def _locale_key(locale: str | None) -> str:
    """'' (the account's default locale) for None or empty; else the canonical tag."""
    return normalize_locale(locale) if locale else ""


def _lookup(
    rows: Mapping[tuple[int, str, str], tuple[str, str, str | None]],
    step: int,
    plan: str,
    chain: list[str],
    account_locale: str,
    shipped: Callable[[str], tuple[str, str]],
) -> ChosenTemplate:
    """Walk the locale chain: at each locale the account's own templates (most specific step
    and plan first; '' rows count as the account's default locale), then the shipped texts of
    that language."""
    default_tags = {account_locale, language_of(account_locale)}
    for i, tag in enumerate(chain):
        here = [tag, ""] if tag in default_tags else [tag]
        for loc in here:
            for st, pl in ((step, plan), (step, ""), (0, plan), (0, "")):
                found = rows.get((st, pl, loc))
                if found is not None:
                    return ChosenTemplate(
                        found[0], found[1], found[2], tag, chain[i:],
                        "plan" if pl else "account", st, pl,
                    )
        if tag in SHIPPED_LOCALES:
            subject, body = shipped(tag)
            return ChosenTemplate(subject, body, None, tag, chain[i:], "built-in", step, "")
    subject, body = shipped(DEFAULT_LOCALE)
    return ChosenTemplate(subject, body, None, DEFAULT_LOCALE, [DEFAULT_LOCALE], "built-in",
                          step, "")


def _account_locale(session: Session, account_id: str) -> str:
    return session.scalar(select(Account.locale).where(Account.id == account_id)) or DEFAULT_LOCALE


def sms_template_choice(
    session: Session,
    account_id: str,
    plan: str | None,
    *,
    step: int = 0,
    step_count: int = 0,
    locale: str | None = None,
    account_locale: str | None = None,
) -> ChosenTemplate:
    """The SMS template of a customer on `plan` in `locale` for `step` of `step_count`, as the
    send activity resolves it (see `_lookup`)."""
    account_locale = account_locale or _account_locale(session, account_id)
    chain = locale_chain(locale, account_locale)
    rows = {
        (t.step, t.plan, t.locale): ("", t.body, None)
        for t in session.scalars(
            select(SmsTemplate).where(
                SmsTemplate.account_id == account_id,
                SmsTemplate.plan.in_([plan or "", ""]),
                SmsTemplate.step.in_([step, 0]),
            )
        )
    }
    stage = stage_of(step, step_count)
    return _lookup(rows, step, plan or "", chain, account_locale,
                   lambda lang: ("", shipped_sms(lang, stage)))


def sms_template_for(session: Session, account_id: str, plan: str | None) -> str:
    """The SMS template a customer on `plan` gets (first step, account locale)."""
    return sms_template_source(session, account_id, plan)[0]


def sms_template_source(
    session: Session, account_id: str, plan: str | None
) -> tuple[str, TemplateSource]:
    chosen = sms_template_choice(session, account_id, plan)
    return chosen.body, chosen.source


def email_template_choice(
    session: Session,
    account_id: str,
    step: int,
    plan: str | None,
    *,
    step_count: int = 0,
    locale: str | None = None,
    account_locale: str | None = None,
) -> ChosenTemplate:
    """(subject, body) for `step` and `plan` in `locale`: along the locale chain, the most
    specific of (step, plan), (step, default), (every step, plan), (every step, default), else
    the shipped text of that language."""
    account_locale = account_locale or _account_locale(session, account_id)
    chain = locale_chain(locale, account_locale)
    rows = {
        (t.step, t.plan, t.locale): (t.subject, t.body, t.html)
        for t in session.scalars(
            select(EmailTemplate).where(
                EmailTemplate.account_id == account_id,
                EmailTemplate.step.in_([step, 0]),
                EmailTemplate.plan.in_([plan or "", ""]),
            )
        )
    }
    stage = stage_of(step, step_count)
    return _lookup(rows, step, plan or "", chain, account_locale,
                   lambda lang: shipped_email(lang, stage))


def email_template_for(
    session: Session, account_id: str, step: int, plan: str | None
) -> tuple[str, str]:
    """(subject, body) for `step` and `plan` in the account's locale."""
    chosen = email_template_choice(session, account_id, step, plan)
    return chosen.subject, chosen.body


def email_template_source(
    session: Session, account_id: str, step: int, plan: str | None
) -> tuple[str, str, dict[str, Any] | None]:
    chosen = email_template_choice(session, account_id, step, plan)
    where = None if chosen.source == "built-in" else {"step": chosen.step, "plan": chosen.plan}
    return chosen.subject, chosen.body, where


# --- composing a message (the send activities and the previews) -----------------------------


def case_context(
    *,
    company_name: str,
    support_contact: str,
    customer_name: str | None,
    amount_due: int,
    currency: str,
    invoice_id: str,
    billing_link: str,
    failed_at: datetime,
    now: datetime,
    locale: str | None,
    decline_code: str = "",
) -> TemplateContext:
    """The template variables of a case, amounts and dates formatted for `locale`."""
    return TemplateContext(
        company_name=company_name,
        billing_link=billing_link,
        customer_name=customer_name or "there",
        amount=format_amount(amount_due, currency, locale),
        invoice_id=invoice_id,
        days_overdue=max(0, (now - failed_at).days),
        support_contact=support_contact,
        failed_on=format_day(failed_at, locale),
        decline_code=decline_code,
    )


@dataclass(frozen=True)
class ComposedEmail:
    subject: str
    text: str
    html: str
    locale: str


def _without_contact_lines(body: str) -> str:
    """A shipped text for an account with no support contact: its "Questions? Contact ..."
    line (the shipped texts keep {support_contact} on a line of its own) is left out."""
    kept = [line for line in body.split("\n") if "{support_contact}" not in line]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept))


def compose_email(chosen: ChosenTemplate, ctx: TemplateContext) -> ComposedEmail:
    """Subject, plain text and HTML of an email from its template."""
    body = chosen.body
    if chosen.source == "built-in" and not ctx.support_contact.strip():
        body = _without_contact_lines(body)
    subject = render(chosen.subject, ctx)
    text = render(body, ctx)
    if chosen.html:
        body_html = chosen.html.format(
            **{k: html.escape(v) for k, v in ctx.values().items()}
        )
    else:
        body_html = compose_html(subject, text, ctx, chosen.chain)
    return ComposedEmail(subject, text, body_html, chosen.locale)


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
    session: Session,
    account_id: str,
    text: str,
    plan: str | None = None,
    *,
    locale: str | None = None,
    step: int = 0,
    public_url: str | None = None,
) -> dict[str, Any]:
    """Validate and store the SMS template of an account (plan None/'') or of one plan, for
    every step (0) or one, in the account's default locale (None) or one locale. Nothing is
    stored when it is refused. Returns the preview of the stored template."""
    account = get_account(session, account_id)
    plan_key = _check_plan(plan)
    locale_key = _locale_key(locale)
    (step,) = _check_steps(account, [step], allow_zero=True)
    chain = locale_chain(locale_key or None, account.locale)
    validate_sms_template(text, account_sample_context(account, locale=chain[0]), chain)
    row = session.get(SmsTemplate, (account_id, plan_key, step, locale_key))
    if row is None:
        session.add(SmsTemplate(account_id=account_id, plan=plan_key, step=step,
                                locale=locale_key, body=text))
    else:
        row.body = text
    session.flush()
    return preview_sms(session, account_id, plan_key or None, locale=locale_key or None,
                       step=step or None, public_url=public_url)


def clear_sms_template(
    session: Session, account_id: str, plan: str | None = None, *, locale: str | None = None,
    step: int = 0,
) -> None:
    """Remove the account's (or a plan's) SMS template: the fallback applies again."""
    account = get_account(session, account_id)
    plan_key = _check_plan(plan)
    locale_key = _locale_key(locale)
    (step,) = _check_steps(account, [step], allow_zero=True)
    row = session.get(SmsTemplate, (account_id, plan_key, step, locale_key))
    if row is None:
        what = f"plan {plan_key!r}" if plan_key else "the account default"
        if locale_key:
            what += f" in locale {locale_key}"
        if step:
            what += f" at step {step}"
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
    locale: str | None = None,
    public_url: str | None = None,
) -> dict[str, Any]:
    """The SMS exactly as it would be sent to a sample customer on `plan` in `country` whose
    locale is `locale` (the account's default without one):
    `{"text", "encoding", "segments", "credits", "units", "plan", "country", "template",
    "template_source", "locale", "template_locale", "non_gsm7_chars", ...}`. With `step`,
    {days_overdue} is that step's offset in days and the step's template is used.

    With tracked links on (and `public_url` given), {billing_link} is the short link the engine
    sends, and `"untracked"` gives the same message with a typical full billing link
    (`TYPICAL_BILLING_LINK`, a Stripe hosted-invoice URL), to show the saving."""
    account = get_account(session, account_id)
    plan_key = _check_plan(plan)
    region = check_country(country or DEFAULT_PREVIEW_COUNTRY)
    locale_key = _locale_key(locale)
    days: int | None = None
    if step is not None:
        (step,) = _check_steps(account, [step])
        days = _offsets(account)[step - 1] // 86400
    chosen = sms_template_choice(
        session, account_id, plan_key or None, step=step or 0,
        step_count=len(_offsets(account)), locale=locale_key or None,
        account_locale=account.locale,
    )
    customer_locale = locale_key or account.locale or DEFAULT_LOCALE
    tracked = bool(account.track_links) and public_url is not None
    link = sample_short_link(public_url) if tracked and public_url else None
    ctx = account_sample_context(account, currency=currency, days_overdue=days,
                                 locale=customer_locale, billing_link=link)
    text = render_sms(chosen.body, ctx, chosen.chain)
    quote = quote_sms(session, account_id, region, text)
    result = asdict(quote)
    result.update(
        {
            "characters": len(text),
            "plan": plan_key or None,
            "country": region,
            "step": step,
            "locale": customer_locale,
            "template_locale": chosen.locale,
            "template": chosen.body,
            "template_source": chosen.source,
            "opt_out_appended": not has_opt_out(render(chosen.body, ctx)),
            "non_gsm7_chars": non_gsm7_chars(text),
            "sms_enabled": bool(account.sms_enabled),
            "tracked_link": tracked,
        }
    )
    if tracked:
        plain_ctx = account_sample_context(account, currency=currency, days_overdue=days,
                                           locale=customer_locale,
                                           billing_link=TYPICAL_BILLING_LINK)
        plain = quote_sms(session, account_id, region,
                          render_sms(chosen.body, plain_ctx, chosen.chain))
        result["untracked"] = {
            "text": plain.text, "segments": plain.segments, "credits": plain.credits,
            "characters": len(plain.text),
        }
        result["saving"] = {
            "characters": len(plain.text) - len(text),
            "segments": plain.segments - quote.segments,
            "credits": plain.credits - quote.credits,
        }
    return result


def sms_settings_json(session: Session, account_id: str) -> dict[str, Any]:
    """What `dunning sms show` prints: switches per step, templates in use."""
    account = get_account(session, account_id)
    offsets = _offsets(account)
    switches = {str(k): bool(v) for k, v in (account.sms_steps or {}).items()}
    rows = list(session.scalars(
        select(SmsTemplate)
        .where(SmsTemplate.account_id == account_id)
        .order_by(SmsTemplate.plan, SmsTemplate.step, SmsTemplate.locale)
    ))
    plans = {t.plan: t.body for t in rows if t.step == 0 and t.locale == ""}
    default = plans.pop("", None)
    localized = [
        {"plan": t.plan or None, "step": t.step or None, "locale": t.locale or None,
         "body": t.body}
        for t in rows if t.step != 0 or t.locale != ""
    ]
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
        "template": default if default is not None else sms_template_choice(
            session, account_id, None, account_locale=account.locale
        ).body,
        "template_source": "account" if default is not None else "built-in",
        "plan_templates": plans,
        "templates": localized,
        "locale": account.locale,
        "shipped_locales": list(SHIPPED_LOCALES),
        "opt_out_line": opt_out_line(locale_chain(None, account.locale)),
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
    locale: str | None = None,
) -> dict[str, Any]:
    """Validate and store an email template for one step (0 = every step), plan and locale
    (None: the account's default locale)."""
    account = get_account(session, account_id)
    (step,) = _check_steps(account, [step], allow_zero=True)
    plan_key = _check_plan(plan)
    locale_key = _locale_key(locale)
    validate_email_template(subject, body)
    row = session.get(EmailTemplate, (account_id, step, plan_key, locale_key))
    if row is None:
        session.add(
            EmailTemplate(account_id=account_id, step=step, plan=plan_key, locale=locale_key,
                          subject=subject, body=body)
        )
    else:
        row.subject = subject
        row.body = body
    session.flush()
    return {"account_id": account_id, "step": step, "plan": plan_key or None,
            "locale": locale_key or None, "subject": subject, "body": body}


def clear_email_template(
    session: Session, account_id: str, *, step: int = 0, plan: str | None = None,
    locale: str | None = None,
) -> None:
    account = get_account(session, account_id)
    (step,) = _check_steps(account, [step], allow_zero=True)
    plan_key = _check_plan(plan)
    row = session.get(EmailTemplate, (account_id, step, plan_key, _locale_key(locale)))
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
        .order_by(EmailTemplate.step, EmailTemplate.plan, EmailTemplate.locale)
    )
    return {
        "account_id": account.id,
        "schedule": account.schedule,
        "default": {"subject": DEFAULT_EMAIL_SUBJECT, "body": DEFAULT_EMAIL_BODY},
        "templates": [
            {"step": t.step, "plan": t.plan or None, "locale": t.locale or None,
             "subject": t.subject, "body": t.body}
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
    locale: str | None = None,
    public_url: str | None = None,
) -> dict[str, Any]:
    """The email for `step` as a sample customer on `plan` in `locale` would get it: subject,
    plain text and HTML."""
    account = get_account(session, account_id)
    (step,) = _check_steps(account, [step])
    plan_key = _check_plan(plan)
    locale_key = _locale_key(locale)
    offsets = _offsets(account)
    chosen = email_template_choice(
        session, account_id, step, plan_key or None, step_count=len(offsets),
        locale=locale_key or None, account_locale=account.locale,
    )
    link = (sample_short_link(public_url)
            if account.track_links and public_url is not None else None)
    ctx = account_sample_context(
        account, currency=currency, days_overdue=offsets[step - 1] // 86400,
        locale=locale_key or account.locale, billing_link=link,
    )
    email = compose_email(chosen, ctx)
    return {
        "account_id": account.id,
        "step": step,
        "plan": plan_key or None,
        "locale": locale_key or account.locale,
        "template_locale": chosen.locale,
        "subject": email.subject,
        "body": email.text,
        "html": email.html,
        "template": (
            "built-in" if chosen.source == "built-in"
            else {"step": chosen.step, "plan": chosen.plan}
        ),
    }
