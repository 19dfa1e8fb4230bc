"""The send pacer (dunning.messages.pacing) on SQLite and PostgreSQL: a slot is taken only when it
is
free and then not again for one interval, per key; takes from two engines (two workers) and
many threads never come closer than the interval; `sleep()` heartbeats."""

from __future__ import annotations

import bisect
import threading
import time
from itertools import pairwise

import pytest
from sqlalchemy import text

from dunning.messages.pacing import HEARTBEAT_EVERY, PACING_MARGIN, SendPacer
from dunning.platform.db import Database


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most events in any half-open interval [t, t + window)."""
    ordered = sorted(times)
    return max(
        (bisect.bisect_left(ordered, t + window) - i for i, t in enumerate(ordered)), default=0
    )


def take(db: Database, pacer: SendPacer) -> float:
    with db.session() as s:
        return pacer.take(s)


def next_at(db: Database, key: str) -> float:
    with db.session() as s:
        return float(s.execute(text("SELECT next_at FROM send_slots WHERE key = :k"),
                               {"k": key}).scalar_one())


def test_interval_and_bad_rates(sqlite_db: Database) -> None:
    assert SendPacer(sqlite_db, 5).interval == pytest.approx((1 + PACING_MARGIN) / 5)
    assert SendPacer(sqlite_db, 4, margin=0).interval == pytest.approx(0.25)
    for rate in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="rate"):
            SendPacer(sqlite_db, rate)
    with pytest.raises(ValueError, match="margin"):
        SendPacer(sqlite_db, 5, margin=-0.1)


def test_a_slot_is_free_once_per_interval(db: Database, uid: str) -> None:
    pacer = SendPacer(db, 5, key=f"seq-{uid}")
    assert take(db, pacer) == 0.0  # a fresh key: free
    first = next_at(db, pacer.key)
    left = take(db, pacer)  # taken a moment ago: not free, and nothing changes
    assert 0 < left <= pacer.interval
    assert next_at(db, pacer.key) == first
    time.sleep(left)
    assert take(db, pacer) == 0.0
    assert next_at(db, pacer.key) >= first + pacer.interval - 1e-3


def test_a_take_rolled_back_leaves_the_slot_free(db: Database, uid: str) -> None:
    """The slot belongs to the claim's transaction: if it rolls back, nobody called out."""
    pacer = SendPacer(db, 1, key=f"rb-{uid}")
    with pytest.raises(RuntimeError), db.session() as s:
        assert pacer.take(s) == 0.0
        raise RuntimeError("claim failed")
    assert take(db, pacer) == 0.0


def test_keys_do_not_interfere(db: Database, uid: str) -> None:
    a = SendPacer(db, 2, key=f"a-{uid}")
    b = SendPacer(db, 2, key=f"b-{uid}")
    assert take(db, a) == 0.0
    assert take(db, b) == 0.0  # free although a's slot is half a second off
    assert take(db, a) > a.interval / 2 and take(db, b) > b.interval / 2


def test_concurrent_senders_on_two_workers_never_crowd(db: Database, uid: str) -> None:
    """8 threads over two engines on one database (two workers) each take 4 slots, sleeping
    as told in between: the moments they got them (the database's clock, read in the same
    transaction) are never closer than the interval and never more than `rate` in a second."""
    rate = 20.0
    other = Database(db.url, pool_size=4)
    key = f"many-{uid}"
    # The moment a slot was granted, as the pacer wrote it (next_at - interval), read in the
    # take's own transaction (the row is ours until commit): a reading of the clock after the
    # take would add the scheduling delay of a loaded machine to the measurement.
    granted = text("SELECT next_at FROM send_slots WHERE key = :k")
    got: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    try:
        pacers = [SendPacer(db, rate, key=key), SendPacer(other, rate, key=key)]
        dbs = [db, other]
        go = threading.Barrier(8)

        def sender(n: int) -> None:
            pacer, base = pacers[n % 2], dbs[n % 2]
            try:
                go.wait()
                for _ in range(4):
                    while True:
                        with base.session() as s:
                            left = pacer.take(s)
                            if not left:
                                at = float(s.execute(granted, {"k": key}).scalar_one())
                                at -= pacer.interval
                                break
                        pacer.sleep(left)
                    with lock:
                        got.append(at)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=sender, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        other.dispose()
    assert not errors, errors
    assert len(got) == 32
    gaps = [b - a for a, b in pairwise(sorted(got))]
    assert min(gaps) >= pacers[0].interval - 2e-3, sorted(gaps)[:3]
    assert max_in_window(got) <= rate


def test_sleep_heartbeats_while_waiting(sqlite_db: Database) -> None:
    pacer = SendPacer(sqlite_db, 0.05)  # one send every 20.4 s
    events: list[tuple[str, float]] = []
    pacer.sleep(20.4, lambda: events.append(("heartbeat", 0.0)),
                sleep=lambda s: events.append(("sleep", s)))
    slept = [s for kind, s in events if kind == "sleep"]
    assert sum(slept) == pytest.approx(20.4, abs=0.011)
    assert all(0 < s <= HEARTBEAT_EVERY for s in slept)
    assert events[0][0] == "heartbeat"
    since = 0.0
    for kind, seconds in events:  # never more than HEARTBEAT_EVERY without one
        since = 0.0 if kind == "heartbeat" else since + seconds
        assert since <= HEARTBEAT_EVERY
    assert sum(1 for kind, _ in events if kind == "heartbeat") == 5
