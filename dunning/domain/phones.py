"""Phone number validation for SMS: one function, `validate_phone`, used by the CSV import and by
the billing-source sync alike.

A number is accepted when `phonenumbers` parses it (with the row's region, else a default region,
else as an international number written with `+`), it is valid (not merely possible) and its type
can receive SMS (`SMS_TYPES`). Anything else raises `PhoneError` with a stable `code` and a
`reason` meant for people ("landline (FIXED_LINE) cannot receive SMS").

Speed: importing this module turns on phonenumbers' pattern cache (`enable_pattern_cache`, where
the installed version has it): with numbers from many regions the `re` module's own cache of 512
patterns thrashes and every check recompiles its regular expressions (30x slower). The number type
is computed once per number and validity and time zones are derived from it (see
`validate_phone`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import phonenumbers
from phonenumbers import (
    NumberParseException,
    PhoneNumber,
    PhoneNumberFormat,
    PhoneNumberType,
    ValidationResult,
    phonenumberutil,
)
from phonenumbers import timezone as pn_timezone
from phonenumbers.phonemetadata import PhoneMetadata

_enable_cache = getattr(phonenumbers, "enable_pattern_cache", None)
if _enable_cache is not None:  # phonenumbers >= 9.0.43; older versions just run slower
    _enable_cache()

# phonenumbers.number_type(n) is _number_type_helper(nsn, metadata of region_code_for_number(n));
# with the region needed anyway, calling the helper saves computing the region twice (a quarter
# of the cost for NANPA numbers). Falls back to number_type if the internals ever change;
# tests/test_phones.py checks both agree.
_type_helper = getattr(phonenumberutil, "_number_type_helper", None)
_metadata_for = getattr(PhoneMetadata, "metadata_for_region_or_calling_code", None)

#: Number types that can receive SMS.
SMS_TYPES: Final = frozenset({"MOBILE", "FIXED_LINE_OR_MOBILE", "VOIP", "PERSONAL_NUMBER"})

TYPE_NAMES: Final[dict[int, str]] = {
    PhoneNumberType.FIXED_LINE: "FIXED_LINE",
    PhoneNumberType.MOBILE: "MOBILE",
    PhoneNumberType.FIXED_LINE_OR_MOBILE: "FIXED_LINE_OR_MOBILE",
    PhoneNumberType.TOLL_FREE: "TOLL_FREE",
    PhoneNumberType.PREMIUM_RATE: "PREMIUM_RATE",
    PhoneNumberType.SHARED_COST: "SHARED_COST",
    PhoneNumberType.VOIP: "VOIP",
    PhoneNumberType.PERSONAL_NUMBER: "PERSONAL_NUMBER",
    PhoneNumberType.PAGER: "PAGER",
    PhoneNumberType.UAN: "UAN",
    PhoneNumberType.VOICEMAIL: "VOICEMAIL",
    PhoneNumberType.UNKNOWN: "UNKNOWN",
}

#: How a rejected type is named in reasons.
_TYPE_WORDS: Final[dict[str, str]] = {
    "FIXED_LINE": "landline",
    "TOLL_FREE": "toll-free number",
    "PREMIUM_RATE": "premium-rate number",
    "SHARED_COST": "shared-cost number",
    "UAN": "universal access number",
    "PAGER": "pager",
    "VOICEMAIL": "voicemail access number",
    "UNKNOWN": "number of unknown type",
}

#: ISO 3166 alpha-2 regions phonenumbers knows (245 in 9.0).
REGIONS: Final = frozenset(phonenumbers.SUPPORTED_REGIONS)

#: Common non-ISO spellings, only used to suggest the right code in a reason.
_REGION_HINTS: Final = {"UK": "GB", "EL": "GR", "KS": "XK", "USA": "US", "GBR": "GB"}

_NON_GEO_REGION: Final = "001"  # phonenumbers' region for +800, +870, +882 ... numbers
_PLUS_OR_DIGIT = re.compile(r"[+\uFF0B0-9\uFF10-\uFF19\u0660-\u0669\u06F0-\u06F9]")
_DIGITS = re.compile(r"\d")

# Time zones of non-geographical types (VOIP, PERSONAL_NUMBER ...) depend on the country
# calling code alone; cache them per (calling code, type).
_COUNTRY_ZONES: dict[tuple[int, int], tuple[str, ...]] = {}


class PhoneError(ValueError):
    """A number that cannot be used for SMS.

    `code` is stable for programs: missing, not_a_number, too_short, too_long, invalid_length,
    invalid_for_region, not_sms_capable, unknown_region, invalid_country_code, no_region.
    `reason` is a sentence for people.
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason

    def __reduce__(self) -> tuple[type[PhoneError], tuple[str, str]]:
        return (PhoneError, (self.code, self.reason))


