"""The send's one-trip debit on PostgreSQL (`message_log.claim_paid` over
`ledger.debit_and_commit`): credits, ledger row and the claimed message row in one statement
sent with its COMMIT.

It must take exactly the debits that leave nothing for the follow-ups to do (the SQL twin of
`followups._decide`, checked over a grid), take nothing when it does not match, commit all of
its rows together, never overdraw under contention, keep the waiters' order, and let a racing
attempt on the same message lose with IntegrityError and nothing debited."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from temporalio.testing import ActivityEnvironment

from activities import DunningActivities
from dunning.credits import ledger
from dunning.credits.followups import _decide
from dunning.domain.contract import MessageRequest
from dunning.messages import log as message_log
from dunning.messages.log import MessageKey
from dunning.platform.db import Database, PreparedStatementLost
from dunning.platform.db.models import Account, CreditEntry, Message
from dunning.platform.providers.email import ConsoleEmailProvider
from dunning.platform.providers.sms import OutgoingSms
from tests.db.test_credits import assert_ledger_exact, make_account, run_threads
from tests.helpers import add_customer
from tests.helpers import make_account as make_case_account


def claim(db: Database, account_id: str, wf: str, credits: int = 1, *, hold: bool = False,
          step: int = 1) -> tuple[ledger.Reservation, message_log.Claim] | None:
    with db.session() as s:
        return claim_in(s, account_id, wf, credits, hold=hold, step=step)


def claim_in(s: Session, account_id: str, wf: str, credits: int = 1, *, hold: bool = False,
             step: int = 1) -> tuple[ledger.Reservation, message_log.Claim] | None:
    """The one-trip debit in the caller's session (ending its transaction)."""
    return message_log.claim_paid(
        s, MessageKey(wf, "run-1", step, "sms"), account_id, "c1", "+1415***0100",
        credits=credits, segments=1, encoding="GSM", hold=hold,
    )


def counts(db: Database, account_id: str) -> tuple[int, int, int]:
    """(balance, ledger entries, message rows) of an account."""
    with db.session() as s:
        entries = s.scalar(select(func.count()).select_from(CreditEntry)
                           .where(CreditEntry.account_id == account_id))
        rows = s.scalar(select(func.count()).select_from(Message)
                        .where(Message.account_id == account_id))
        return ledger.balance_of(s, account_id), int(entries or 0), int(rows or 0)


def test_matches_exactly_the_debits_that_leave_no_follow_up(pg_db: Database, uid: str) -> None:
    account = f"trip-grid-{uid}"
    make_account(pg_db, account, 0)
    cases = itertools.product(
        (0, 1, 2, 5, 10),  # balance before
        (None, 1, 3, 5),  # auto-refill threshold
        (None, 0, 20),  # auto-refill amount
        (None, ledger.NOTICE_LOW, ledger.NOTICE_ZERO),  # notice already sent
        (1, 2),  # the text's price
    )
    checked = taken = 0
    for n, (balance, threshold, refill, notice, price) in enumerate(cases):
        with pg_db.session() as s:
            s.execute(update(Account).where(Account.id == account).values(
                credit_balance=balance, auto_refill_threshold=threshold,
                auto_refill_amount=refill, balance_notice=notice))
        before = counts(pg_db, account)
        paid = claim(pg_db, account, f"wf-{uid}-{n}", price)
        fits = balance >= price
        after_state = ledger.Reservation(True, balance - price, account, price, notice=notice,
                                         threshold=threshold, refill_amount=refill)
        level, crossed, stale = _decide(after_state)
        expected = fits and level is None and not crossed and not stale
        assert (paid is not None) == expected, (balance, threshold, refill, notice, price)
        if paid is None:
            assert counts(pg_db, account) == before  # nothing of it happened
        else:
            reservation, _claimed = paid
            assert reservation.balance == balance - price
            assert counts(pg_db, account) == (balance - price, before[1] + 1, before[2] + 1)
            taken += 1
        checked += 1
    assert checked == 5 * 4 * 3 * 3 * 2 and 0 < taken < checked


