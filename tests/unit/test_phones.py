"""dunning.domain.phones: validation of numbers for SMS against phonenumbers' own answers."""

from __future__ import annotations

import pickle
import random

import phonenumbers
import pytest
from phonenumbers import PhoneNumberFormat, PhoneNumberType
from phonenumbers import timezone as pn_timezone

from dunning.customers.customers import UNKNOWN_ZONE, ZONES_MAX, zones_column
from dunning.domain.phones import (
    REGIONS,
    SMS_TYPES,
    TYPE_NAMES,
    PhoneError,
    PhoneInfo,
    is_sms_capable,
    normalize_region,
    region_and_type,
    validate_many,
    validate_phone,
)

ALL_TYPES = [t for t in TYPE_NAMES if t != PhoneNumberType.UNKNOWN]
MOBILES = [
    (region, num)
    for region in sorted(phonenumbers.SUPPORTED_REGIONS)
    if (num := phonenumbers.example_number_for_type(region, PhoneNumberType.MOBILE)) is not None
]


def expected_info(num: phonenumbers.PhoneNumber) -> PhoneInfo:
    """What validate_phone must return, computed with phonenumbers' public API only."""
    assert phonenumbers.is_valid_number(num)
    region = phonenumbers.region_code_for_number(num)
    return PhoneInfo(
        e164=phonenumbers.format_number(num, PhoneNumberFormat.E164),
        region=None if region == "001" else region,
        number_type=TYPE_NAMES[phonenumbers.number_type(num)],
        time_zones=tuple(pn_timezone.time_zones_for_number(num)),
    )


def test_examples_cover_every_region() -> None:
    assert len(REGIONS) == len(phonenumbers.SUPPORTED_REGIONS) >= 240
    assert len(MOBILES) >= len(REGIONS) - 1  # phonenumbers has no mobile example for TA


def test_every_regions_mobile_written_nationally_with_its_region() -> None:
    wrong = []
    for region, num in MOBILES:
        national = phonenumbers.format_number(num, PhoneNumberFormat.NATIONAL)
        info = validate_phone(national, region.lower())
        if info != expected_info(num) or info.number_type not in SMS_TYPES:
            wrong.append((region, national, info))
    assert wrong == []


@pytest.mark.parametrize(
    "fmt", [PhoneNumberFormat.INTERNATIONAL, PhoneNumberFormat.E164, PhoneNumberFormat.RFC3966]
)
def test_every_regions_mobile_written_internationally_without_region(fmt: int) -> None:
    wrong = []
    for region, num in MOBILES:
        text = phonenumbers.format_number(num, fmt)
        # A region given for a number written with + does not change it.
        other = "JP" if region != "JP" else "BR"
        infos = {validate_phone(text), validate_phone(text, None, other)}
        if infos != {expected_info(num)}:
            wrong.append((region, text, infos))
    assert wrong == []


def test_region_and_type_agree_with_phonenumbers_public_api() -> None:
    """The shortcut (type computed once) must give number_type() and is_valid_number()."""
    rng = random.Random(1)
    numbers = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for ntype in ALL_TYPES:
            num = phonenumbers.example_number_for_type(region, ntype)
            if num is None:
                continue
            numbers.append(num)
            nsn = phonenumbers.national_significant_number(num)
            for _ in range(3):  # neighbours, valid or not, longer and shorter
                digits = nsn[:-3] + "".join(rng.choice("0123456789") for _ in range(3))
                for variant in (digits, digits[:-1], digits + "5"):
                    numbers.append(phonenumbers.parse(f"+{num.country_code}{variant}", None))
    assert len(numbers) > 5000
    mismatches = []
    valid = 0
    for num in numbers:
        found, ntype = region_and_type(num)
        expected_valid = phonenumbers.is_valid_number(num)
        valid += expected_valid
        if (
            found != phonenumbers.region_code_for_number(num)
            or ntype != phonenumbers.number_type(num)
            or (ntype != PhoneNumberType.UNKNOWN) != expected_valid
        ):
            mismatches.append(num)
    assert mismatches == []
    assert 0 < valid < len(numbers)  # both outcomes were exercised


def test_each_type_is_accepted_or_rejected_by_name() -> None:
    seen: dict[str, int] = {}
    wrong = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for ntype in ALL_TYPES:
            num = phonenumbers.example_number_for_type(region, ntype)
            if num is None or not phonenumbers.is_valid_number(num):
                continue
            actual = TYPE_NAMES[phonenumbers.number_type(num)]
            text = phonenumbers.format_number(num, PhoneNumberFormat.INTERNATIONAL)
            seen[actual] = seen.get(actual, 0) + 1
            if actual in SMS_TYPES:
                if validate_phone(text) != expected_info(num):
                    wrong.append((region, text, actual))
                continue
            with pytest.raises(PhoneError) as err:
                validate_phone(text)
            if err.value.code != "not_sms_capable" or f"({actual}) cannot receive SMS" not in (
                err.value.reason
            ):
                wrong.append((region, text, err.value.reason))
    assert wrong == []
    for name in ("MOBILE", "FIXED_LINE_OR_MOBILE", "VOIP", "PERSONAL_NUMBER", "FIXED_LINE",
                 "TOLL_FREE", "PREMIUM_RATE", "SHARED_COST", "UAN", "PAGER", "VOICEMAIL"):
        assert seen.get(name, 0) > 0, name