@dataclass(frozen=True, slots=True)
class PhoneInfo:
    """A validated, SMS-capable number and what phonenumbers derives from it."""

    e164: str
    #: `region_code_for_number`; None for non-geographical numbers (+870, +882 ...).
    region: str | None
    #: phonenumbers' type name, one of `SMS_TYPES`.
    number_type: str
    #: IANA zones (`time_zones_for_number`); ("Etc/Unknown",) when phonenumbers has none.
    time_zones: tuple[str, ...]


def normalize_region(value: str | None, *, default: bool = False) -> str | None:
    """`" gb "` -> `"GB"`; None or blank -> None; an unknown code raises PhoneError."""
    if value is None:
        return None
    code = value.strip().upper()
    if not code:
        return None
    if code in REGIONS:
        return code
    what = "default region" if default else "region"
    hint = _REGION_HINTS.get(code)
    suffix = f" (did you mean {hint}?)" if hint else ""
    raise PhoneError(
        "unknown_region",
        f"unknown {what} {value.strip()!r}: expected an ISO 3166 alpha-2 code such as US{suffix}",
    )


def _has_plus(text: str) -> bool:
    m = _PLUS_OR_DIGIT.search(text)
    return m is not None and m.group() in "+\uFF0B"


def _label(cc: int, region: str | None, has_plus: bool) -> str:
    """How reasons name where a number is from: `GB` or `+1 (US, AG, AI, ...)`."""
    regions = phonenumbers.region_codes_for_country_code(cc)
    if region and not has_plus and region in regions:
        return region
    if len(regions) == 1 and regions[0] != _NON_GEO_REGION:
        return f"{regions[0]} (+{cc})"
    shown = ", ".join(r for r in regions[:3] if r != _NON_GEO_REGION)
    more = ", ..." if len(regions) > 3 else ""
    return f"+{cc} ({shown}{more})" if shown else f"+{cc}"


def _zones(num: PhoneNumber, ntype: int) -> tuple[str, ...]:
    """`timezone.time_zones_for_number` without computing the number type a second time."""
    cc = num.country_code or 0
    if phonenumbers.is_number_type_geographical(ntype, cc):
        return tuple(pn_timezone.time_zones_for_geographical_number(num))
    key = (cc, ntype)
    zones = _COUNTRY_ZONES.get(key)
    if zones is None:
        zones = _COUNTRY_ZONES[key] = tuple(pn_timezone.time_zones_for_number(num))
    return zones


def _parse_failure(
    exc: NumberParseException, text: str, region: str | None, default_error: PhoneError | None
) -> PhoneError:
    kind = exc.error_type
    if kind == NumberParseException.INVALID_COUNTRY_CODE:
        if not _has_plus(text) and region is None:
            if default_error is not None:
                return default_error
            return PhoneError(
                "no_region",
                "no country: write the number with + and its country code, or give its region",
            )
        return PhoneError("invalid_country_code", "invalid country code")
    if kind in (NumberParseException.TOO_SHORT_NSN, NumberParseException.TOO_SHORT_AFTER_IDD):
        return PhoneError("too_short", "too short")
    if kind == NumberParseException.TOO_LONG:
        return PhoneError("too_long", "too long")
    digits = len(_DIGITS.findall(text))
    if 0 < digits < 3 and not any(c.isalpha() for c in text):
        return PhoneError("too_short", "too short")
    return PhoneError("not_a_number", "not a phone number")