def test_commits_the_balance_the_ledger_row_and_the_claim_together(
    pg_db: Database, uid: str
) -> None:
    account = f"trip-one-{uid}"
    make_account(pg_db, account, 10)
    paid = claim(pg_db, account, f"wf-{uid}", 3)
    assert paid is not None
    reservation, claimed = paid
    assert reservation.ok and reservation.balance == 7 and reservation.entry_id
    held = claim(pg_db, account, f"wf-{uid}-held", 2, hold=True)
    assert held is not None
    with pg_db.session() as s:  # another transaction sees everything
        rows = {r.workflow_id: r for r in s.scalars(
            select(Message).where(Message.account_id == account))}
        entry = s.get(CreditEntry, reservation.entry_id)
    assert entry is not None and entry.amount == -3 and entry.balance_after == 7
    assert entry.kind == "sms_debit" and entry.workflow_id == f"wf-{uid}"
    mine = rows[f"wf-{uid}"]
    assert (mine.id, mine.status, mine.attempts, mine.credits) == (claimed.id, "claimed", 1, 3)
    assert mine.recipient_hint == "+1415***0100" and mine.segments == 1
    waiting = rows[f"wf-{uid}-held"]
    assert (waiting.status, waiting.attempts, waiting.credits) == ("retry", 0, 2)
    assert waiting.reason == message_log.SLOT_REASON
    assert assert_ledger_exact(pg_db, account) == 5


def test_a_racing_attempt_on_the_same_message_loses_and_nothing_is_debited(
    pg_db: Database, uid: str
) -> None:
    account = f"trip-race-{uid}"
    make_account(pg_db, account, 10)
    assert claim(pg_db, account, f"wf-{uid}") is not None
    with pytest.raises(IntegrityError):
        claim(pg_db, account, f"wf-{uid}")
    assert counts(pg_db, account) == (9, 2, 1)  # the top-up and one debit; one row
    assert assert_ledger_exact(pg_db, account) == 9


def test_a_queued_case_or_one_behind_waiters_is_left_to_the_locked_path(
    pg_db: Database, uid: str
) -> None:
    account = f"trip-queue-{uid}"
    make_account(pg_db, account, 0)
    with pg_db.session() as s:  # an older waiter needs 5
        ledger.add_waiter(s, account, f"old-{uid}", 5, step=1)
        ledger.add_waiter(s, account, f"me-{uid}", 1, step=1)
        ledger.top_up(s, account, 5)
    assert claim(pg_db, account, f"new-{uid}") is None  # 5 are owed to the waiter ahead
    assert claim(pg_db, account, f"me-{uid}") is None  # queued: the locked path serves it
    assert claim(pg_db, account, f"old-{uid}", 5) is None
    assert counts(pg_db, account)[0] == 5
    with pg_db.session() as s:  # the locked path still serves the first in line
        assert ledger.reserve(s, account, 5, workflow_id=f"old-{uid}", step=1,
                              enqueue=True).ok
    assert assert_ledger_exact(pg_db, account) == 0


def test_many_senders_racing_for_a_small_balance_never_overdraw(
    pg_db: Database, uid: str
) -> None:
    account = f"trip-many-{uid}"
    make_account(pg_db, account, 24)

    def go(i: int) -> Any:
        return claim(pg_db, account, f"wf-{uid}-{i}", 2)

    results = run_threads(8, lambda i: [go(i * 10 + k) for k in range(10)])
    taken = [r for batch in results for r in batch if r is not None]
    balance, entries, rows = counts(pg_db, account)
    # 24 pays 12 texts of 2, but the twelfth would leave 0 (a `zero` notice is due): the
    # one-trip path takes eleven and leaves that one to the locked path.
    assert len(taken) == rows == entries - 1 == 11
    assert balance == 2
    assert sorted(r[0].balance for r in taken) == list(range(2, 24, 2))
    assert assert_ledger_exact(pg_db, account) == 2


