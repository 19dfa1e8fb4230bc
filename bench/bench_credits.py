"""Credit reservations under contention on PostgreSQL: R concurrent reservers on ONE account.

Compares, in the same run, against the same row and with the same concurrency:
- raw:  `UPDATE accounts SET credit_balance = credit_balance - 1 WHERE id = %s AND
         credit_balance >= 1 RETURNING credit_balance` + COMMIT, through psycopg directly;
- ours: the send activity's debit (`message_log.claim_paid`, fair and queue-aware): the
        balance, its ledger row and the claimed `messages` row in one statement, sent with
        its COMMIT in one round trip (a prepared statement's EXECUTE), in a SQLAlchemy
        session;
- ours, three trips: the same debit and claim the way a send takes them when its debit
        crosses a notice level or the refill threshold (`ledger.reserve`, then the claim's
        INSERT, then COMMIT; the one-trip path's figure before it existed).
Threads, one connection each. The database is created and dropped by the bench.

    python -m bench.bench_credits [--seconds 10] [--reservers 50] [--rounds 5]
        [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]

Target (issue 17): ours >= 0.7 x raw.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bench.common import table, throwaway_postgres
from dunning.accounts.accounts import AccountOptions, create_account
from dunning.credits import ledger
from dunning.messages import log as message_log
from dunning.messages.log import MessageKey
from dunning.platform.db import Database
from dunning.platform.db.models import Message

ACCOUNT = "bench-credits"
START_BALANCE = 10**12


def hammer(reservers: int, seconds: float, make_worker: Callable[[int], Callable[[], bool]],
           cleanup: Callable[[], None] = lambda: None) -> tuple[int, float]:
    """Run `reservers` threads, each calling its worker in a loop for `seconds`; returns
    (successful reservations, elapsed seconds). Connections are opened before the clock
    starts and closed (`cleanup`) after it stops."""
    workers = [make_worker(i) for i in range(reservers)]
    counts = [0] * reservers
    start = threading.Barrier(reservers + 1)
    stop_at = [0.0]

    def run(i: int) -> None:
        work = workers[i]
        start.wait()
        n = 0
        while time.perf_counter() < stop_at[0]:
            if work():
                n += 1
        counts[i] = n

    threads = [threading.Thread(target=run, args=(i,)) for i in range(reservers)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    cleanup()
    return sum(counts), elapsed


def raw_worker(dsn: str, opened: list[psycopg.Connection[Any]]
               ) -> Callable[[int], Callable[[], bool]]:
    def make(_i: int) -> Callable[[], bool]:
        conn = psycopg.connect(dsn)
        opened.append(conn)
        sql = ("UPDATE accounts SET credit_balance = credit_balance - 1 "
               "WHERE id = %s AND credit_balance >= 1 RETURNING credit_balance")

        def work() -> bool:
            with conn.cursor() as cur:
                cur.execute(sql, (ACCOUNT,))
                ok = cur.fetchone() is not None
            conn.commit()
            return ok

        return work

    return make


def session_worker(db: Database, run: str, debit: Callable[[Session, MessageKey], bool]
                   ) -> Callable[[int], Callable[[], bool]]:
    """Reservers that each take a new message key and `debit` it in a session of their own."""
    def make(i: int) -> Callable[[], bool]:
        k = [0]
        with db.session() as s:  # open this thread's connection before the clock starts
            s.connection()

        def work() -> bool:
            k[0] += 1
            key = MessageKey(f"dunning-{ACCOUNT}-{run}-r{i}-{k[0]}", run, 1, "sms")
            with db.session() as s:
                return debit(s, key)

        return work

    return make


def one_trip(s: Session, key: MessageKey) -> bool:
    """The send's debit on PostgreSQL: balance, ledger row and claim in one trip."""
    return message_log.claim_paid(s, key, ACCOUNT, "c1", "+1415***0100", credits=1,
                                  segments=1, encoding="GSM", hold=False) is not None


def three_trips(s: Session, key: MessageKey) -> bool:
    """The same work the locked path's way: reserve, then claim, then COMMIT."""
    if not ledger.reserve(s, ACCOUNT, 1, workflow_id=key.workflow_id, step=1,
                          enqueue=True).ok:
        return False
    message_log.claim(s, None, key, ACCOUNT, "c1", "+1415***0100", credits=1, segments=1,
                      encoding="GSM")
    return True


def run(admin_url: str, seconds: float, reservers: int, rounds: int) -> dict[str, Any]:
    with throwaway_postgres("dunning_bench_credits", admin_url) as url:
        dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
        db = Database(url, pool_size=reservers)
        try:
            db.upgrade()
            with db.session() as s:
                create_account(s, ACCOUNT, AccountOptions(company_name="Bench Co"))
                ledger.top_up(s, ACCOUNT, START_BALANCE)
            raw_total = ours_total = three_total = 0
            raw_time = ours_time = three_time = 0.0
            for r in range(rounds):  # short interleaved slices: both see the same machine
                slice_s = seconds / rounds
                opened: list[psycopg.Connection[Any]] = []

                def close_all(conns: list[psycopg.Connection[Any]] = opened) -> None:
                    for c in conns:
                        c.close()

                n, t = hammer(reservers, slice_s, raw_worker(dsn, opened), close_all)
                raw_total, raw_time = raw_total + n, raw_time + t
                n, t = hammer(reservers, slice_s, session_worker(db, f"o{r}", one_trip),
                              db.engine.dispose)
                ours_total, ours_time = ours_total + n, ours_time + t
                n, t = hammer(reservers, slice_s, session_worker(db, f"t{r}", three_trips),
                              db.engine.dispose)
                three_total, three_time = three_total + n, three_time + t
            with db.session() as s:
                balance = ledger.balance_of(s, ACCOUNT)
                exact = ledger.ledger_sum(s, ACCOUNT) - raw_total == balance
                claimed = s.scalar(select(func.count()).select_from(Message)
                                   .where(Message.account_id == ACCOUNT))
            assert balance == START_BALANCE - raw_total - ours_total - three_total
            assert exact, "the ledger does not add up"
            assert claimed == ours_total + three_total, "a debit without its claimed row"
        finally:
            db.dispose()
    raw_rate, ours_rate = raw_total / raw_time, ours_total / ours_time
    three_rate = three_total / three_time
    ratio = ours_rate / raw_rate
    table(f"credit reservations: {reservers} reservers on one account, PostgreSQL, "
          f"{seconds:g} s each, in {rounds} interleaved slices", [
              ("raw conditional UPDATE", f"{raw_rate:,.0f} reservations/s ({raw_total:,})"),
              ("ours: debit + ledger + claim", f"{ours_rate:,.0f} reservations/s ({ours_total:,})"),
              ("ours/raw", f"{ratio:.2f} (target >= 0.7: {'met' if ratio >= 0.7 else 'NOT met'})"),
              ("ours, three trips", f"{three_rate:,.0f} reservations/s ({three_total:,}), "
                                    f"{three_rate / raw_rate:.2f} of raw"),
              ("ledger", "exact: balance == sum of ledger - raw debits (which have no entries); "
                         "one claimed row per debit of ours"),
          ])
    return {"reservers": reservers, "raw_per_s": raw_rate, "ours_per_s": ours_rate,
            "ratio": ratio, "three_trips_per_s": three_rate}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="measured time of each contender")
    parser.add_argument("--reservers", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved slices the time is split into")
    parser.add_argument("--admin-url", default=os.environ.get(
        "DUNNING_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args(argv)
    return run(args.admin_url, args.seconds, args.reservers, args.rounds)


if __name__ == "__main__":
    main()
