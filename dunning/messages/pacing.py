"""A strict provider send pace shared by every worker, kept in one database row.

Why: the SMS task queue's rate limit is a token bucket in the Temporal server. The bucket starts
full, so right after an idle spell it hands out up to twice the limit in the first second. The
provider's limit is a cap, not a mean. So a send takes the provider's slot in the same
transaction that claims its message, and calls the provider right after that commits:

- `take` is one conditional upsert of the key's `send_slots` row: if the row's `next_at` has
  passed, it moves to now + interval and the slot is ours; otherwise nothing changes and the
  caller learns how long until it frees up, sleeps (heartbeating) and tries again.
- The row lock orders the takes of all workers on all hosts; the time stamped is the moment of
  the take, under the lock, so two provider calls are never closer than `interval` apart, up to
  the few milliseconds between a commit and the request leaving (hence `PACING_MARGIN`).
- On PostgreSQL the database's clock (`clock_timestamp()`) stamps the slots, so workers on hosts
  whose clocks disagree still agree on the pace; only durations leave the database. On SQLite
  the clock is read in Python once the transaction holds the write lock.
- Only a send that is about to call the provider takes a slot (skipped sends cost nothing), and
  while a send waits for one its message row is `retry` with its credits held: a crash there is
  simply retried, never an ambiguous send.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable

from sqlalchemy import TextClause, text
from sqlalchemy.orm import Session

from dunning.platform.db import Database

# Spacing = (1 + margin) / rate: `rate + 1` calls span (1 + margin) seconds, so a strict `rate`
# per second survives up to margin seconds (20 ms) of jitter between a take's commit and the
# provider seeing the request; at 5/s it costs 2% of the throughput.
PACING_MARGIN = 0.02

# While waiting for a slot, `sleep()` calls its heartbeat at least this often (the send
# activity's heartbeat timeout is longer).
HEARTBEAT_EVERY = 5.0

_PG_NOW = "CAST(extract(epoch from clock_timestamp()) AS double precision)"
_TAKE = {
    "postgresql": f"""
INSERT INTO send_slots (key, next_at) VALUES (:k, {_PG_NOW} + :i)
ON CONFLICT (key) DO UPDATE SET next_at = {_PG_NOW} + :i
WHERE send_slots.next_at <= {_PG_NOW}
RETURNING next_at""",
    "sqlite": """
INSERT INTO send_slots (key, next_at) VALUES (:k, :now + :i)
ON CONFLICT (key) DO UPDATE SET next_at = :now + :i
WHERE send_slots.next_at <= :now
RETURNING next_at""",
}
_LEFT = {
    "postgresql": f"SELECT next_at - {_PG_NOW} FROM send_slots WHERE key = :k",
    "sqlite": "SELECT next_at - :now FROM send_slots WHERE key = :k",
}


@functools.cache
def _statements(dialect: str) -> tuple[TextClause, TextClause]:
    if dialect not in _TAKE:
        raise ValueError(f"send pacing supports SQLite and PostgreSQL, not {dialect!r}")
    return text(_TAKE[dialect]), text(_LEFT[dialect])


class SendPacer:
    """Spaces the provider calls of one key at least `interval` apart across all workers."""

    def __init__(
        self, db: Database, rate: float, *, key: str = "sms", margin: float = PACING_MARGIN
    ) -> None:
        if not rate > 0:  # also refuses NaN
            raise ValueError(f"the send rate must be above 0, not {rate!r}")
        if not margin >= 0:
            raise ValueError(f"the pacing margin must be 0 or more, not {margin!r}")
        self.rate = rate
        self.key = key
        self.margin = margin
        self._take, self._left = _statements(db.dialect)
        self._sqlite = db.dialect == "sqlite"

    @property
    def interval(self) -> float:
        """Seconds between two provider calls, at least."""
        return (1 + self.margin) / self.rate

    def take(self, session: Session) -> float:
        """In the caller's transaction, whose commit the provider call follows at once: take
        the slot if it is free (returns 0.0) or change nothing and return the seconds until it
        frees up. Concurrent takes queue on the row lock until the first one commits."""
        conn = session.connection()  # on SQLite: BEGIN IMMEDIATE, the write lock is ours
        params: dict[str, object] = {"k": self.key, "i": self.interval}
        if self._sqlite:
            params["now"] = time.time()  # read under the lock
        if conn.execute(self._take, params).first() is not None:
            return 0.0
        if self._sqlite:
            params["now"] = time.time()
        left = conn.execute(self._left, params).scalar()
        return max(float(left or 0.0), 1e-3)

    def sleep(
        self,
        seconds: float,
        heartbeat: Callable[[], None] | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Sleep until the slot frees up (plus a few random milliseconds, so waiters do not
        retry in lockstep), calling heartbeat() at least every HEARTBEAT_EVERY seconds."""
        left = seconds + random.uniform(0, min(0.01, self.interval / 10))
        while left > 0:
            if heartbeat is not None:
                heartbeat()
            step = min(left, HEARTBEAT_EVERY)
            sleep(step)
            left -= step


def pacer_for(db: Database, rate: float) -> SendPacer | None:
    """The pacer for a provider rate limit (None for 0: no limit)."""
    return SendPacer(db, rate) if rate > 0 else None
