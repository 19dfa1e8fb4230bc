"""What an SMS costs in credits, and what a credit is worth.

A text costs segments x the rate of its destination country (ISO 3166 alpha-2), in credits per
segment. Rates live in `sms_rates`: a row per country, plus the account's default under region
'*'; without either a segment costs DEFAULT_RATE (1). The send activity and `dunning sms preview`
both price through `sms_cost`, so a preview always shows what a send charges.

A credit's display price (`credit_price_minor` in minor units of `credit_currency`, e.g. 1 USD
cent) only shows balances and ledgers in money ("120 credits (= $1.20)") and prices Stripe
refills; the engine itself counts credits.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dunning.accounts.accounts import get_account
from dunning.domain import money
from dunning.domain.contract import InputError
from dunning.domain.locales import format_amount
from dunning.domain.money import currency_decimals
from dunning.domain.phones import PhoneError, normalize_region
from dunning.platform.db.models import Account, SmsRate

DEFAULT_RATE = 1
DEFAULT_REGION = "*"
MAX_RATE = 10_000
MAX_PRICE_MINOR = 1_000_000  # one credit at most 10,000.00 in a 2-decimal currency
STRIPE_MAX_CHARGE_MINOR = 99_999_999  # Stripe's largest charge amount


def check_country(country: str | None) -> str:
    """An ISO 3166 alpha-2 code in any case -> upper case (the phone numbers' region rule,
    `dunning.domain.phones.normalize_region`); InputError("country", ...) otherwise."""
    try:
        code = normalize_region(country)
    except PhoneError as exc:
        raise InputError("country", exc.reason) from None
    if code is None:
        raise InputError("country", "is required, an ISO 3166 alpha-2 code such as FR")
    return code


def check_rate(credits: int, field_name: str = "credits") -> int:
    if isinstance(credits, bool) or not isinstance(credits, int) or credits < 1:
        raise InputError(field_name, "must be a whole number of credits per segment, at least 1")
    if credits > MAX_RATE:
        raise InputError(field_name, f"must be at most {MAX_RATE} credits per segment")
    return credits


# --- rates ---------------------------------------------------------------------------------


def rate_for(session: Session, account_id: str, region: str | None) -> int:
    """Credits per segment for a destination region (ISO 3166 alpha-2): the country's rate,
    else the account's default, else DEFAULT_RATE."""
    code = (region or "").strip().upper()
    wanted = [code, DEFAULT_REGION] if code else [DEFAULT_REGION]
    rows = dict(
        session.execute(
            select(SmsRate.region, SmsRate.credits_per_segment).where(
                SmsRate.account_id == account_id, SmsRate.region.in_(wanted)
            )
        ).all()
    )
    if code and code in rows:
        return int(rows[code])
    return int(rows.get(DEFAULT_REGION, DEFAULT_RATE))


def sms_cost(session: Session, account_id: str, region: str | None, segments: int) -> int:
    return segments * rate_for(session, account_id, region)


def set_rate(
    session: Session, account_id: str, country: str | None, credits: int
) -> dict[str, Any]:
    """Set the rate of one country, or (country None) the account's default rate."""
    get_account(session, account_id)
    region = DEFAULT_REGION if country is None else check_country(country)
    check_rate(credits, "default" if country is None else "credits")
    row = session.get(SmsRate, (account_id, region))
    if row is None:
        session.add(SmsRate(account_id=account_id, region=region, credits_per_segment=credits))
    else:
        row.credits_per_segment = credits
    session.flush()
    return rates_json(session, account_id)


def unset_rate(session: Session, account_id: str, country: str | None) -> dict[str, Any]:
    """Remove a country's rate (it follows the default again), or reset the default to 1."""
    get_account(session, account_id)
    region = DEFAULT_REGION if country is None else check_country(country)
    row = session.get(SmsRate, (account_id, region))
    if row is None:
        what = "default rate" if country is None else f"rate for {region}"
        raise InputError("default" if country is None else "country",
                         f"account {account_id!r} has no {what}")
    session.delete(row)
    session.flush()
    return rates_json(session, account_id)


