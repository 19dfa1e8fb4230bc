"""A strict provider send pace shared by every worker, kept in one database row.

Why: the SMS task queue's rate limit is a token bucket in the Temporal server. The bucket starts
full, so right after an idle spell it hands out up to twice the limit in the first second (and
with several task queue partitions the flow is lumpier still). The provider's limit is a cap,
not a mean. So just before each real provider call a send reserves a slot here: one upsert of the
`send_slots` row of its key moves the row's `next_at` on by one interval and returns the slot's
start. The row lock orders the reservations of all workers on all hosts, so two slots are never
closer than `interval` apart and no 1-second window holds more than `rate` starts.

- On PostgreSQL the database's clock (`clock_timestamp()`, read after the row lock is taken)
  stamps the slots, so workers on hosts whose clocks disagree still agree on the pace. Only
  durations leave the database (the wait), never instants.
- On SQLite the clock is read in Python once the transaction holds the write lock (`BEGIN
  IMMEDIATE`), so a writer that waited for the lock does not reserve a slot in the past.
- A slot is taken only right before a real provider call (after the send was found eligible), so
  skipped sends cost nothing. A worker that dies or is cancelled while it waits for its slot
  wastes that one slot: later sends are spaced a bit more, never less.

The interval is `(1 + PACING_MARGIN) / rate`: a send leaves its slot a little late by a varying
amount (the commit, the return to the worker, thread scheduling, the HTTP connection), and two
sends whose lateness differs by up to the margin's share of a second still fit `rate` in a second.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import NamedTuple

from sqlalchemy import TextClause, text

from dunning.db import Database

# Spacing = (1 + margin) / rate. `rate + 1` slot starts span (1 + margin) seconds, so a strict
# `rate` per second survives up to margin seconds (20 ms) of jitter between taking a slot and the
# provider seeing the request; at 5/s it costs 2% of the throughput.
PACING_MARGIN = 0.02

# While waiting for a slot, `wait()` calls its heartbeat at least this often (the send activity's
# heartbeat timeout is longer).
HEARTBEAT_EVERY = 5.0

# Both return (slot start, now): the reserved slot is the row's old `next_at`, or now if that
# has passed; the row moves on to one interval after the slot.
_PG_NOW = "CAST(extract(epoch from clock_timestamp()) AS double precision)"
_PG_RESERVE = f"""
INSERT INTO send_slots (key, next_at) VALUES (:k, {_PG_NOW} + :i)
ON CONFLICT (key) DO UPDATE SET next_at = GREATEST(send_slots.next_at, {_PG_NOW}) + :i
RETURNING next_at - :i, {_PG_NOW}
"""

_SQLITE_RESERVE = """
INSERT INTO send_slots (key, next_at) VALUES (:k, :now + :i)
ON CONFLICT (key) DO UPDATE SET next_at = MAX(send_slots.next_at, :now) + :i
RETURNING next_at - :i, :now
"""


@functools.cache
def _reserve(dialect: str) -> TextClause:
    """The reservation statement for a dialect."""
    if dialect == "postgresql":
        return text(_PG_RESERVE)
    if dialect == "sqlite":
        return text(_SQLITE_RESERVE)
    raise ValueError(f"send pacing supports SQLite and PostgreSQL, not {dialect!r}")


class Slot(NamedTuple):
    """A reserved send slot."""

    start: float  # epoch seconds, on the database's clock (PostgreSQL) or this host's (SQLite)
    wait: float  # seconds from the reservation until `start` (0 when it has begun)


class SendPacer:
    """Spaces the sends of one key (a provider) at least `interval` apart across all workers."""

    def __init__(
        self, db: Database, rate: float, *, key: str = "sms", margin: float = PACING_MARGIN
    ) -> None:
        if not rate > 0:  # also refuses NaN
            raise ValueError(f"the send rate must be above 0, not {rate!r}")
        if not margin >= 0:
            raise ValueError(f"the pacing margin must be 0 or more, not {margin!r}")
        self.db = db
        self.rate = rate
        self.key = key
        self.margin = margin
        self._statement = _reserve(db.dialect)
        self._sqlite = db.dialect == "sqlite"

    @property
    def interval(self) -> float:
        """Seconds between two slot starts."""
        return (1 + self.margin) / self.rate

    def reserve(self) -> Slot:
        """Reserve the next send slot atomically, in one statement of a short transaction."""
        with self.db.session() as s:
            conn = s.connection()  # on SQLite: BEGIN IMMEDIATE, so we hold the write lock
            params: dict[str, object] = {"k": self.key, "i": self.interval}
            if self._sqlite:
                params["now"] = time.time()  # read under the lock: no slot in the past
            start, now = conn.execute(self._statement, params).one()
        return Slot(float(start), max(0.0, float(start) - float(now)))

    def next_slot(self) -> float:
        """Reserve the next send slot atomically in ONE statement; return seconds to wait
        (>= 0) until it starts."""
        return self.reserve().wait

    def wait(
        self,
        heartbeat: Callable[[], None] | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> float:
        """Reserve a slot and sleep until it, calling heartbeat() at least every 5 s while
        sleeping (and not at all when there's no wait); return seconds waited."""
        wait = self.next_slot()
        left = wait
        while left > 0:
            if heartbeat is not None:
                heartbeat()
            step = min(left, HEARTBEAT_EVERY)
            sleep(step)  # time.sleep never returns early (PEP 475)
            left -= step
        if wait > 0 and heartbeat is not None:
            heartbeat()  # fresh for the provider call that follows
        return wait


def pacer_for(db: Database, rate: float) -> SendPacer | None:
    """The pacer for a provider rate limit (None for 0: no limit)."""
    return SendPacer(db, rate) if rate > 0 else None
