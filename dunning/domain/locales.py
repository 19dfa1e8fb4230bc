"""Locales: BCP 47 tags, the fallback chain, CLDR formatting (Babel) and the shipped texts.

A customer's locale comes from the import (`locale` column), from Stripe (`preferred_locales`) or
from the account's default. Tags are stored in canonical BCP 47 form (`pt-BR`, `es`, `zh-Hant-TW`)
and must name a locale CLDR knows (so amounts and dates can be formatted for it).

Texts are looked up along a chain: the customer's locale, its language (`pt-BR` -> `pt`), the
account's default locale and its language, then English. Shipped texts (SMS per stage, email
subject and body per stage, the opt-out line, the HELP answer, the STOP confirmation, the email's
button and footer) live in `dunning/domain/catalogs/<language>.json`.

Formatting never emits a no-break space (U+00A0, U+202F): one would turn an SMS into UCS-2.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from datetime import date, datetime
from decimal import Decimal
from importlib import resources
from typing import Any, Literal

from babel import Locale, UnknownLocaleError
from babel.dates import format_date
from babel.lists import format_list
from babel.numbers import format_currency

from dunning.domain import money
from dunning.domain.contract import InputError

DEFAULT_LOCALE = "en"
SHIPPED_LOCALES = ("en", "es", "fr", "de", "pt", "ja")
MAX_LOCALE_LENGTH = 35

Stage = Literal["first", "reminder", "final"]

_TAG_RE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*$")
_NARROW_SPACES = str.maketrans({"\u00a0": " ", "\u202f": " ", "\u2009": " "})
_ALPHA_SYMBOL = re.compile(r"^(-?)([A-Za-z]{2,3})(\d)")


# --- tags ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _parse(tag: str) -> Locale:
    return Locale.parse(tag.replace("_", "-"), sep="-")


def normalize_locale(tag: str | None, field_name: str = "locale") -> str:
    """`pt_br`, `PT-br` -> `pt-BR`; InputError for anything that is not a BCP 47 tag of a
    locale CLDR knows (e.g. `xx`, `en-XX`, `english`)."""
    text = (tag or "").strip()
    if not text:
        raise InputError(field_name, "is empty; use a BCP 47 tag such as en, es or pt-BR")
    if len(text) > MAX_LOCALE_LENGTH or not _TAG_RE.match(text):
        raise InputError(
            field_name, f"{tag!r} is not a BCP 47 language tag such as en, es, fr-CA or pt-BR"
        )
    try:
        loc = _parse(text)
    except (UnknownLocaleError, ValueError):
        raise InputError(
            field_name, f"{tag!r} is not a locale CLDR knows; use e.g. en, es, fr, de, pt-BR"
        ) from None
    return "-".join(p for p in (loc.language, loc.script, loc.territory) if p)


def locale_or_none(tag: str | None) -> str | None:
    """A stored or provider-given tag, normalized; None when absent or unusable."""
    if not tag:
        return None
    try:
        return normalize_locale(tag)
    except InputError:
        return None


def language_of(tag: str) -> str:
    return tag.split("-", 1)[0].lower()


def locale_chain(requested: str | None, account_default: str | None) -> list[str]:
    """`pt-BR`, account `de` -> [`pt-BR`, `pt`, `de`, `en`]: where texts are looked up."""
    chain: list[str] = []
    for tag in (requested, account_default, DEFAULT_LOCALE):
        tag = locale_or_none(tag)
        if tag is None:
            continue
        for candidate in (tag, language_of(tag)):
            if candidate not in chain:
                chain.append(candidate)
    return chain


def babel_locale(tag: str | None) -> Locale:
    normalized = locale_or_none(tag) or DEFAULT_LOCALE
    return _parse(normalized)


# --- formatting ---------------------------------------------------------------------------


# Minor units come from the ISO 4217 list (one rule: dunning.domain.money); Babel formats.
currency_decimals = money.currency_decimals


def format_amount(minor: int, currency: str, locale: str | None = DEFAULT_LOCALE) -> str:
    """An amount in minor units for people of `locale`: 4900 USD en -> `$49.00`,
    4900 EUR de -> `49,00 €`, 4900 JPY ja -> `￥4,900`, 4900 BRL pt-BR -> `R$ 49,00`."""
    code = (currency or "").upper()
    decimals = currency_decimals(code)
    value = Decimal(minor).scaleb(-decimals)
    text = format_currency(value, code, locale=babel_locale(locale), currency_digits=True)
    text = text.translate(_NARROW_SPACES)
    # `CHF49.00` -> `CHF 49.00`: a letter code glued to the digits reads badly.
    return _ALPHA_SYMBOL.sub(r"\1\2 \3", text)


def format_day(day: date | datetime, locale: str | None = DEFAULT_LOCALE) -> str:
    """A date for people of `locale`: November 29, 2026 / 29. November 2026."""
    if isinstance(day, datetime):
        day = day.date()
    return str(format_date(day, "long", locale=babel_locale(locale))).translate(_NARROW_SPACES)


def join_names(names: Iterable[str], locale: str | None = DEFAULT_LOCALE) -> str:
    unique = list(dict.fromkeys(n for n in names if n))
    if not unique:
        return ""
    return str(format_list(unique, locale=babel_locale(locale))).translate(_NARROW_SPACES)


# --- shipped texts ------------------------------------------------------------------------


@functools.cache
def catalog(language: str) -> dict[str, Any] | None:
    """The shipped texts of a language (`en`, `es`, ...), or None when none are shipped."""
    if language not in SHIPPED_LOCALES:
        return None
    path = resources.files("dunning.domain").joinpath("catalogs", f"{language}.json")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


@functools.cache
def email_layout() -> str:
    path = resources.files("dunning.domain").joinpath("catalogs", "email.html")
    return path.read_text(encoding="utf-8")


def shipped_language(chain: Iterable[str]) -> str:
    """The first language of `chain` with shipped texts (English at the latest)."""
    for tag in chain:
        if language_of(tag) in SHIPPED_LOCALES:
            return language_of(tag)
    return DEFAULT_LOCALE


def text_for(chain: Iterable[str], key: str) -> tuple[str, str]:
    """(text, language) of a shipped one-liner (`opt_out`, `help`, `button`, ...)."""
    language = shipped_language(chain)
    data = catalog(language) or {}
    return str(data[key]), language


def stage_of(step: int, step_count: int) -> Stage:
    """The tone of a reminder: the first one, the last one (of two or more), or in between."""
    if step <= 1:
        return "first"
    if step_count and step >= step_count:
        return "final"
    return "reminder"


def shipped_sms(language: str, stage: Stage) -> str:
    data = catalog(language) or catalog(DEFAULT_LOCALE) or {}
    return str(data["sms"][stage])


def shipped_email(language: str, stage: Stage) -> tuple[str, str]:
    data = catalog(language) or catalog(DEFAULT_LOCALE) or {}
    email = data["email"][stage]
    return str(email["subject"]), str(email["body"])


def opt_out_lines() -> list[str]:
    """Every shipped opt-out line (a template may end with any of them)."""
    lines = []
    for language in SHIPPED_LOCALES:
        data = catalog(language)
        if data is not None:
            lines.append(str(data["opt_out"]))
    return lines


__all__ = [
    "DEFAULT_LOCALE",
    "SHIPPED_LOCALES",
    "babel_locale",
    "catalog",
    "currency_decimals",
    "email_layout",
    "format_amount",
    "format_day",
    "join_names",
    "language_of",
    "locale_chain",
    "locale_or_none",
    "normalize_locale",
    "opt_out_lines",
    "shipped_email",
    "shipped_language",
    "shipped_sms",
    "stage_of",
    "text_for",
]
