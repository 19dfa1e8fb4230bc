"""Accounts: one business whose customers are reminded. Owns settings and credits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import phonenumbers
from sqlalchemy import select
from sqlalchemy.orm import Session

from dunning.domain.contract import (
    DEFAULT_GRACE,
    DEFAULT_QUIET_HOURS,
    DEFAULT_SCHEDULE,
    EMAIL_RE,
    InputError,
    check_id,
    format_duration,
    format_schedule,
    parse_duration,
    parse_link_hosts,
    parse_quiet_hours,
    parse_schedule,
)
from dunning.domain.locales import DEFAULT_LOCALE, normalize_locale
from dunning.platform.db.models import Account, SmsTemplate


@dataclass
class AccountOptions:
    """Options of `account create|update`; None means 'leave as it is' (or the default)."""

    company_name: str | None = None
    sms_sender: str | None = None
    email_from: str | None = None
    contact_email: str | None = None
    schedule: str | None = None
    grace: str | None = None
    quiet_hours: str | None = None
    timezone: str | None = None
    support_contact: str | None = None
    billing_link_hosts: str | None = None  # `host,*.domain`; '' or `any`: no restriction
    locale: str | None = None
    track_links: str | None = None  # on | off


QUIET_HOURS_OFF_WARNING = (
    "quiet hours are off: SMS go out at any hour, even where state law (e.g. Florida, "
    "Connecticut) or the TCPA limit calling hours; set --quiet-hours 08:00-21:00 to restore them"
)


def parse_switch(value: str, flag: str) -> bool:
    text = value.strip().lower()
    if text in ("on", "true", "yes", "1"):
        return True
    if text in ("off", "false", "no", "0"):
        return False
    raise InputError(flag, f"{value!r} is not on or off")


def normalize_sender(value: str) -> str:
    try:
        num = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise InputError(
            "sms-sender", f"{value!r} is not an E.164 number such as +14155550100"
        ) from None
    if not phonenumbers.is_valid_number(num):
        raise InputError("sms-sender", f"{value!r} is not a valid phone number")
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)


def _check_timezone(value: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise InputError(
            "timezone", f"{value!r} is not an IANA time zone such as Europe/Paris"
        ) from None
    return value


def _apply_options(account: Account, opts: AccountOptions) -> None:
    if opts.company_name is not None:
        name = opts.company_name.strip()
        if not name or len(name) > 200:
            raise InputError("company-name", "must be 1 to 200 characters")
        account.company_name = name
    if opts.sms_sender is not None:
        account.sms_sender = normalize_sender(opts.sms_sender) if opts.sms_sender else None
    for attr, flag in (("email_from", "email-from"), ("contact_email", "contact-email")):
        value = getattr(opts, attr)
        if value is not None:
            if value and not EMAIL_RE.match(value):
                raise InputError(flag, f"{value!r} is not an email address")
            setattr(account, attr, value or None)
    if opts.schedule is not None:
        account.schedule = format_schedule(parse_schedule(opts.schedule))
    if opts.grace is not None:
        account.grace_seconds = parse_duration(opts.grace, "grace")
    if opts.quiet_hours is not None:
        account.quiet_hours = parse_quiet_hours(opts.quiet_hours)
    if opts.timezone is not None:
        account.timezone = _check_timezone(opts.timezone)
    if opts.support_contact is not None:
        if len(opts.support_contact) > 200:
            raise InputError("support-contact", "must be at most 200 characters")
        account.support_contact = opts.support_contact or None
    if opts.billing_link_hosts is not None:
        hosts = parse_link_hosts(opts.billing_link_hosts)
        account.billing_link_hosts = ",".join(hosts) or None
    if opts.locale is not None:
        account.locale = normalize_locale(opts.locale)
    if opts.track_links is not None:
        account.track_links = parse_switch(opts.track_links, "track-links")


def create_account(session: Session, account_id: str, opts: AccountOptions) -> Account:
    check_id("account", account_id)
    if session.get(Account, account_id) is not None:
        raise InputError("account", f"{account_id!r} exists already (use `account update`)")
    if not opts.company_name:
        raise InputError("company-name", "is required")
    account = Account(
        id=account_id,
        company_name="",
        schedule=DEFAULT_SCHEDULE,
        grace_seconds=parse_duration(DEFAULT_GRACE),
        quiet_hours=DEFAULT_QUIET_HOURS,
        timezone="UTC",
        sms_enabled=False,
        sms_steps={},
        credit_balance=0,
        locale=DEFAULT_LOCALE,
        track_links=True,
    )
    _apply_options(account, opts)
    session.add(account)
    session.flush()
    return account


def support_contact(support: str | None, email_from: str | None) -> str:
    """Who customers are told to contact, in reminders (`{support_contact}`), previews and
    the HELP reply alike: the account's support contact, else its sender address."""
    return (support or email_from or "").strip()


def support_contact_of(account: Account) -> str:
    return support_contact(account.support_contact, account.email_from)


def unknown_account(account_id: str) -> InputError:
    """The one error for an account id that does not exist."""
    return InputError("account", f"unknown account {account_id!r}")


def get_account(session: Session, account_id: str, lock: bool = False) -> Account:
    """The account, or InputError("account", "unknown account ...") (the one lookup every
    service uses). `lock`: SELECT ... FOR UPDATE, the account row lock that serialises
    debits, refills and settings changes of one account."""
    account = session.get(Account, account_id, with_for_update=lock or None)
    if account is None:
        raise unknown_account(account_id)
    return account


def update_account(session: Session, account_id: str, opts: AccountOptions) -> Account:
    account = get_account(session, account_id)
    _apply_options(account, opts)
    session.flush()
    return account


def account_json(session: Session, account: Account) -> dict[str, Any]:
    offsets = parse_schedule(account.schedule)
    templates = {
        (t.plan or ""): t.body
        for t in session.scalars(select(SmsTemplate).where(
            SmsTemplate.account_id == account.id, SmsTemplate.step == 0, SmsTemplate.locale == ""
        ))
    }
    return {
        "account_id": account.id,
        "company_name": account.company_name,
        "sms_sender": account.sms_sender,
        "email_from": account.email_from,
        "contact_email": account.contact_email,
        "support_contact": account.support_contact,
        "schedule": account.schedule,
        "steps": [
            {"step": i + 1, "offset": format_duration(o), "email": True,
             "sms": account.sms_step_on(i + 1)}
            for i, o in enumerate(offsets)
        ],
        "grace": format_duration(account.grace_seconds),
        "quiet_hours": account.quiet_hours,
        "warnings": [QUIET_HOURS_OFF_WARNING] if account.quiet_hours == "off" else [],
        "timezone": account.timezone,
        "billing_link_hosts": (account.billing_link_hosts or "").split(",")
        if account.billing_link_hosts else [],
        "locale": account.locale,
        "track_links": bool(account.track_links),
        "sms_holdout_percent": account.sms_holdout_percent,
        "sms_ab_test": (
            {"percent": account.sms_ab_percent, "template_b": account.sms_ab_template}
            if account.sms_ab_percent is not None else None
        ),
        "sms_enabled": account.sms_enabled,
        "credit_balance": account.credit_balance,
        "auto_refill": (
            {"threshold": account.auto_refill_threshold, "amount": account.auto_refill_amount}
            if account.auto_refill_threshold is not None
            else None
        ),
        "sms_templates": templates,
    }
