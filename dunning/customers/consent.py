"""SMS consent: opt-out and opt-in keywords, the current state per (account, number), its history.

`OptOut` holds the current state of a number for an account (the send activity checks it before
every SMS); `ConsentEvent` is the append-only history: every opt-out, opt-in and other reply,
with its time, source and the provider's message id.

Keywords (CTIA, FCC 2024 rules, common platform defaults) are matched against the whole message,
trimmed, in any case, with inner whitespace collapsed and surrounding punctuation ignored
("Stop.", " stop all "). Anything longer is not a keyword: it is kept as a reply for the operator.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dunning.domain.outbound import scrub
from dunning.domain.templates import OPT_OUT_LINE
from dunning.events import outbox
from dunning.platform.db.models import Account, ConsentEvent, Customer, OptOut, utcnow

STOP_KEYWORDS = frozenset(
    {
        "STOP", "STOPALL", "STOP ALL", "UNSUBSCRIBE", "UNSUB", "CANCEL", "END", "QUIT",
        "OPTOUT", "OPT-OUT", "OPT OUT", "REVOKE",
    }
)
START_KEYWORDS = frozenset({"START", "UNSTOP", "YES"})
HELP_KEYWORDS = frozenset({"HELP", "INFO"})

# Plivo's MessageIntent (long codes and toll-free numbers).
INTENTS = {"optout": "opt_out", "optin": "opt_in", "help": "help"}

InboundKind = Literal["opt_out", "opt_in", "help", "other"]

_EDGE_PUNCT = " \t\r\n.,!?;:'\"()[]"
_DIGITS_RE = re.compile(r"^\d{6,15}$")
_NUMBER_LIKE = re.compile(r"\+?\d[\d\s().\-]{4,}\d")


def normalize_keyword(text: str | None) -> str:
    """' stop  all! ' -> 'STOP ALL'."""
    return " ".join((text or "").split()).strip(_EDGE_PUNCT).upper()


def classify_inbound(text: str | None, intent: str | None = None) -> tuple[InboundKind, str | None]:
    """The kind of an inbound message and the keyword that decided it.

    Plivo's MessageIntent wins when present; otherwise the whole message is the keyword.
    """
    kind = INTENTS.get((intent or "").strip().lower())
    keyword = normalize_keyword(text)
    if kind == "opt_out":
        return "opt_out", keyword if keyword in STOP_KEYWORDS else "intent:optout"
    if kind == "opt_in":
        return "opt_in", keyword if keyword in START_KEYWORDS else "intent:optin"
    if kind == "help":
        return "help", keyword if keyword in HELP_KEYWORDS else "intent:help"
    if keyword in STOP_KEYWORDS:
        return "opt_out", keyword
    if keyword in START_KEYWORDS:
        return "opt_in", keyword
    if keyword in HELP_KEYWORDS:
        return "help", keyword
    return "other", None


def normalize_number(raw: str | None) -> str | None:
    """A provider's number ('14155550123', '+1 415-555-0123') as E.164, or None if it is not one."""
    if not raw:
        return None
    digits = re.sub(r"[\s().\-]", "", raw.strip())
    digits = digits.removeprefix("+")
    if not _DIGITS_RE.match(digits) or digits.startswith("0"):
        return None
    return "+" + digits


def redact_numbers(text: str) -> str:
    """Replace anything that looks like a phone number, for log lines."""
    return _NUMBER_LIKE.sub("[number]", text)


def accounts_for_sender(session: Session, number: str) -> list[Account]:
    """Every account whose SMS sender is `number` (E.164), in id order."""
    candidates = {number, number.removeprefix("+")}
    return list(
        session.scalars(
            select(Account).where(Account.sms_sender.in_(candidates)).order_by(Account.id)
        )
    )


def is_opted_out(session: Session, account_id: str, phone_e164: str) -> bool:
    row = session.get(OptOut, (account_id, phone_e164))
    return bool(row is not None and row.opted_out)


