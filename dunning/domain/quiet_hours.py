"""Quiet hours in the recipient's own time zone(s). Pure functions of the time they are given.

The account's window (`08:00-21:00` by default, or `off`) is when an SMS may go out, in the
recipient's local wall-clock time; the end is exclusive, and a window may run across midnight
(`22:00-06:00`). The zones come from the number (`customers.phone_time_zones`, from
phonenumbers); a number that spans several zones (a US area code over two zones, a mobile range
covering a whole country) may only be texted when the window is open in every one of them.
Without a known zone (`Etc/Unknown`, nothing stored) the account's time zone applies.

Where the zones are so far apart that their windows never overlap (Russian mobile ranges span
UTC+2 to UTC+12), no instant satisfies all of them; the send then waits for the first instant at
which the window is open in as many of the zones as it ever is (`now`, if that is already so).

Daylight saving time is handled on wall-clock time: an opening that falls in a spring-forward
gap (a window starting at 02:30 on the night clocks jump from 02:00 to 03:00) opens at the jump;
in a fall-back fold the first occurrence counts.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

UNKNOWN_ZONE = "Etc/Unknown"
_DAYS_AHEAD = 3  # openings on the recipient's local today, tomorrow and the day after


def parse_window(window: str) -> tuple[time, time] | None:
    """`08:00-21:00` -> (08:00, 21:00); `off` (or empty) -> None (send at any hour)."""
    if not window or window.strip().lower() == "off":
        return None
    start, end = window.strip().split("-")
    h1, m1 = start.split(":")
    h2, m2 = end.split(":")
    return time(int(h1), int(m1)), time(int(h2), int(m2))


def _in_window(local: time, start: time, end: time) -> bool:
    if start < end:
        return start <= local < end
    return local >= start or local < end  # window across midnight, e.g. 22:00-06:00


def zones_for(time_zones: str | None, fallback: str) -> list[ZoneInfo]:
    """The zones of a number (comma-separated IANA names); unknown or none: `fallback`
    (the account's zone; UTC if that is no zone either)."""
    zones: list[ZoneInfo] = []
    for name in (time_zones or "").split(","):
        name = name.strip()
        if not name or name == UNKNOWN_ZONE:
            continue
        try:
            zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            continue
        if zone not in zones:
            zones.append(zone)
    if not zones:
        try:
            zones.append(ZoneInfo(fallback or "UTC"))
        except (ZoneInfoNotFoundError, ValueError):
            zones.append(ZoneInfo("UTC"))
    return zones


def _aware(now: datetime) -> datetime:
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)


def _open_in(now: datetime, start: time, end: time, zone: ZoneInfo) -> bool:
    return _in_window(now.astimezone(zone).time().replace(tzinfo=None), start, end)


def open_zones(now: datetime, window: str, zones: list[ZoneInfo]) -> int:
    """In how many of `zones` the window is open at `now`."""
    parsed = parse_window(window)
    if parsed is None:
        return len(zones)
    start, end = parsed
    return sum(1 for z in zones if _open_in(_aware(now), start, end, z))


def allowed(now: datetime, window: str, zones: list[ZoneInfo]) -> bool:
    """True when an SMS may go out at `now`: the window is open in every zone."""
    parsed = parse_window(window)
    if parsed is None:
        return True
    start, end = parsed
    return all(_open_in(_aware(now), start, end, z) for z in zones)


def _opening(day: date, start: time, zone: ZoneInfo) -> datetime:
    """The first instant (UTC) at which the wall clock in `zone` reads `start` or later on
    `day`: `start` itself, or the end of a DST gap that swallows it."""
    wall = datetime.combine(day, start)
    first = wall.replace(tzinfo=zone).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first  # the time exists (fold=0: the first of two, in a fall-back fold)
    # A spring-forward gap: the jump lies between the two readings of the missing wall time.
    lo = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    lo, hi = min(lo, first), max(lo, first)
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(zone).replace(tzinfo=None) >= wall:
            hi = mid
        else:
            lo = mid
    return hi.replace(microsecond=0)


def next_allowed(now: datetime, window: str, zones: list[ZoneInfo]) -> datetime:
    """The first instant at or after `now` when the window is open in every zone.

    When the zones' windows never overlap: the first instant at which the window is open in as
    many zones as it ever is (see the module's docstring). The result is in `now`'s time zone.
    """
    parsed = parse_window(window)
    if parsed is None or not zones or allowed(now, window, zones):
        return now
    start, _end = parsed
    current = _aware(now)
    candidates: set[datetime] = set()
    for zone in zones:
        today = current.astimezone(zone).date()
        for days in range(_DAYS_AHEAD):
            opening = _opening(today + timedelta(days=days), start, zone)
            if opening > current:
                candidates.add(opening)
    ordered = sorted(candidates)
    for candidate in ordered:
        if allowed(candidate, window, zones):
            return candidate.astimezone(current.tzinfo)
    # No instant suits every zone: the earliest one that suits the most.
    best, best_count = current, open_zones(current, window, zones)
    for candidate in ordered:
        count = open_zones(candidate, window, zones)
        if count > best_count:
            best, best_count = candidate, count
    return best.astimezone(current.tzinfo)


__all__ = [
    "UNKNOWN_ZONE",
    "allowed",
    "next_allowed",
    "open_zones",
    "parse_window",
    "zones_for",
]