def validate_phone(
    raw: str | None, region: str | None = None, default_region: str | None = None
) -> PhoneInfo:
    """Parse and check one number for SMS; raise PhoneError with the reason if it won't do.

    `region` (e.g. a CSV row's `country`) is used for a number written without `+`; when it is
    empty, `default_region`; with neither, the number must be international. An unknown `region`
    is always an error; an unknown `default_region` only when a number needs it.
    """
    text = (raw or "").strip()
    if not text:
        raise PhoneError("missing", "missing phone")
    parse_region = normalize_region(region)
    default_error: PhoneError | None = None
    if parse_region is None and default_region:
        try:
            parse_region = normalize_region(default_region, default=True)
        except PhoneError as exc:
            default_error = exc
    try:
        num = phonenumbers.parse(text, parse_region)
    except NumberParseException as exc:
        raise _parse_failure(exc, text, parse_region, default_error) from None

    # number_type() returns UNKNOWN exactly when is_valid_number() is False: both look the
    # region up with region_code_for_number() (whose calling code always matches the number's)
    # and then match the same metadata patterns. Computing the type once halves the cost.
    found, ntype = region_and_type(num)
    if ntype == PhoneNumberType.UNKNOWN:
        raise _invalid(num, parse_region, _has_plus(text))
    name = TYPE_NAMES.get(ntype, "UNKNOWN")
    if name not in SMS_TYPES:
        word = _TYPE_WORDS.get(name, name.lower())
        raise PhoneError("not_sms_capable", f"{word} ({name}) cannot receive SMS")
    return PhoneInfo(
        e164=phonenumbers.format_number(num, PhoneNumberFormat.E164),
        region=None if found in (None, _NON_GEO_REGION) else found,
        number_type=name,
        time_zones=_zones(num, ntype),
    )


def region_and_type(num: PhoneNumber) -> tuple[str | None, int]:
    """(`region_code_for_number(num)`, `number_type(num)`), the region computed once."""
    region = phonenumbers.region_code_for_number(num)
    if _type_helper is None or _metadata_for is None:  # pragma: no cover - other versions
        return region, phonenumbers.number_type(num)
    metadata = _metadata_for(num.country_code, region)
    if metadata is None:
        return region, PhoneNumberType.UNKNOWN
    return region, _type_helper(phonenumbers.national_significant_number(num), metadata)


def _invalid(num: PhoneNumber, region: str | None, has_plus: bool) -> PhoneError:
    cc = num.country_code or 0
    label = _label(cc, region, has_plus)
    why = phonenumbers.is_possible_number_with_reason(num)
    if why == ValidationResult.TOO_SHORT:
        return PhoneError("too_short", f"too short for {label}")
    if why == ValidationResult.TOO_LONG:
        return PhoneError("too_long", f"too long for {label}")
    if why == ValidationResult.INVALID_LENGTH:
        return PhoneError("invalid_length", f"wrong number of digits for {label}")
    if why == ValidationResult.INVALID_COUNTRY_CODE:
        return PhoneError("invalid_country_code", f"invalid country code +{cc}")
    if why == ValidationResult.IS_POSSIBLE_LOCAL_ONLY:
        return PhoneError(
            "too_short", f"too short for {label} (a local number without its area code?)"
        )
    return PhoneError("invalid_for_region", f"not a valid number for {label}")


def validate_many(
    items: Sequence[tuple[str, str | None]], default_region: str | None = None
) -> list[PhoneInfo | PhoneError]:
    """`validate_phone` over (raw, region) pairs, errors returned in place (picklable, so
    that batches can be checked in worker processes)."""
    out: list[PhoneInfo | PhoneError] = []
    append = out.append
    for raw, region in items:
        try:
            append(validate_phone(raw, region, default_region))
        except PhoneError as exc:
            append(exc)
    return out


def is_sms_capable(raw: str | None, region: str | None = None) -> bool:
    """True when `validate_phone(raw, region)` would accept the number."""
    try:
        validate_phone(raw, region)
    except PhoneError:
        return False
    return True


__all__ = [
    "REGIONS",
    "SMS_TYPES",
    "PhoneError",
    "PhoneInfo",
    "is_sms_capable",
    "normalize_region",
    "validate_many",
    "validate_phone",
]
