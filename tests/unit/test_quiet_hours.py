"""Quiet hours: the sending window in the recipient's time zone(s).

Unit tests of dunning.domain.quiet_hours: several zones per number, windows across midnight, DST,
zones whose windows never overlap, and a brute-force cross-check. Whole cases on the time-skipping
server are in tests/workflow/test_quiet_hours_cases.py.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from dunning.domain.phones import validate_phone
from dunning.domain.quiet_hours import allowed, next_allowed, open_zones, parse_window, zones_for

WINDOW = "08:00-21:00"
NY, LA = ZoneInfo("America/New_York"), ZoneInfo("America/Los_Angeles")


def at(zone: ZoneInfo | str, y: int, mo: int, d: int, h: int, mi: int = 0) -> datetime:
    """A wall-clock time in `zone`, as the UTC instant the workflow would pass."""
    z = ZoneInfo(zone) if isinstance(zone, str) else zone
    return datetime(y, mo, d, h, mi, tzinfo=z).astimezone(UTC)


def local(when: datetime, zone: ZoneInfo) -> str:
    return when.astimezone(zone).strftime("%Y-%m-%d %H:%M")


# --- windows and zones ------------------------------------------------------------------------


def test_parse_window() -> None:
    assert parse_window(WINDOW) == (datetime(1, 1, 1, 8).time(), datetime(1, 1, 1, 21).time())
    assert parse_window("off") is None
    assert parse_window("") is None


def test_window_edges_in_one_zone() -> None:
    zones = [LA]
    assert not allowed(at(LA, 2025, 1, 15, 7, 59), WINDOW, zones)
    assert allowed(at(LA, 2025, 1, 15, 8, 0), WINDOW, zones)
    assert allowed(at(LA, 2025, 1, 15, 20, 59), WINDOW, zones)
    assert not allowed(at(LA, 2025, 1, 15, 21, 0), WINDOW, zones)  # the end is exclusive
    assert allowed(at(LA, 2025, 1, 15, 3), "off", zones)
    # Before the window: this morning; after it: tomorrow morning.
    assert local(next_allowed(at(LA, 2025, 1, 15, 2), WINDOW, zones), LA) == "2025-01-15 08:00"
    assert local(next_allowed(at(LA, 2025, 1, 15, 22), WINDOW, zones), LA) == "2025-01-16 08:00"
    inside = at(LA, 2025, 1, 15, 12)
    assert next_allowed(inside, WINDOW, zones) == inside
    assert next_allowed(at(LA, 2025, 1, 15, 3), "off", zones) == at(LA, 2025, 1, 15, 3)
    # The answer is in the time zone of the `now` it was given.
    assert next_allowed(at(LA, 2025, 1, 15, 2), WINDOW, zones).tzinfo is UTC


def test_window_across_midnight() -> None:
    zones, night = [NY], "22:00-06:00"
    assert allowed(at(NY, 2025, 1, 15, 23), night, zones)
    assert allowed(at(NY, 2025, 1, 16, 5, 59), night, zones)
    assert not allowed(at(NY, 2025, 1, 16, 6), night, zones)
    assert local(next_allowed(at(NY, 2025, 1, 16, 6), night, zones), NY) == "2025-01-16 22:00"


def test_a_number_over_two_zones_needs_the_window_in_both() -> None:
    # Idaho's 208 spans Mountain (Boise) and Pacific time.
    info = validate_phone("+12085550123")
    zones = zones_for(",".join(info.time_zones), "UTC")
    assert {z.key for z in zones} == {"America/Boise", "America/Los_Angeles"}
    boise = ZoneInfo("America/Boise")
    # 07:30 in Los Angeles is 08:30 in Boise: not yet (Los Angeles sleeps).
    early = at(LA, 2025, 6, 10, 7, 30)
    assert not allowed(early, WINDOW, zones)
    assert local(next_allowed(early, WINDOW, zones), LA) == "2025-06-10 08:00"
    # 20:30 in Los Angeles is 21:30 in Boise: over for today (Boise's evening is over).
    late = at(LA, 2025, 6, 10, 20, 30)
    assert not allowed(late, WINDOW, zones)
    opens = next_allowed(late, WINDOW, zones)
    assert (local(opens, LA), local(opens, boise)) == ("2025-06-11 08:00", "2025-06-11 09:00")


def test_zones_for_falls_back_to_the_account_zone() -> None:
    assert [z.key for z in zones_for("Etc/Unknown", "Europe/Paris")] == ["Europe/Paris"]
    assert [z.key for z in zones_for(None, "Europe/Paris")] == ["Europe/Paris"]
    assert [z.key for z in zones_for("", "No/Such_Zone")] == ["UTC"]
    assert [z.key for z in zones_for("No/Such_Zone, Asia/Tokyo", "UTC")] == ["Asia/Tokyo"]
    assert [z.key for z in zones_for("Asia/Tokyo,Asia/Tokyo", "UTC")] == ["Asia/Tokyo"]


def test_dst_transitions() -> None:
    # Spring forward (New York, 9 March 2025, 02:00 -> 03:00): 08:00 is EDT, 12:00 UTC.
    opens = next_allowed(datetime(2025, 3, 9, 6, 30, tzinfo=UTC), WINDOW, [NY])
    assert opens == datetime(2025, 3, 9, 12, 0, tzinfo=UTC)
    # Fall back (2 November 2025, 02:00 -> 01:00): 08:00 is EST, 13:00 UTC.
    opens = next_allowed(datetime(2025, 11, 2, 5, 30, tzinfo=UTC), WINDOW, [NY])
    assert opens == datetime(2025, 11, 2, 13, 0, tzinfo=UTC)
    # A window opening at 02:30, which does not exist on the spring-forward night: it opens
    # when the clocks jump (03:00 EDT = 07:00 UTC), not an hour early nor half an hour late.
    opens = next_allowed(datetime(2025, 3, 9, 5, 0, tzinfo=UTC), "02:30-21:00", [NY])
    assert opens == datetime(2025, 3, 9, 7, 0, tzinfo=UTC)
    assert allowed(opens, "02:30-21:00", [NY])
    assert not allowed(opens - timedelta(seconds=1), "02:30-21:00", [NY])
    # In the fall-back fold, the first 01:30 counts.
    opens = next_allowed(datetime(2025, 11, 2, 5, 0, tzinfo=UTC), "01:30-21:00", [NY])
    assert opens == datetime(2025, 11, 2, 5, 30, tzinfo=UTC)
    # London and New York change on different dates: on 20 March 2025 New York is on EDT
    # (UTC-4), London still on GMT. 08:00 in London (08:00 UTC) is 04:00 in New York; both
    # are open from 08:00 in New York, 12:00 UTC.
    both = [ZoneInfo("Europe/London"), NY]
    opens = next_allowed(datetime(2025, 3, 20, 3, 0, tzinfo=UTC), WINDOW, both)
    assert opens == datetime(2025, 3, 20, 12, 0, tzinfo=UTC)


def test_zones_whose_windows_never_overlap() -> None:
    # UTC, UTC+8 and UTC-8 (January): no instant has all three between 08:00 and 21:00.
    zones = [ZoneInfo("UTC"), ZoneInfo("Asia/Shanghai"), LA]
    now = datetime(2025, 1, 15, 22, 30, tzinfo=UTC)
    sweep = [now + timedelta(minutes=m) for m in range(0, 48 * 60, 5)]
    assert not any(allowed(t, WINDOW, zones) for t in sweep)
    # The send waits for the first instant with the window open in as many zones as ever (2).
    assert max(open_zones(t, WINDOW, zones) for t in sweep) == 2
    opens = next_allowed(now, WINDOW, zones)
    assert open_zones(opens, WINDOW, zones) == 2
    assert all(open_zones(t, WINDOW, zones) < 2 for t in sweep if t < opens)
    assert opens == datetime(2025, 1, 16, 0, 0, tzinfo=UTC)  # 08:00 in Shanghai, 16:00 in LA
    # Already at the best there is: now.
    assert next_allowed(opens + timedelta(minutes=5), WINDOW, zones) == opens + timedelta(
        minutes=5)
    # A short window: Los Angeles and Berlin (9 hours apart) share no office hours. At 18:00
    # in Los Angeles both are closed: the next opening anywhere (09:00 in Berlin) is the best.
    office = "09:00-17:00"
    apart = [LA, ZoneInfo("Europe/Berlin")]
    opens = next_allowed(datetime(2025, 1, 16, 2, 0, tzinfo=UTC), office, apart)
    assert opens == datetime(2025, 1, 16, 8, 0, tzinfo=UTC)
    assert open_zones(opens, office, apart) == 1
    # At noon in Los Angeles one zone is open, as many as ever: now.
    noon = datetime(2025, 1, 15, 20, 0, tzinfo=UTC)
    assert next_allowed(noon, office, apart) == noon


def _brute_force(now: datetime, window: str, zones: list[ZoneInfo]) -> datetime | None:
    """The first minute at or after `now` (on `now`'s minute grid) that suits every zone."""
    for minutes in range(0, 3 * 24 * 60):
        t = now + timedelta(minutes=minutes)
        if allowed(t, window, zones):
            return t
    return None


def test_next_allowed_agrees_with_brute_force() -> None:
    rng = random.Random(20250309)
    names = ["America/New_York", "America/Los_Angeles", "America/Denver", "America/Phoenix",
             "America/Boise", "Europe/London", "Europe/Berlin", "Asia/Kolkata",
             "Australia/Adelaide", "Australia/Lord_Howe", "Pacific/Chatham", "Asia/Kathmandu",
             "America/Santiago", "America/St_Johns"]
    # Near DST changes in both hemispheres, and ordinary days.
    days = [datetime(2025, 3, 9), datetime(2025, 3, 30), datetime(2025, 4, 6),
            datetime(2025, 10, 26), datetime(2025, 11, 2), datetime(2025, 7, 1)]
    for _ in range(60):
        zones = [ZoneInfo(n) for n in rng.sample(names, rng.randint(1, 3))]
        start = rng.choice([0, 2, 7, 8, 9, 21, 22]) * 60 + rng.choice([0, 30])
        end = (start + rng.choice([6, 10, 13, 15]) * 60) % (24 * 60)
        window = f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"
        now = (rng.choice(days) + timedelta(minutes=rng.randrange(0, 48 * 60, 15))).replace(
            tzinfo=UTC)
        expected = _brute_force(now, window, zones)
        got = next_allowed(now, window, zones)
        if expected is not None:
            assert got == expected, (window, [z.key for z in zones], now)
        else:  # never all open: as many as ever, and never earlier than needed
            best = max(open_zones(now + timedelta(minutes=m), window, zones)
                       for m in range(0, 2 * 24 * 60, 15))
            assert open_zones(got, window, zones) == best, (window, [z.key for z in zones], now)
