"""The send pacer (dunning.pacing) on SQLite and PostgreSQL: slots one interval apart, per key,
strict under concurrent reservers from two engines (two workers), and `wait()`'s heartbeats."""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass
from itertools import pairwise

import pytest

from dunning.db import Database
from dunning.pacing import HEARTBEAT_EVERY, PACING_MARGIN, SendPacer, Slot

# Slot starts are compared on the clock that stamped them (the database's), and a free slot means
# no wait at all; float rounding of epoch seconds is below a microsecond.
EXACT = 1e-5


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most events in any half-open interval [t, t + window)."""
    ordered = sorted(times)
    return max(
        (bisect.bisect_left(ordered, t + window) - i for i, t in enumerate(ordered)), default=0
    )


@dataclass
class Reserved:
    """A reservation with this process's monotonic clock read just before and after it."""

    slot: Slot
    before: float
    after: float

    @property
    def offset(self) -> tuple[float, float]:
        """Bounds of (database clock - monotonic clock): the reservation read the database's
        clock somewhere between `before` and `after`, and `start - wait` is that reading
        (unless the wait was cut to 0: then the reading was later, the lower bound stands)."""
        now = self.slot.start - self.slot.wait
        return now - self.after, now - self.before if self.slot.wait > 0 else float("inf")


def reserve(pacer: SendPacer) -> Reserved:
    before = time.monotonic()
    slot = pacer.reserve()
    return Reserved(slot, before, time.monotonic())


def assert_waits_consistent(reserved: list[Reserved]) -> None:
    """One clock offset explains every wait: each wait leads to its own slot start."""
    low = max(r.offset[0] for r in reserved)
    high = min(r.offset[1] for r in reserved)
    assert low <= high + EXACT, (low, high)


def test_interval_and_bad_rates(sqlite_db: Database) -> None:
    assert SendPacer(sqlite_db, 5).interval == pytest.approx((1 + PACING_MARGIN) / 5)
    assert SendPacer(sqlite_db, 4, margin=0).interval == pytest.approx(0.25)
    for rate in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="rate"):
            SendPacer(sqlite_db, rate)
    with pytest.raises(ValueError, match="margin"):
        SendPacer(sqlite_db, 5, margin=-0.1)


def test_consecutive_slots_are_one_interval_apart(db: Database, uid: str) -> None:
    pacer = SendPacer(db, 10, key=f"seq-{uid}")
    reserved = [reserve(pacer) for _ in range(6)]
    waits = [r.slot.wait for r in reserved]
    assert waits[0] < EXACT  # a fresh key: the first slot is now
    assert all(w >= 0 for w in waits)
    # Nobody sleeps, so slot k starts k intervals after the first, and its wait is that minus
    # the time the earlier reservations took.
    first = reserved[0].slot.start
    for k, r in enumerate(reserved):
        assert r.slot.start - first == pytest.approx(k * pacer.interval, abs=EXACT)
        elapsed = (r.before - reserved[0].after, r.after - reserved[0].before)
        assert elapsed[0] - EXACT <= k * pacer.interval - r.slot.wait <= elapsed[1] + EXACT
    assert_waits_consistent(reserved)
    assert pacer.next_slot() == pytest.approx(6 * pacer.interval, abs=0.2)


def test_keys_do_not_interfere(db: Database, uid: str) -> None:
    a = SendPacer(db, 2, key=f"a-{uid}")
    b = SendPacer(db, 2, key=f"b-{uid}")
    a0, a1 = a.reserve(), a.reserve()
    assert a0.wait < EXACT
    assert a1.start - a0.start == pytest.approx(a.interval, abs=EXACT)
    b0 = b.reserve()  # free at once although a's next slot is a second off
    assert b0.wait < EXACT
    a2, b1 = a.reserve(), b.reserve()
    assert a2.start - a0.start == pytest.approx(2 * a.interval, abs=EXACT)
    assert b1.start - b0.start == pytest.approx(b.interval, abs=EXACT)
    assert a1.wait > a.interval / 2 and b1.wait > b.interval / 2