@pytest.mark.parametrize(
    ("raw", "region", "default", "code", "reason"),
    [
        ("", None, None, "missing", "missing phone"),
        ("   ", "GB", None, "missing", "missing phone"),
        ("call me", None, "US", "not_a_number", "not a phone number"),
        ("n/a", "GB", None, "not_a_number", "not a phone number"),
        ("1", "US", None, "too_short", "too short"),
        ("+44 74", None, None, "too_short", "too short for +44 (GB, GG, IM, ...)"),
        ("555-0123", "US", None, "too_short", "local number without its area code"),
        ("+44 7400 1234567890", None, None, "too_long", "too long for +44"),
        ("+7 912 345 67899", None, None, "invalid_length", "wrong number of digits for +7"),
        ("138 0013 800", "CN", None, "invalid_for_region", "not a valid number for CN"),
        ("+86 138 0013 800", None, None, "invalid_for_region", "not a valid number for CN (+86)"),
        ("+1 999 555 0123", None, None, "invalid_for_region", "not a valid number for +1 (US,"),
        ("020 7946 0018", "GB", None, "not_sms_capable",
         "landline (FIXED_LINE) cannot receive SMS"),
        ("+1 800 555 0199", None, None, "not_sms_capable",
         "toll-free number (TOLL_FREE) cannot receive SMS"),
        ("+999 123 4567", None, None, "invalid_country_code", "invalid country code"),
        ("+999 123 4567", "US", None, "invalid_country_code", "invalid country code"),
        ("07400 123456", None, None, "no_region", "no country"),
        ("0044 7400 123456", None, None, "no_region", "no country"),
        ("07400 123456", "XX", None, "unknown_region", "unknown region 'XX'"),
        ("+44 7400 123456", "USA", None, "unknown_region", "(did you mean US?)"),
        ("07400 123456", None, "UK", "unknown_region",
         "unknown default region 'UK': expected an ISO 3166 alpha-2 code such as US "
         "(did you mean GB?)"),
    ],
)
def test_reasons(raw: str, region: str | None, default: str | None, code: str,
                 reason: str) -> None:
    with pytest.raises(PhoneError) as err:
        validate_phone(raw, region, default)
    assert err.value.code == code
    assert reason in err.value.reason
    assert str(err.value) == err.value.reason


def test_region_wins_over_default_region_and_plus_needs_neither() -> None:
    gb = validate_phone("07400 123456", "GB", "US")
    assert (gb.e164, gb.region, gb.number_type) == ("+447400123456", "GB", "MOBILE")
    assert validate_phone("(201) 555-0123", None, " us ").e164 == "+12015550123"
    assert validate_phone("(201) 555-0123", "", "US").e164 == "+12015550123"
    # An unknown default region only matters to numbers that need one.
    assert validate_phone("+44 7400 123456", None, "UK").e164 == "+447400123456"
    # International prefix from the given region.
    assert validate_phone("0044 7400 123456", "DE").e164 == "+447400123456"
    assert validate_phone("011 44 7400 123456", "US").e164 == "+447400123456"


def test_region_code_is_the_numbers_own_region() -> None:
    ca = validate_phone("+1 416 555 0123")
    assert (ca.region, ca.number_type) == ("CA", "FIXED_LINE_OR_MOBILE")
    assert ca.time_zones == ("America/Toronto",)
    example = phonenumbers.example_number_for_type("AX", PhoneNumberType.MOBILE)
    assert example is not None
    aland = validate_phone(phonenumbers.format_number(example, PhoneNumberFormat.NATIONAL), "AX")
    assert aland.region == "FI"  # region_code_for_number maps AX numbers to FI


def test_non_geographic_mobile_has_no_region() -> None:
    info = validate_phone("+870 773 111 632")
    assert info.region is None
    assert info.number_type == "MOBILE"
    assert info.time_zones == ("Etc/Unknown",)


def test_country_wide_zones_too_long_for_the_column() -> None:
    personal = validate_phone("+1 500 555 0123")  # NANPA personal number: zones of all +1
    assert personal.number_type == "PERSONAL_NUMBER"
    assert len(",".join(personal.time_zones)) > ZONES_MAX
    assert zones_column(personal.time_zones) == UNKNOWN_ZONE
    assert zones_column(("Europe/Berlin",)) == "Europe/Berlin"
    gb = validate_phone("+44 7400 123456")
    assert zones_column(gb.time_zones) == ",".join(gb.time_zones)
    assert "Europe/London" in gb.time_zones


def test_normalize_region() -> None:
    assert normalize_region(" gb ") == "GB"
    assert normalize_region(None) is None
    assert normalize_region("  ") is None
    with pytest.raises(PhoneError) as err:
        normalize_region("ZZ")
    assert err.value.code == "unknown_region"
    with pytest.raises(PhoneError) as err:
        normalize_region("uk", default=True)
    assert "unknown default region 'uk'" in err.value.reason
    assert "did you mean GB?" in err.value.reason


def test_validate_many_keeps_order_and_pickles() -> None:
    results = validate_many(
        [("+44 7400 123456", None), ("nope", "US"), ("(201) 555-0123", None)], "US"
    )
    assert isinstance(results[0], PhoneInfo) and results[0].e164 == "+447400123456"
    assert isinstance(results[1], PhoneError) and results[1].code == "not_a_number"
    assert isinstance(results[2], PhoneInfo) and results[2].e164 == "+12015550123"
    copy = pickle.loads(pickle.dumps(results))
    assert copy[0] == results[0]
    assert isinstance(copy[1], PhoneError)
    assert (copy[1].code, copy[1].reason) == (results[1].code, results[1].reason)


def test_is_sms_capable() -> None:
    assert is_sms_capable("+44 7400 123456")
    assert is_sms_capable("07400 123456", "GB")
    assert not is_sms_capable("020 7946 0018", "GB")
    assert not is_sms_capable("07400 123456")
    assert not is_sms_capable(None)
