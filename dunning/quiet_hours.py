"""Quiet hours in the recipient's own time zone(s). Pure functions of the time they are given."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def parse_window(window: str) -> tuple[time, time] | None:
    """`08:00-21:00` -> (08:00, 21:00); `off` -> None (send at any hour)."""
    if not window or window == "off":
        return None
    start, end = window.split("-")
    h1, m1 = start.split(":")
    h2, m2 = end.split(":")
    return time(int(h1), int(m1)), time(int(h2), int(m2))


def _in_window(local: time, start: time, end: time) -> bool:
    if start < end:
        return start <= local < end
    return local >= start or local < end  # window across midnight, e.g. 22:00-06:00


def zones_for(time_zones: str | None, fallback: str) -> list[ZoneInfo]:
    zones: list[ZoneInfo] = []
    for name in (time_zones or "").split(","):
        name = name.strip()
        if not name or name == "Etc/Unknown":
            continue
        try:
            zones.append(ZoneInfo(name))
        except (ZoneInfoNotFoundError, ValueError):
            continue
    if not zones:
        try:
            zones.append(ZoneInfo(fallback or "UTC"))
        except (ZoneInfoNotFoundError, ValueError):
            zones.append(ZoneInfo("UTC"))
    return zones


def allowed(now: datetime, window: str, zones: list[ZoneInfo]) -> bool:
    parsed = parse_window(window)
    if parsed is None:
        return True
    start, end = parsed
    return all(_in_window(now.astimezone(z).time().replace(tzinfo=None), start, end)
               for z in zones)


def next_allowed(now: datetime, window: str, zones: list[ZoneInfo]) -> datetime:
    """The first instant at or after `now` when the window is open in every zone.

    If the zones are so far apart that the windows never overlap, the first zone (the number's
    main zone) decides.
    """
    parsed = parse_window(window)
    if parsed is None or allowed(now, window, zones):
        return now
    start, _end = parsed
    candidates: list[datetime] = []
    for zone in zones:
        local = now.astimezone(zone)
        for days in range(0, 3):
            day = (local + timedelta(days=days)).date()
            opening = datetime.combine(day, start, tzinfo=zone)
            if opening > now:
                candidates.append(opening.astimezone(now.tzinfo))
    for candidate in sorted(candidates):
        if allowed(candidate, window, zones):
            return candidate
    return next_allowed(now, window, zones[:1]) if len(zones) > 1 else min(candidates)