def test_an_idle_spell_banks_no_slots(db: Database, uid: str) -> None:
    """Unlike a token bucket, a pacer idle for a while does not let a burst through after it."""
    pacer = SendPacer(db, 20, key=f"idle-{uid}")
    pacer.reserve()
    time.sleep(4 * pacer.interval)
    reserved = [reserve(pacer) for _ in range(3)]
    assert reserved[0].slot.wait < EXACT
    for k in (1, 2):
        assert reserved[k].slot.start - reserved[0].slot.start == pytest.approx(
            k * pacer.interval, abs=EXACT)
        assert reserved[k].slot.wait > (k - 0.5) * pacer.interval
    assert_waits_consistent(reserved)


def test_concurrent_reservers_on_two_workers_never_crowd(db: Database, uid: str) -> None:
    """8 threads x 10 slots, split over two engines on the same database (two workers)."""
    rate = 10.0
    other = Database(db.url, pool_size=4)
    try:
        pacers = [SendPacer(db, rate, key=f"many-{uid}"), SendPacer(other, rate, key=f"many-{uid}")]
        reserved: list[Reserved] = []
        lock = threading.Lock()
        go = threading.Barrier(8)
        errors: list[BaseException] = []

        def reserver(n: int) -> None:
            try:
                go.wait()
                for _ in range(10):
                    r = reserve(pacers[n % 2])
                    with lock:
                        reserved.append(r)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=reserver, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    finally:
        other.dispose()
    assert not errors, errors
    assert len(reserved) == 80
    starts = sorted(r.slot.start for r in reserved)
    gaps = [b - a for a, b in pairwise(starts)]
    interval = pacers[0].interval
    assert min(gaps) >= interval - EXACT, sorted(gaps)[:5]
    assert max_in_window(starts) <= rate
    # ...and no slack: the slots are back to back (80 slots fill 79 intervals).
    assert starts[-1] - starts[0] == pytest.approx(79 * interval, abs=79 * EXACT)
    assert_waits_consistent(reserved)


def test_wait_heartbeats_while_sleeping(db: Database, uid: str) -> None:
    pacer = SendPacer(db, 0.05, key=f"hb-{uid}")  # one send every 20.4 s
    events: list[tuple[str, float]] = []

    def heartbeat() -> None:
        events.append(("heartbeat", 0.0))

    def sleep(seconds: float) -> None:
        events.append(("sleep", seconds))

    # A fresh key: no wait, so neither a heartbeat nor a sleep.
    assert pacer.wait(heartbeat, sleep=sleep) == 0
    assert events == []

    waited = pacer.wait(heartbeat, sleep=sleep)
    assert waited == pytest.approx(pacer.interval, abs=0.5)
    slept = [s for kind, s in events if kind == "sleep"]
    assert sum(slept) == pytest.approx(waited)
    assert all(0 < s <= HEARTBEAT_EVERY for s in slept)
    # A heartbeat first, then never more than HEARTBEAT_EVERY of sleep without one, and one
    # right before the provider call.
    assert events[0][0] == "heartbeat" and events[-1][0] == "heartbeat"
    since = 0.0
    for kind, seconds in events:
        since = 0.0 if kind == "heartbeat" else since + seconds
        assert since <= HEARTBEAT_EVERY
    assert sum(1 for kind, _ in events if kind == "heartbeat") >= 5

    # Without a heartbeat it still sleeps the whole wait.
    events.clear()
    waited = pacer.wait(sleep=sleep)
    assert waited == pytest.approx(2 * pacer.interval, abs=0.5)
    assert sum(s for _, s in events) == pytest.approx(waited)


def test_wait_really_sleeps_until_the_slot(db: Database, uid: str) -> None:
    pacer = SendPacer(db, 20, key=f"real-{uid}")
    assert pacer.wait() == 0
    before = time.monotonic()
    waited = pacer.wait()
    assert 0 < waited <= pacer.interval + EXACT
    assert time.monotonic() - before >= waited