def rates_json(session: Session, account_id: str) -> dict[str, Any]:
    get_account(session, account_id)
    rows = {
        r.region: int(r.credits_per_segment)
        for r in session.scalars(select(SmsRate).where(SmsRate.account_id == account_id))
    }
    default = rows.pop(DEFAULT_REGION, None)
    return {
        "account_id": account_id,
        "default": default if default is not None else DEFAULT_RATE,
        "default_source": "account" if default is not None else "built-in",
        "rates": [{"country": k, "credits_per_segment": v} for k, v in sorted(rows.items())],
    }


# --- display price of a credit -----------------------------------------------------------


def check_currency(currency: str) -> str:
    """The credit price's currency: `dunning.domain.money.check_currency` (the one rule)."""
    return money.check_currency("currency", currency)


def parse_price(price: str, currency: str) -> int:
    """'0.01' USD -> 1 (minor units). Refuses what the currency's minor unit cannot express."""
    code = check_currency(currency)
    try:
        value = Decimal(str(price).strip())
    except (InvalidOperation, ValueError):
        raise InputError("price", f"{price!r} is not a number such as 0.01") from None
    if not value.is_finite() or value <= 0:
        raise InputError("price", "must be a positive amount such as 0.01")
    minor = value.scaleb(currency_decimals(code))
    if minor != minor.to_integral_value():
        raise InputError(
            "price",
            f"{price} {code} is finer than the currency's smallest unit "
            f"({Decimal(1).scaleb(-currency_decimals(code))} {code})",
        )
    if minor > MAX_PRICE_MINOR:
        raise InputError("price", "is too large for the price of one credit")
    return int(minor)


def format_price(minor: int, currency: str) -> str:
    """1 USD -> '0.01' (plain decimal, as given on the command line)."""
    decimals = currency_decimals(currency)
    return f"{Decimal(minor).scaleb(-decimals):.{decimals}f}"


def credits_value(account: Account, credits: int) -> str | None:
    """What `credits` are worth at the account's display price, e.g. '$1.20' (None: no price)."""
    if account.credit_price_minor is None or not account.credit_currency:
        return None
    return format_amount(credits * account.credit_price_minor, account.credit_currency)


def price_json(account: Account) -> dict[str, Any] | None:
    if account.credit_price_minor is None or not account.credit_currency:
        return None
    return {
        "per_credit": format_price(account.credit_price_minor, account.credit_currency),
        "per_credit_minor": account.credit_price_minor,
        "currency": account.credit_currency,
        "display": format_amount(account.credit_price_minor, account.credit_currency),
    }


def set_price(
    session: Session, account_id: str, price: str | None, currency: str | None
) -> dict[str, Any]:
    """Set (or, with price None, clear) the display price of one credit."""
    account = get_account(session, account_id, lock=True)
    if price is None:
        if account.refill_gateway == "stripe" and account.auto_refill_amount:
            raise InputError(
                "price",
                "Stripe auto-refill prices refills with it: switch auto-refill to the "
                "simulated gateway or off first",
            )
        account.credit_price_minor = None
        account.credit_currency = None
    else:
        code = check_currency(currency or account.credit_currency or "")
        minor = parse_price(price, code)
        if account.refill_gateway == "stripe" and account.auto_refill_amount:
            check_charge(account.auto_refill_amount, minor, code)
        account.credit_price_minor = minor
        account.credit_currency = code
    session.flush()
    return {"account_id": account_id, "price": price_json(account)}


def charge_minor(credits: int, price_minor: int) -> int:
    return credits * price_minor


def check_charge(credits: int, price_minor: int, currency: str) -> int:
    amount = charge_minor(credits, price_minor)
    if amount > STRIPE_MAX_CHARGE_MINOR:
        raise InputError(
            "amount",
            f"a refill of {credits} credits would charge {format_amount(amount, currency)}, "
            f"more than a card payment can take; refill fewer credits at a time",
        )
    return amount