def _set_state(
    session: Session,
    account_id: str,
    phone_e164: str,
    opted_out: bool,
    *,
    source: str,
    keyword: str | None,
    provider_message_id: str | None,
    at: datetime | None,
) -> bool:
    now = at or utcnow()
    key = (account_id, phone_e164)
    keyword = keyword[:32] if keyword else None
    source = source[:64]
    changed = False
    row = session.get(OptOut, key, with_for_update=True)
    if row is None:
        try:
            with session.begin_nested():
                session.add(
                    OptOut(
                        account_id=account_id, phone_e164=phone_e164, opted_out=opted_out,
                        source=source, keyword=keyword, changed_at=now,
                    )
                )
            changed = opted_out  # absent row meant "not opted out"
        except IntegrityError:  # a concurrent writer inserted it first
            row = session.get(OptOut, key, with_for_update=True, populate_existing=True)
    if row is not None and row.opted_out != opted_out:
        row.opted_out = opted_out
        row.source = source
        row.keyword = keyword
        row.changed_at = now
        changed = True
    session.add(
        ConsentEvent(
            account_id=account_id, phone_e164=phone_e164,
            action="opt_out" if opted_out else "opt_in", source=source, keyword=keyword,
            provider_message_id=provider_message_id[:64] if provider_message_id else None,
            created_at=now,
        )
    )
    if changed:  # outbound event, in this transaction; ids only, never the number
        customers = session.scalars(select(Customer.customer_id).where(
            Customer.account_id == account_id, Customer.phone_e164 == phone_e164
        ).order_by(Customer.customer_id).limit(100)).all()
        outbox.record(session, account_id,
                      "consent.opted_out" if opted_out else "consent.opted_in",
                      {"customer_ids": list(customers), "source": scrub(source, 64),
                       "keyword": keyword},
                      occurred_at=now)
    return changed


def record_opt_out(
    session: Session,
    account_id: str,
    phone_e164: str,
    *,
    source: str,
    keyword: str | None = None,
    provider_message_id: str | None = None,
    at: datetime | None = None,
) -> bool:
    """Opt the number out for the account; True when it was not opted out before."""
    return _set_state(session, account_id, phone_e164, True, source=source, keyword=keyword,
                      provider_message_id=provider_message_id, at=at)


def record_opt_in(
    session: Session,
    account_id: str,
    phone_e164: str,
    *,
    source: str,
    keyword: str | None = None,
    provider_message_id: str | None = None,
    at: datetime | None = None,
) -> bool:
    """Opt the number back in for the account; True when it was opted out before."""
    return _set_state(session, account_id, phone_e164, False, source=source, keyword=keyword,
                      provider_message_id=provider_message_id, at=at)


def record_reply(
    session: Session,
    account_id: str,
    phone_e164: str,
    *,
    source: str,
    provider_message_id: str | None = None,
) -> None:
    """Keep a reply that is no keyword, for the operator (the text stays with the provider)."""
    session.add(
        ConsentEvent(
            account_id=account_id, phone_e164=phone_e164, action="reply", source=source[:64],
            keyword=None,
            provider_message_id=provider_message_id[:64] if provider_message_id else None,
        )
    )


def support_contact_of(account: Account) -> str:
    return (account.support_contact or account.contact_email or account.email_from or "").strip()


def help_text(account: Account) -> str:
    """The HELP reply: program, support contact, how to opt out."""
    contact = support_contact_of(account).rstrip(".")
    text = f"{account.company_name} payment reminders."
    if contact:
        text += f" For help, contact {contact}."
    return f"{text} {OPT_OUT_LINE}"


def _join_names(names: Iterable[str]) -> str:
    unique = list(dict.fromkeys(n for n in names if n))
    if len(unique) <= 1:
        return unique[0] if unique else "these"
    return ", ".join(unique[:-1]) + " and " + unique[-1]


def stop_confirmation_text(company_names: Iterable[str]) -> str:
    """The one confirmation text an opt-out may get."""
    return (
        f"You are unsubscribed from {_join_names(company_names)} payment reminders. "
        "No more messages will be sent. Reply START to resubscribe."
    )


__all__ = [
    "HELP_KEYWORDS",
    "START_KEYWORDS",
    "STOP_KEYWORDS",
    "InboundKind",
    "accounts_for_sender",
    "classify_inbound",
    "help_text",
    "is_opted_out",
    "normalize_keyword",
    "normalize_number",
    "record_opt_in",
    "record_opt_out",
    "record_reply",
    "redact_numbers",
    "stop_confirmation_text",
    "support_contact_of",
]