def test_a_send_the_one_trip_path_leaves_rechecks_the_customer_under_its_lock(
    pg_db: Database, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one-trip statement's COMMIT also releases the customer row's lock. A send whose
    debit then takes the locked path (here: it crosses the low-balance threshold) must start
    over, so two cases of one customer still never both take the day's one SMS: case A is
    held inside the locked path while case B tries its send; B must wait for A's lock and then
    find A's SMS (with A's lock released too early, B passes the check and both are sent)."""
    account = f"trip-conv-{uid}"
    make_case_account(pg_db, account, schedule="0s", balance=50)
    add_customer(pg_db, account, "cus1")
    with pg_db.session() as s:  # every debit crosses the threshold: the one trip never matches
        s.execute(update(Account).where(Account.id == account).values(
            auto_refill_threshold=100, daily_message_limit=1))
    sms = CountingSms()
    acts = DunningActivities(pg_db, sms, ConsoleEmailProvider(echo=False))
    b_done = threading.Event()
    a_thread: list[threading.Thread] = []
    real_reserve = ledger.reserve

    def slow_for_a(*args: Any, **kwargs: Any) -> ledger.Reservation:
        if threading.current_thread() is a_thread[0]:
            b_done.wait(timeout=3)  # B goes first if nothing holds it back
        return real_reserve(*args, **kwargs)

    monkeypatch.setattr(ledger, "reserve", slow_for_a)

    def send(case: str) -> str:
        try:
            return send_sms(acts, account, f"dunning-{account}-{case}", "cus1")
        finally:
            if case == "b":
                b_done.set()

    results: dict[str, str] = {}
    a = threading.Thread(target=lambda: results.__setitem__("a", send("a")))
    a_thread.append(a)
    a.start()
    time.sleep(0.5)  # A is inside the locked path now
    results["b"] = send("b")
    a.join(timeout=30)
    assert results["a"] == "sent" and results["b"] != "sent", results
    assert len(sms.calls) == 1
    with pg_db.session() as s:
        rows = s.scalars(select(Message).where(Message.account_id == account)).all()
    assert [(r.workflow_id, r.status) for r in rows if r.channel == "sms"] == [
        (f"dunning-{account}-a", "sent")]


def send_sms(acts: DunningActivities, account: str, workflow_id: str, customer: str) -> str:
    """Step 1's SMS of a one-step case, through the activity as the workflow runs it."""
    now = datetime.now(UTC)
    req = MessageRequest(
        workflow_id=workflow_id, account_id=account, customer_id=customer,
        invoice_id=workflow_id, step=1, step_count=1, amount_due=4900, currency="USD",
        billing_link="https://pay.example.com/x", failed_at=now, now=now)
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, workflow_id=workflow_id, workflow_run_id="run-1")
    return env.run(acts.send_sms, req).status


class CountingSms:
    """An SMS provider at the edge of the machine that takes every message."""

    name = "counting"

    def __init__(self) -> None:
        self.calls: list[OutgoingSms] = []

    def send(self, sms: OutgoingSms) -> str:
        self.calls.append(sms)
        return f"uuid-{len(self.calls)}"


