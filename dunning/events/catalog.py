"""The outbound event types (contract names) and the checks on a subscription list. Pure."""

from __future__ import annotations

from collections.abc import Iterable

from dunning.domain.contract import InputError

EVENT_TYPES: tuple[str, ...] = (
    "case.started",
    "reminder.sent",
    "reminder.failed",
    "reminder.skipped",
    "sms.paused",
    "sms.resumed",
    "case.recovered",
    "case.exhausted",
    "case.canceled",
    "credits.low",
    "credits.empty",
    "refill.failed",
    "consent.opted_out",
    "consent.opted_in",
)


def check_event_types(values: Iterable[str]) -> list[str] | None:
    """A subscription list -> the sorted, de-duplicated types; None (all) for an empty list.
    Accepts comma-separated items too (`--events case.started,case.exhausted`)."""
    chosen: set[str] = set()
    for value in values:
        for item in value.split(","):
            name = item.strip()
            if not name:
                continue
            if name not in EVENT_TYPES:
                raise InputError(
                    "events", f"unknown event type {name!r}; known: {', '.join(EVENT_TYPES)}"
                )
            chosen.add(name)
    return sorted(chosen) if chosen else None


def is_subscribed(event_types: list[str] | None, event_type: str) -> bool:
    return event_types is None or event_type in event_types
