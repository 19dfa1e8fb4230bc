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

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

UNKNOWN_ZONE = "Etc/Unknown"

# US states whose law narrows the hours for texts beyond the federal 08:00-21:00 (state
# "mini-TCPA" laws, see docs/COMPLIANCE.md), by the area codes (NPA) they hold.
STATE_WINDOWS: dict[str, tuple[str, str]] = {
    "FL": ("Florida", "08:00-20:00"),
    "OK": ("Oklahoma", "08:00-20:00"),
    "MD": ("Maryland", "08:00-20:00"),
    "MS": ("Mississippi", "08:00-20:00"),
    "NJ": ("New Jersey", "08:00-20:00"),
    "CT": ("Connecticut", "09:00-20:00"),
}
AREA_CODE_STATES: dict[str, str] = {
    **dict.fromkeys(
        ("239", "305", "321", "324", "352", "386", "407", "448", "561", "645", "656", "689",
         "727", "728", "754", "772", "786", "813", "850", "863", "904", "941", "954"), "FL"),
    **dict.fromkeys(("405", "539", "572", "580", "918"), "OK"),
    **dict.fromkeys(("227", "240", "301", "410", "443", "667"), "MD"),
    **dict.fromkeys(("228", "601", "662", "769"), "MS"),
    **dict.fromkeys(("201", "551", "609", "640", "732", "848", "856", "862", "908", "973"),
                    "NJ"),
    **dict.fromkeys(("203", "475", "860", "959"), "CT"),
}
_DAYS_AHEAD = 3  # openings on the recipient's local today, tomorrow and the day after


def parse_window(window: str) -> tuple[time, time] | None:
    """`08:00-21:00` -> (08:00, 21:00); `off` (or empty) -> None (send at any hour)."""
    if not window or window.strip().lower() == "off":
        return None
    start, end = window.strip().split("-")
    h1, m1 = start.split(":")
    h2, m2 = end.split(":")
    return time(int(h1), int(m1)), time(int(h2), int(m2))


def state_of(e164: str | None) -> str | None:
    """The US state of a number's area code, for the states in STATE_WINDOWS (else None)."""
    if not e164 or not e164.startswith("+1") or len(e164) != 12:
        return None
    return AREA_CODE_STATES.get(e164[2:5])


def _minutes(window: str) -> set[int]:
    parsed = parse_window(window)
    if parsed is None:
        return set(range(1440))
    start, end = (t.hour * 60 + t.minute for t in parsed)
    if start < end:
        return set(range(start, end))
    return set(range(start, 1440)) | set(range(end))


def _as_window(minutes: set[int]) -> str | None:
    """The longest contiguous run (circular) of `minutes` as HH:MM-HH:MM; None when empty."""
    if not minutes:
        return None
    if len(minutes) == 1440:
        return "00:00-23:59"
    starts = [m for m in sorted(minutes) if (m - 1) % 1440 not in minutes]
    best_start, best_len = starts[0], 0
    for start in starts:
        length = 0
        while (start + length) % 1440 in minutes:
            length += 1
        if length > best_len:
            best_start, best_len = start, length
    end = (best_start + best_len) % 1440
    return f"{best_start // 60:02d}:{best_start % 60:02d}-{end // 60:02d}:{end % 60:02d}"


def stricter_window(account_window: str, legal_window: str) -> str:
    """The hours allowed by both windows: an account can narrow the law's, never widen it.
    `off` for the account means off (only an explicit off turns quiet hours off). Windows that
    do not overlap at all leave the legal one."""
    if parse_window(account_window) is None:
        return "off"
    both = _minutes(account_window) & _minutes(legal_window)
    return _as_window(both) or legal_window


@dataclass(frozen=True)
class RecipientWindow:
    """The sending window for one number and why."""

    window: str
    account_window: str
    state: str | None = None  # two-letter code when a state's law applies

    def describe(self) -> str:
        if self.window == "off":
            return "quiet hours off for this account"
        if self.state is None:
            return f"window {self.window}"
        name, law = STATE_WINDOWS[self.state]
        return f"window {self.window}, {name} law allows {law}"


def recipient_window(account_window: str, e164: str | None) -> RecipientWindow:
    """The account's window, narrowed to the state's where the number's state has a stricter
    law (Florida, Connecticut, ...)."""
    state = state_of(e164)
    if state is None or parse_window(account_window) is None:
        return RecipientWindow(account_window or "off", account_window)
    return RecipientWindow(
        stricter_window(account_window, STATE_WINDOWS[state][1]), account_window, state
    )


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
    "AREA_CODE_STATES",
    "STATE_WINDOWS",
    "UNKNOWN_ZONE",
    "RecipientWindow",
    "allowed",
    "next_allowed",
    "open_zones",
    "parse_window",
    "recipient_window",
    "state_of",
    "stricter_window",
    "zones_for",
]
