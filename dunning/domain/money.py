"""Money: ISO 4217 currency codes with their minor units, and amounts for people.

Pure and sandbox-safe (stdlib only): the workflow checks its input with `check_currency`.

One rule for currencies, on every path (the workflow's argument, the Python client, `dunning
start`, Stripe events, credit prices): a code is accepted in any case (`usd`, as Stripe sends
it), stored upper case, and must be an active ISO 4217 currency; anything else is refused with
an InputError naming the field. Amounts are integers in the currency's minor units (its
ISO 4217 exponent: 2 for USD, 0 for JPY, 3 for KWD).
"""

from __future__ import annotations

from typing import Final

from dunning.errors import InputError

# ISO 4217 (List One), currencies with a minor unit: code -> exponent. Funds, precious metals
# and testing codes (XAU, XDR, XTS, XXX, ... minor unit "N.A.") are not payment currencies.
_EXPONENT_0 = (
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
    "VUV", "XAF", "XOF", "XPF",
)
_EXPONENT_3 = ("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND")
_EXPONENT_4 = ("CLF", "UYW")
_EXPONENT_2 = (
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF",
    "CHE", "CHF", "CHW", "CNY", "COP", "COU", "CRC", "CUP", "CVE", "CZK", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GTQ", "GYD",
    "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IRR", "JMD", "KES", "KGS", "KHR", "KPW",
    "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT",
    "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK",
    "NPR", "NZD", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "QAR", "RON", "RSD", "RUB", "SAR",
    "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP",
    "SZL", "THB", "TJS", "TMT", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "USD", "USN", "UYU",
    "UZS", "VED", "VES", "WST", "XCD", "XCG", "YER", "ZAR", "ZMW", "ZWG",
)
MINOR_UNITS: Final[dict[str, int]] = {
    **dict.fromkeys(_EXPONENT_2, 2),
    **dict.fromkeys(_EXPONENT_0, 0),
    **dict.fromkeys(_EXPONENT_3, 3),
    **dict.fromkeys(_EXPONENT_4, 4),
}


def is_currency(code: str) -> bool:
    """An ISO 4217 code, upper case, of a currency with a minor unit."""
    return code in MINOR_UNITS


def check_currency(field_name: str, value: object) -> str:
    """`usd` / ` USD ` -> `USD`; InputError(field_name, ...) for anything that is not an ISO
    4217 currency code."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(field_name, "is required, an ISO 4217 currency code such as USD")
    code = value.strip().upper()
    if code not in MINOR_UNITS:
        shown = value.strip()[:16]
        raise InputError(field_name, f"{shown!r} is not an ISO 4217 currency code such as USD")
    return code


def currency_decimals(currency: str) -> int:
    """The ISO 4217 minor unit (exponent) of a currency; 2 for a code not in the list."""
    return MINOR_UNITS.get((currency or "").strip().upper(), 2)


# Amounts for people are formatted with Babel (CLDR) for a locale: dunning.domain.locales.


__all__ = [
    "MINOR_UNITS",
    "check_currency",
    "currency_decimals",
    "is_currency",
]
