"""Quiet hours where state law is stricter than 08:00-21:00 (docs/COMPLIANCE.md)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import phonenumbers
import pytest
from phonenumbers import geocoder

from dunning.domain.quiet_hours import (
    AREA_CODE_STATES,
    STATE_WINDOWS,
    allowed,
    next_allowed,
    recipient_window,
    state_of,
    stricter_window,
    zones_for,
)

NY = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("number", "state"),
    [("+13055550123", "FL"), ("+14055550123", "OK"), ("+14105550123", "MD"),
     ("+16015550123", "MS"), ("+12015550123", "NJ"), ("+12035550123", "CT"),
     ("+12125550123", None), ("+14155550123", None), ("+442071234567", None), (None, None)],
)
def test_state_from_area_code(number: str | None, state: str | None) -> None:
    assert state_of(number) == state


def test_area_code_table_agrees_with_phonenumbers_geocoder() -> None:
    for area, state in AREA_CODE_STATES.items():
        num = phonenumbers.parse(f"+1{area}2345678")
        where = geocoder.description_for_number(num, "en")
        name = STATE_WINDOWS[state][0]
        assert where == name or where.endswith(f", {state}"), (area, where)


@pytest.mark.parametrize(
    ("account", "legal", "expected"),
    [("08:00-21:00", "08:00-20:00", "08:00-20:00"),  # the default narrowed to the law
     ("07:00-23:00", "09:00-20:00", "09:00-20:00"),  # a wider account window never widens it
     ("10:00-18:00", "08:00-20:00", "10:00-18:00"),  # a narrower one narrows it further
     ("08:30-20:30", "09:00-20:00", "09:00-20:00"),
     ("off", "08:00-20:00", "off")],  # only an explicit off turns quiet hours off
)
def test_stricter_window(account: str, legal: str, expected: str) -> None:
    assert stricter_window(account, legal) == expected


def test_florida_at_2030_waits_until_0800() -> None:
    window = recipient_window("08:00-21:00", "+13055550123")
    assert (window.window, window.state) == ("08:00-20:00", "FL")
    assert "Florida" in window.describe() and "08:00-20:00" in window.describe()
    zones = zones_for("America/New_York", "UTC")
    at = datetime(2026, 6, 10, 20, 30, tzinfo=NY)
    assert not allowed(at, window.window, zones)
    assert allowed(at, "08:00-21:00", zones)  # the account's window alone would send
    assert next_allowed(at, window.window, zones) == datetime(2026, 6, 11, 8, 0, tzinfo=NY)


def test_connecticut_starts_at_nine_and_new_york_keeps_the_account_window() -> None:
    ct = recipient_window("08:00-21:00", "+12035550123")
    zones = zones_for("America/New_York", "UTC")
    assert not allowed(datetime(2026, 6, 10, 8, 30, tzinfo=NY), ct.window, zones)
    ny = recipient_window("08:00-21:00", "+12125550123")
    assert ny.state is None and ny.window == "08:00-21:00"
    assert allowed(datetime(2026, 6, 10, 20, 30, tzinfo=NY), ny.window, zones)
