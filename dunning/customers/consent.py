"""SMS consent: opt-out and opt-in keywords, the current state per (account, number), its history.

`OptOut` holds the current state of a number for an account (the send activity checks it before
every SMS); `ConsentEvent` is the append-only history: every opt-out, opt-in and other reply,
with its time, source and the provider's message id.

Keywords (CTIA, FCC 2024 rules, common platform defaults, and the FCC's "any reasonable means"
of revoking consent, in the shipped languages; sources in docs/COMPLIANCE.md) are matched against
the whole message, in any case, with accents, punctuation and extra whitespace ignored ("Stop.",
" stop all ", "Opt-out!", "NO MÁS", "s.t.o.p") and polite words around them dropped ("stop
please", "por favor baja"). A message that says more than a keyword ("Stop by later", "can you
stop by at 5") is no keyword: it is kept as a reply for the operator.

The HELP answer and the STOP confirmation are written in the customer's language (the
customer's locale, else the account's default; English where none is shipped).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from datetime import datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dunning.accounts.accounts import support_contact_of as support_contact_of  # one rule
from dunning.domain.locales import DEFAULT_LOCALE, join_names, locale_chain, text_for
from dunning.domain.outbound import scrub
from dunning.domain.pii import redact_numbers as redact_numbers  # re-exported (old home)
from dunning.events import outbox
from dunning.platform.db.models import Account, ConsentEvent, Customer, OptOut, utcnow

STOP_KEYWORDS = frozenset(
    {
        # CTIA / carrier defaults and the FCC's list
        "STOP", "STOPALL", "STOP ALL", "UNSUBSCRIBE", "UNSUB", "CANCEL", "END", "QUIT",
        "OPTOUT", "OPT OUT", "REVOKE",
        # "any reasonable means": plain-English revocations
        "UNSUBSCRIBE ME", "OPT ME OUT", "I WANT TO OPT OUT", "REVOKE CONSENT",
        "STOP TEXTING", "STOP TEXTING ME", "STOP MESSAGING ME", "STOP SENDING ME TEXTS",
        "STOP SENDING ME MESSAGES", "STOP MESSAGES", "STOP TEXTS", "STOP SMS", "STOP IT",
        "REMOVE ME", "REMOVE", "TAKE ME OFF", "TAKE ME OFF YOUR LIST", "DO NOT TEXT",
        "DO NOT TEXT ME", "DONT TEXT ME", "DON T TEXT ME", "NO MORE TEXTS", "NO MORE MESSAGES",
        "LEAVE ME ALONE",
        # Spanish
        "PARAR", "PARA", "ALTO", "BAJA", "DAR DE BAJA", "DARME DE BAJA", "DARSE DE BAJA",
        "CANCELAR", "DETENER", "NO MAS", "NO MAS MENSAJES", "NO ME ESCRIBAN",
        "DESUSCRIBIR", "DESUSCRIBIRME", "ELIMINAR", "FIN",
        # French, German, Portuguese
        "ARRET", "ARRETER", "DESABONNER", "DESINSCRIRE", "STOPP", "ABMELDEN",
        "ABBESTELLEN", "PARE", "SAIR", "DESCADASTRAR",
    }
)
START_KEYWORDS = frozenset({"START", "UNSTOP", "YES"})
HELP_KEYWORDS = frozenset({"HELP", "INFO", "AYUDA", "AIDE", "HILFE", "AJUDA"})
# Polite words around a keyword ("stop please", "por favor baja") do not make it a sentence.
_FILLERS = frozenset({"PLEASE", "PLS", "PLZ", "THANKS", "THANK YOU", "THX", "POR FAVOR",
                      "GRACIAS", "NOW", "YA", "MERCI", "BITTE", "OBRIGADO", "OBRIGADA"})

# Plivo's MessageIntent (long codes and toll-free numbers).
INTENTS = {"optout": "opt_out", "optin": "opt_in", "help": "help"}

InboundKind = Literal["opt_out", "opt_in", "help", "other"]

_DIGITS_RE = re.compile(r"^\d{6,15}$")


def normalize_keyword(text: str | None) -> str:
    """' stop  all! ' -> 'STOP ALL'; 'Opt-out.' -> 'OPT OUT'; 'No más' -> 'NO MAS';
    's.t.o.p' -> 'STOP'."""
    folded = unicodedata.normalize("NFKD", text or "")
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    folded = folded.replace("'", "").replace("\u2019", "")
    words = re.sub(r"[^0-9A-Za-z]+", " ", folded).upper().split()
    if len(words) > 1 and all(len(w) == 1 for w in words):
        words = ["".join(words)]  # S.T.O.P
    return " ".join(words)


def _strip_fillers(keyword: str) -> str:
    words = keyword.split()
    changed = True
    while changed and len(words) > 1:
        changed = False
        for size in (2, 1):
            if len(words) > size and " ".join(words[:size]) in _FILLERS:
                words, changed = words[size:], True
                break
            if len(words) > size and " ".join(words[-size:]) in _FILLERS:
                words, changed = words[:-size], True
                break
    return " ".join(words)


def classify_inbound(text: str | None, intent: str | None = None) -> tuple[InboundKind, str | None]:
    """The kind of an inbound message and the keyword that decided it.

    Plivo's MessageIntent wins when present; otherwise the whole message (without polite words
    around it) is the keyword.
    """
    kind = INTENTS.get((intent or "").strip().lower())
    exact = normalize_keyword(text)
    keyword = _strip_fillers(exact)  # opt-outs and HELP only: an opt-in must be exact
    if kind == "opt_out":
        return "opt_out", keyword if keyword in STOP_KEYWORDS else "intent:optout"
    if kind == "opt_in":
        return "opt_in", exact if exact in START_KEYWORDS else "intent:optin"
    if kind == "help":
        return "help", keyword if keyword in HELP_KEYWORDS else "intent:help"
    if keyword in STOP_KEYWORDS:
        return "opt_out", keyword
    if exact in START_KEYWORDS:
        return "opt_in", exact
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


def reply_chain(session: Session, account: Account, phone_e164: str) -> list[str]:
    """The locale chain of replies to `phone_e164`: the customer's locale (the first customer
    of the account with that number), else the account's default."""
    locale = session.scalar(
        select(Customer.locale)
        .where(Customer.account_id == account.id, Customer.phone_e164 == phone_e164,
               Customer.locale.is_not(None))
        .order_by(Customer.customer_id)
        .limit(1)
    )
    return locale_chain(locale, account.locale)


def help_text(account: Account, chain: list[str] | None = None) -> str:
    """The HELP reply: program, support contact, how to opt out, in the chain's language."""
    chain = chain or locale_chain(None, account.locale)
    contact = support_contact_of(account).rstrip(".")
    key = "help" if contact else "help_no_contact"
    text, language = text_for(chain, key)
    text = text.format(company_name=account.company_name, support_contact=contact)
    return f"{text} {text_for([language], 'opt_out')[0]}"


def stop_confirmation_text(
    company_names: Iterable[str], chain: list[str] | None = None
) -> str:
    """The one confirmation text an opt-out may get, in the chain's language."""
    text, language = text_for(chain or [DEFAULT_LOCALE], "stop_confirmation")
    return text.format(company_names=join_names(company_names, language) or "these")


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
    "reply_chain",
    "stop_confirmation_text",
    "support_contact_of",
]
