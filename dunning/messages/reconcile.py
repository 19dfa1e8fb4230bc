"""Settling an ambiguous SMS from the provider's own records, instead of guessing.

An SMS row found `claimed` by a later attempt (the worker died inside the provider call) or left
`claimed` by a provider timeout may or may not be at the provider. The engine asks: first the
delivery reports (their callback URL names the row, so a report adopts its MessageUUID onto the
row: that row is sent), then the provider's message list (outbound, same sender, same number,
since the claim). `decide` turns what was found into one of:

- `sent`: a message in the list belongs to this claim: record it sent with its uuid.
- `resend`: nothing in the list, and the claim is older than the settling window (the provider
  call it made has certainly ended and the list has caught up): the row goes back to `retry`
  and is sent, once.
- `wait`: too early to tell (the list may lag): try again after the given delay.
- `unknown`: several claims to the same number are open at once and the list holds fewer
  messages than claims, so which of them went out cannot be told apart, and no delivery report
  settled it within the longer deadline: recorded `unknown` and not resent (no duplicate).

Several claims to one number (two invoices of one customer, due together) are never mistaken
for each other: uuids already recorded on a row are not candidates, and when the list holds as
many free messages as there are open claims, every claim did go out and they pair in order of
time (each claim with the first free message at or after it).

Pure: no I/O, so the rule is tested on its own (tests/unit/test_reconcile.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from dunning.platform.providers.sms import SentSms

# Clocks of the provider and the database differ a little; a message is matched to a claim made
# up to this long after the provider's timestamp.
SKEW = timedelta(seconds=2)
# With several open claims to one number, delivery reports get this many settling windows to
# name the rows before the ambiguous ones are recorded `unknown`.
AMBIGUOUS_WINDOWS = 4


@dataclass(frozen=True)
class Decision:
    action: Literal["sent", "resend", "wait", "unknown"]
    provider_id: str = ""
    delay: timedelta = timedelta(0)
    reason: str = ""


def utc(when: datetime) -> datetime:
    """Database timestamps come back naive on some drivers: they are UTC."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def decide(
    row_id: int,
    claimed_at: datetime,
    open_claims: Sequence[tuple[int, datetime]],
    records: Sequence[SentSms],
    taken: set[str],
    now: datetime,
    settle_after: timedelta,
) -> Decision:
    """What to do with the ambiguous SMS row `row_id`, claimed (last) at `claimed_at`.

    `open_claims`: (id, created_at) of this customer's unsettled SMS rows (this one included);
    `records`: the provider's outbound messages from the sender to the number since the oldest
    of them; `taken`: the uuids among them already recorded on some row."""
    age = utc(now) - utc(claimed_at)
    claims = sorted(((i, utc(t)) for i, t in open_claims), key=lambda c: (c[1], c[0]))
    if row_id not in {i for i, _ in claims}:
        claims = sorted([*claims, (row_id, utc(claimed_at))], key=lambda c: (c[1], c[0]))
    free = sorted((r for r in records if r.message_uuid not in taken),
                  key=lambda r: utc(r.sent_at))
    if len(claims) == 1 or len(free) >= len(claims):
        pairs = _pair(claims, free)
        if row_id in pairs:
            return Decision("sent", pairs[row_id].message_uuid,
                            reason="found in the provider's message list")
        return _resend_or_wait(age, settle_after)
    if not free:
        return _resend_or_wait(age, settle_after)
    # Fewer messages than open claims: which ones went out cannot be told apart yet.
    deadline = settle_after * AMBIGUOUS_WINDOWS
    if age < deadline:
        return Decision("wait", delay=deadline - age,
                        reason="several claims to this number, waiting for delivery reports")
    return Decision("unknown", reason=(
        f"{len(claims)} reminders to this number were in flight and the provider holds "
        f"{len(free)}; which went out cannot be told apart, so this one is not resent"))


def _pair(claims: Sequence[tuple[int, datetime]],
          free: Sequence[SentSms]) -> dict[int, SentSms]:
    """Each claim, oldest first, with the first free message sent at or after it."""
    left = list(free)
    pairs: dict[int, SentSms] = {}
    for claim_id, at in claims:
        pick = next((r for r in left if utc(r.sent_at) >= at - SKEW), None)
        if pick is not None:
            left.remove(pick)
            pairs[claim_id] = pick
    return pairs


def _resend_or_wait(age: timedelta, settle_after: timedelta) -> Decision:
    if age >= settle_after:
        return Decision("resend", reason="not in the provider's message list: sending it once")
    return Decision("wait", delay=settle_after - age,
                    reason="not in the provider's message list yet")