def test_a_case_waiting_in_the_credit_queue_goes_straight_to_the_locked_path(
    pg_db: Database, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A woken case (queued, its credits granted by the wake) never matches the one-trip
    statement: the recipient query says it is queued, so its send skips the attempt (and the
    start-over it would cost) and uses its grant; a case not queued takes the one trip."""
    account = f"trip-woken-{uid}"
    make_case_account(pg_db, account, schedule="0s", balance=0)
    add_customer(pg_db, account, "cus1")
    add_customer(pg_db, account, "cus2", phone="+14155550177")
    woken, fresh = f"dunning-{account}-woken", f"dunning-{account}-fresh"
    with pg_db.session() as s:
        ledger.add_waiter(s, account, woken, 1, step=1)
        ledger.top_up(s, account, 10)
        # the wake: the waiter's credit set aside for it
        assert ledger.grant(s, account).workflow_ids == [woken]
    tried: list[str] = []
    real = message_log.claim_paid

    def spy(session: Any, key: MessageKey, *args: Any, **kwargs: Any) -> Any:
        tried.append(key.workflow_id)
        return real(session, key, *args, **kwargs)

    monkeypatch.setattr(message_log, "claim_paid", spy)
    acts = DunningActivities(pg_db, CountingSms(), ConsoleEmailProvider(echo=False))
    for wf, customer in ((woken, "cus1"), (fresh, "cus2")):
        assert send_sms(acts, account, wf, customer) == "sent"
    assert tried == [fresh]
    with pg_db.session() as s:
        assert ledger.waiters(s, account) == []
        debits = s.scalars(select(CreditEntry.workflow_id).where(
            CreditEntry.account_id == account, CreditEntry.kind == "sms_debit")).all()
    assert sorted(map(str, debits)) == sorted([woken, fresh])  # the grant's, the trip's
    assert assert_ledger_exact(pg_db, account) == 8


# --- the statement and its COMMIT in one trip (platform.db.execute_on_driver, commit=True) ---


@pytest.fixture
def one_conn(postgres_url: str) -> Iterator[Database]:
    """A database whose sessions, one after another, all use the same connection."""
    database = Database(postgres_url, pool_size=1)
    database.upgrade()
    yield database
    database.dispose()


def rename(s: Session, account_id: str, name: str) -> None:
    """Some earlier work in a transaction that the debit's COMMIT must end with it."""
    s.execute(update(Account).where(Account.id == account_id).values(company_name=name))


def company(db: Database, account_id: str) -> str:
    with db.session() as s:
        return str(s.scalar(select(Account.company_name).where(Account.id == account_id)))


def test_the_debit_commits_the_work_of_its_transaction_with_it(pg_db: Database,
                                                                 uid: str) -> None:
    account = f"trip-tx-{uid}"
    make_account(pg_db, account, 10)
    with pg_db.session() as s:
        rename(s, account, "Renamed Co")
        assert claim_in(s, account, f"wf-{uid}") is not None
        driver = s.connection().connection.driver_connection
        assert driver is not None and driver.info.transaction_status.name == "IDLE"
        assert not driver.autocommit
    assert company(pg_db, account) == "Renamed Co"
    assert counts(pg_db, account) == (9, 2, 1)
    with pytest.raises(IntegrityError), pg_db.session() as s:  # a racing copy: all or nothing
        rename(s, account, "Not This")
        claim_in(s, account, f"wf-{uid}")
    assert company(pg_db, account) == "Renamed Co"
    assert counts(pg_db, account) == (9, 2, 1)
    assert assert_ledger_exact(pg_db, account) == 9


def test_a_rollback_on_the_connection_does_not_cost_the_next_debit(one_conn: Database,
                                                                    uid: str) -> None:
    """psycopg deallocates a connection's prepared statements when it rolls a transaction back
    (once it has prepared some of its own): the next debit on that connection prepares ours
    again instead of failing."""
    account = f"trip-rb-{uid}"
    make_account(one_conn, account, 10)
    assert claim(one_conn, account, f"wf-{uid}-1") is not None
    with pytest.raises(RuntimeError), one_conn.session() as s:
        for _ in range(7):  # past psycopg's prepare threshold: it prepares, then deallocates
            s.execute(select(Account.credit_balance).where(Account.id == account))
        raise RuntimeError("a failed unit of work")
    with one_conn.session() as s:
        rename(s, account, "Still Fine")
        assert claim_in(s, account, f"wf-{uid}-2") is not None
    assert company(one_conn, account) == "Still Fine"
    assert assert_ledger_exact(one_conn, account) == 8


def test_a_statement_dropped_behind_our_back_is_prepared_again(one_conn: Database,
                                                                uid: str) -> None:
    """DEALLOCATE ALL (or DISCARD ALL) unseen: a debit alone in its transaction prepares the
    statement again and goes through; one ending a transaction with other work loses that
    transaction (PreparedStatementLost: the caller starts over) and the next one goes through."""
    account = f"trip-gone-{uid}"
    make_account(one_conn, account, 10)
    assert claim(one_conn, account, f"wf-{uid}-1") is not None

    def drop_all() -> None:
        with one_conn.session() as s:
            s.connection().exec_driver_sql("DEALLOCATE ALL")

    drop_all()
    assert claim(one_conn, account, f"wf-{uid}-2") is not None  # alone: prepared again
    drop_all()
    with pytest.raises(PreparedStatementLost), one_conn.session() as s:
        rename(s, account, "Lost Co")
        claim_in(s, account, f"wf-{uid}-3")
    assert company(one_conn, account) == f"Co {account}"  # the rename went with it
    assert counts(one_conn, account) == (8, 3, 2)  # the top-up and two debits, two rows
    with one_conn.session() as s:
        rename(s, account, "Found Co")
        assert claim_in(s, account, f"wf-{uid}-3") is not None
    assert company(one_conn, account) == "Found Co"
    assert assert_ledger_exact(one_conn, account) == 7


def test_a_send_whose_statement_was_dropped_starts_over_and_is_sent_once(
    one_conn: Database, uid: str
) -> None:
    account = f"trip-resend-{uid}"
    make_case_account(one_conn, account, schedule="0s", balance=10)
    add_customer(one_conn, account, "cus1")
    sms = CountingSms()
    acts = DunningActivities(one_conn, sms, ConsoleEmailProvider(echo=False))
    with one_conn.session() as s:  # prepare it, then drop it unseen
        assert claim_in(s, account, f"warm-{uid}") is not None
    with one_conn.session() as s:
        s.connection().exec_driver_sql("DEALLOCATE ALL")
    assert send_sms(acts, account, f"dunning-{account}-a", "cus1") == "sent"
    assert len(sms.calls) == 1
    assert assert_ledger_exact(one_conn, account) == 8
