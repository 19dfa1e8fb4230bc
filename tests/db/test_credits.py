"""The credit ledger on real databases (SQLite and PostgreSQL through the `db` fixture): no
overdraft and an exact ledger under concurrency, fair first-come reservations, no lost wake-up
(a deterministic race on PostgreSQL), rates and display prices, and the `dunning credits` CLI.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text

from dunning.accounts import pricing
from dunning.accounts.accounts import AccountOptions, create_account
from dunning.credits import ledger
from dunning.domain.contract import InputError
from dunning.platform.db import Database
from dunning.platform.db.models import Account, CreditEntry, SmsWaiter, utcnow


def make_account(db: Database, account_id: str, balance: int = 0) -> None:
    with db.session() as s:
        create_account(s, account_id, AccountOptions(company_name=f"Co {account_id}"))
        if balance:
            ledger.top_up(s, account_id, balance)


def reserve(db: Database, account_id: str, amount: int, wf: str,
            enqueue: bool = True) -> ledger.Reservation:
    with db.session() as s:
        return ledger.reserve(s, account_id, amount, workflow_id=wf, step=1, enqueue=enqueue)


def top_up(db: Database, account_id: str, amount: int) -> int:
    with db.session() as s:
        return ledger.top_up(s, account_id, amount)


def queue(db: Database, account_id: str) -> list[tuple[str, int]]:
    with db.session() as s:
        return [(w, n) for w, n, _ in ledger.waiters(s, account_id)]


def assert_ledger_exact(db: Database, account_id: str) -> int:
    """The balance equals the sum of the ledger, and every entry's balance_after is the running
    sum in id order (so the ledger replays to the balance, entry by entry)."""
    with db.session() as s:
        balance = ledger.balance_of(s, account_id)
        assert ledger.ledger_sum(s, account_id) == balance
        rows = s.execute(
            select(CreditEntry.amount, CreditEntry.balance_after)
            .where(CreditEntry.account_id == account_id).order_by(CreditEntry.id)
        ).all()
    running = 0
    for amount, after in rows:
        running += amount
        assert after == running >= 0
    assert running == balance
    return balance


def run_threads(n: int, fn: Callable[[int], Any]) -> list[Any]:
    start = threading.Barrier(n)

    def go(i: int) -> Any:
        start.wait()
        return fn(i)

    with ThreadPoolExecutor(max_workers=n) as ex:
        return list(ex.map(go, range(n)))


# --- no overdraft, exact ledger ------------------------------------------------------------


def test_many_reservers_racing_for_a_small_balance_never_overdraw(db: Database, uid: str):
    make_account(db, uid, balance=25)

    def worker(i: int) -> int:
        got = 0
        for k in range(6):
            if reserve(db, uid, 1 + (i + k) % 3, f"wf-{i}-{k}", enqueue=False).ok:
                got += 1 + (i + k) % 3
        return got

    spent = sum(run_threads(12, worker))
    assert spent <= 25
    balance = assert_ledger_exact(db, uid)
    assert balance == 25 - spent
    assert balance < 3  # the racers kept trying until nothing (or almost nothing) was left
    with db.session() as s:
        debits = s.scalars(select(CreditEntry.amount).where(
            CreditEntry.account_id == uid, CreditEntry.kind == "sms_debit")).all()
    assert -sum(debits) == spent


def test_balance_equals_ledger_after_concurrent_reserves_refunds_and_topups(
    db: Database, uid: str
):
    make_account(db, uid, balance=10)

    def worker(i: int) -> None:
        rnd = random.Random(i)
        for k in range(15):
            op = rnd.random()
            if op < 0.6:
                res = reserve(db, uid, rnd.randint(1, 4), f"wf-{i}-{k}", enqueue=False)
                if res.ok and rnd.random() < 0.3:
                    with db.session() as s:
                        ledger.refund(s, uid, res.amount, workflow_id=f"wf-{i}-{k}", step=1,
                                       message_id=None, note="provider refused")
            else:
                top_up(db, uid, rnd.randint(1, 3))

    run_threads(10, worker)
    assert_ledger_exact(db, uid)
    with db.session() as s:
        kinds = set(s.scalars(select(CreditEntry.kind).where(CreditEntry.account_id == uid)))
    assert kinds == {"topup", "sms_debit", "refund"}


def test_the_check_constraint_backs_the_conditional_update(db: Database, uid: str):
    make_account(db, uid, balance=1)
    assert not reserve(db, uid, 2, "wf").ok
    with pytest.raises(Exception, match=r"(?i)check|constraint"), db.session() as s:
        s.execute(text("UPDATE accounts SET credit_balance = -1 WHERE id = :a"), {"a": uid})
    assert assert_ledger_exact(db, uid) == 1


# --- fairness ------------------------------------------------------------------------------


def test_waiters_are_served_first_come_and_newcomers_queue_behind(db: Database, uid: str):
    make_account(db, uid, balance=0)
    for i in range(4):
        res = reserve(db, uid, 1 + i % 2, f"wf-{i}")
        assert not res.ok and res.waiting
    assert queue(db, uid) == [("wf-0", 1), ("wf-1", 2), ("wf-2", 1), ("wf-3", 2)]
    top_up(db, uid, 3)  # covers wf-0 and wf-1 exactly
    # A newcomer (not waiting) and the uncovered waiters cannot take what wf-0/wf-1 are owed.
    assert not reserve(db, uid, 1, "newcomer").ok
    assert not reserve(db, uid, 1, "wf-2").ok
    assert reserve(db, uid, 2, "wf-1").ok  # a covered waiter can reserve, in any order
    assert reserve(db, uid, 1, "wf-0").ok
    assert queue(db, uid) == [("wf-2", 1), ("wf-3", 2), ("newcomer", 1)]
    # A waiter ahead that needs more than the balance holds back those behind it (strict).
    top_up(db, uid, 2)
    assert reserve(db, uid, 1, "wf-2").ok
    assert not reserve(db, uid, 1, "newcomer").ok  # wf-3 (2 credits) is ahead and owed 1 more
    assert queue(db, uid) == [("wf-3", 2), ("newcomer", 1)]
    assert assert_ledger_exact(db, uid) == 1


def test_failed_retry_keeps_the_place_in_the_queue(db: Database, uid: str):
    make_account(db, uid)
    reserve(db, uid, 1, "first")
    reserve(db, uid, 1, "second")
    reserve(db, uid, 3, "first")  # re-checked with a new cost: same place, new need
    assert queue(db, uid) == [("first", 3), ("second", 1)]


def test_covered_waiters_always_reserve_while_newcomers_race(db: Database, uid: str):
    make_account(db, uid)
    for i in range(8):
        reserve(db, uid, 1, f"w{i}")
    top_up(db, uid, 5)  # covers w0..w4

    def attempt(i: int) -> tuple[str, bool]:
        wf = f"w{i}" if i < 8 else f"new{i}"
        return wf, reserve(db, uid, 1, wf).ok

    results = dict(run_threads(20, attempt))
    assert {w for w, ok in results.items() if ok} == {f"w{i}" for i in range(5)}
    assert [w for w, _ in queue(db, uid)][:3] == ["w5", "w6", "w7"]
    assert assert_ledger_exact(db, uid) == 0


def test_zero_cost_reservation_needs_no_credits(db: Database, uid: str):
    make_account(db, uid)
    reserve(db, uid, 1, "wf")
    res = reserve(db, uid, 0, "wf")
    assert res.ok and res.balance == 0 and queue(db, uid) == []


def test_unknown_account_is_a_user_error(db: Database, uid: str):
    with pytest.raises(InputError, match="unknown account"):
        reserve(db, f"nope-{uid}", 1, "wf")
    with pytest.raises(InputError, match="unknown account"):
        top_up(db, f"nope-{uid}", 1)


# --- no lost wake-up (PostgreSQL READ COMMITTED) ---------------------------------------------


def _pause_after_first_miss(monkeypatch: pytest.MonkeyPatch, reached: threading.Event,
                            go: threading.Event) -> None:
    """The case's thread stops right after its first conditional UPDATE matched nothing."""
    real = ledger._apply
    case_thread: dict[str, int] = {}

    def patched(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        me = threading.get_ident()
        if result is None and kwargs.get("workflow_id") == "case" and not case_thread:
            case_thread["id"] = me
            reached.set()
            assert go.wait(10)
        return result

    monkeypatch.setattr(ledger, "_apply", patched)


def _topup_then_read_waiters(db: Database, account_id: str) -> list[str]:
    """What a top-up does: commit the credits, then read the queue in a new transaction."""
    top_up(db, account_id, 1)
    return [w for w, _ in queue(db, account_id)]


def test_race_topup_between_failed_update_and_waiter_insert_is_not_lost(
    pg_db: Database, uid: str, monkeypatch: pytest.MonkeyPatch
):
    db = pg_db
    make_account(db, uid)
    reached, go = threading.Event(), threading.Event()
    _pause_after_first_miss(monkeypatch, reached, go)
    with ThreadPoolExecutor(1) as ex:
        case = ex.submit(reserve, db, uid, 1, "case")
        assert reached.wait(10)
        seen = _topup_then_read_waiters(db, uid)  # lands in the window; the queue is empty
        go.set()
        result = case.result(10)
    assert seen == []
    # The retry under the row lock saw the top-up: the case reserved, nothing waits unseen.
    assert result.ok and queue(db, uid) == []
    assert assert_ledger_exact(db, uid) == 0


def test_race_detector_catches_the_unlocked_version(
    pg_db: Database, uid: str, monkeypatch: pytest.MonkeyPatch
):
    """The same interleaving against the old code (no lock, no retry): the waiter is inserted
    after the top-up read the queue, with credits there to serve it: a lost wake-up."""
    db = pg_db
    make_account(db, uid)
    reached, go = threading.Event(), threading.Event()
    _pause_after_first_miss(monkeypatch, reached, go)

    def old_reserve() -> bool:
        with db.session() as s:
            if ledger._apply(s, uid, -1, "sms_debit", workflow_id="case", step=1) is None:
                ledger.add_waiter(s, uid, "case", 1)
                return False
        return True

    with ThreadPoolExecutor(1) as ex:
        case = ex.submit(old_reserve)
        assert reached.wait(10)
        seen = _topup_then_read_waiters(db, uid)
        go.set()
        assert case.result(10) is False
    assert seen == [] and queue(db, uid) == [("case", 1)]
    with db.session() as s:
        assert ledger.balance_of(s, uid) == 1  # enough for it, yet nobody will wake it


def test_race_topup_waits_for_the_queued_case_and_then_sees_it(
    pg_db: Database, uid: str, monkeypatch: pytest.MonkeyPatch
):
    db = pg_db
    make_account(db, uid)
    queued, go = threading.Event(), threading.Event()
    real_add = ledger.add_waiter

    def add_then_hold(*args: Any, **kwargs: Any) -> None:
        real_add(*args, **kwargs)
        queued.set()  # waiter inserted, account row locked, not committed yet
        assert go.wait(10)

    monkeypatch.setattr(ledger, "add_waiter", add_then_hold)
    with ThreadPoolExecutor(2) as ex:
        case = ex.submit(reserve, db, uid, 2, "case")
        assert queued.wait(10)
        topup = ex.submit(_topup_then_read_waiters, db, uid)
        with pytest.raises(TimeoutError):
            topup.result(0.5)  # blocked on the account row the case holds
        with db.session() as s:
            waiting = s.scalar(text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"))
        assert waiting and waiting >= 1
        go.set()
        assert not case.result(10).ok
        seen = topup.result(10)
    assert seen == ["case"]  # the top-up's read came after our commit: the wake sees us


# --- rates and prices ----------------------------------------------------------------------


def test_rates_default_account_default_and_country(db: Database, uid: str):
    make_account(db, uid)
    with db.session() as s:
        assert pricing.rate_for(s, uid, "FR") == 1
        assert pricing.sms_cost(s, uid, "FR", 3) == 3
        pricing.set_rate(s, uid, "fr", 4)
        pricing.set_rate(s, uid, None, 2)
        assert pricing.rate_for(s, uid, "FR") == 4
        assert pricing.rate_for(s, uid, "US") == 2
        assert pricing.rate_for(s, uid, None) == 2
        assert pricing.sms_cost(s, uid, "fr", 2) == 8
        data = pricing.unset_rate(s, uid, "FR")
        assert data == {"account_id": uid, "default": 2, "default_source": "account",
                        "rates": []}
        assert pricing.rate_for(s, uid, "FR") == 2
        with pytest.raises(InputError, match="country"):
            pricing.set_rate(s, uid, "ZZ", 2)
        with pytest.raises(InputError, match="at least 1"):
            pricing.set_rate(s, uid, "FR", 0)
        with pytest.raises(InputError, match="has no"):
            pricing.unset_rate(s, uid, "DE")


@pytest.mark.parametrize(
    ("price", "currency", "minor", "shown"),
    [("0.01", "USD", 1, "$12.00"), ("0.5", "eur", 50, "600,00 €"), ("3", "JPY", 3, "¥3,600")],
)
def test_display_price(db: Database, uid: str, price: str, currency: str, minor: int,
                       shown: str):
    make_account(db, uid, balance=1200)
    with db.session() as s:
        data = pricing.set_price(s, uid, price, currency)
        assert data["price"]["per_credit_minor"] == minor
        acct = s.get(Account, uid)
        assert acct is not None
        assert pricing.credits_value(acct, 1200) == shown


def test_display_price_refuses_what_the_currency_cannot_express(db: Database, uid: str):
    make_account(db, uid)
    with db.session() as s:
        for price, currency, match in [("0.001", "USD", "smallest unit"), ("0.5", "JPY",
                                       "smallest unit"), ("-1", "USD", "positive"),
                                       ("abc", "USD", "not a number"),
                                       ("0.01", "US", "ISO 4217")]:
            with pytest.raises(InputError, match=match):
                pricing.set_price(s, uid, price, currency)


# --- the CLI -------------------------------------------------------------------------------

Run = Callable[..., tuple[int, str, str]]




def one_json(out: str) -> dict[str, Any]:
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    data = json.loads(lines[0])
    assert isinstance(data, dict)
    return data


def test_cli_topup_balance_price_and_ledger_json(cli: Run, db: Database, uid: str):
    make_account(db, uid)
    code, out, err = cli("credits", "price", "--account", uid, "--price", "0.01",
                         "--currency", "USD", "--json")
    assert code == 0, err
    assert one_json(out)["price"]["display"] == "$0.01"
    code, out, err = cli("credits", "topup", "--account", uid, "120", "--json")
    assert code == 0, err
    data = one_json(out)
    assert data["account_id"] == uid and data["balance"] == 120 and data["woken"] == 0
    assert data["value"] == "$1.20" and "wake_error" in data  # no Temporal: credits still in
    assert "could not be reached" in err
    reserve(db, uid, 3, "dunning-x-inv1")
    code, out, _ = cli("credits", "balance", "--account", uid, "--json")
    data = one_json(out)
    assert (data["balance"], data["value"], data["paused_cases"]) == (117, "$1.17", 0)
    assert data["auto_refill"] is None and data["last_refill"] is None
    code, out, _ = cli("credits", "balance", "--account", uid)
    assert "balance 117 credits (= $1.17)" in out
    code, out, _ = cli("credits", "ledger", "--account", uid, "--json")
    data = one_json(out)
    assert data["balance"] == 117 and data["value"] == "$1.17"
    assert [(e["kind"], e["amount"], e["balance"], e["value"]) for e in data["entries"]] == [
        ("topup", 120, 120, "$1.20"), ("sms_debit", -3, 117, "-$0.03")]
    assert data["entries"][1]["workflow_id"] == "dunning-x-inv1" and data["entries"][1]["step"] == 1
    code, out, _ = cli("credits", "ledger", "--account", uid)
    assert code == 0 and "sms_debit" in out and "balance: 117 credits (= $1.17)" in out


def test_cli_rates(cli: Run, db: Database, uid: str):
    make_account(db, uid)
    code, out, err = cli("credits", "rates", "set", "--account", uid, "--country", "FR",
                         "--credits", "2", "--json")
    assert code == 0, err
    assert one_json(out)["rates"] == [{"country": "FR", "credits_per_segment": 2}]
    code, out, err = cli("credits", "rates", "set", "--account", uid, "--default", "3")
    assert code == 0 and "3" in out
    code, out, _ = cli("credits", "rates", "--account", uid, "--json")
    assert one_json(out) == {"account_id": uid, "default": 3, "default_source": "account",
                             "rates": [{"country": "FR", "credits_per_segment": 2}]}
    code, out, _ = cli("credits", "rates", "show", "--account", uid, "--json")
    assert one_json(out)["default"] == 3
    code, out, _ = cli("credits", "rates", "unset", "--account", uid, "--country", "FR",
                       "--json")
    assert one_json(out)["rates"] == []
    code, out, _ = cli("credits", "rates", "unset", "--account", uid, "--default", "--json")
    assert one_json(out)["default_source"] == "built-in"
    for args, match in [
        (("set", "--account", uid, "--country", "XX", "--credits", "2"), "ISO 3166"),
        (("set", "--account", uid, "--country", "FR"), "--credits"),
        (("set", "--account", uid, "--country", "FR", "--credits", "0"), "at least 1"),
        (("unset", "--account", uid, "--country", "DE"), "has no"),
        (("set", "--account", f"nope-{uid}", "--default", "2"), "unknown account"),
    ]:
        code, out, err = cli("credits", "rates", *args)
        assert code == 1 and out == "", (args, out)
        assert "Traceback" not in err
        assert __import__("re").search(match, err), (args, err)


def test_cli_user_errors_exit_1_without_traceback(cli: Run, db: Database, uid: str):
    make_account(db, uid)
    for args in [
        ("credits", "topup", "--account", uid, "0"),
        ("credits", "topup", "--account", f"nope-{uid}", "5"),
        ("credits", "balance", "--account", f"nope-{uid}"),
        ("credits", "price", "--account", uid, "--price", "0.001", "--currency", "USD"),
        ("credits", "auto-refill", "--account", uid, "--threshold", "5"),
        ("credits", "auto-refill", "--account", uid, "--threshold", "0", "--amount", "5"),
        ("credits", "auto-refill", "--account", uid, "--threshold", "5", "--amount", "5",
         "--gateway", "paypal"),
    ]:
        code, out, err = cli(*args)
        assert code == 1, args
        assert out == "" and "error:" in err and "Traceback" not in err, (args, err)
    with db.session() as s:
        assert ledger.balance_of(s, uid) == 0
        waiting = s.scalar(select(SmsWaiter).where(SmsWaiter.account_id == uid))
    assert waiting is None


# --- the wake fan-out (a stand-in client: which cases are signalled, and how) -------------


class FakeTemporal:
    """Records `credits_added` signals; some workflows are gone (NOT_FOUND) or failing."""

    def __init__(self, gone: set[str] = frozenset(), failing: set[str] = frozenset(),  # type: ignore[assignment]
                 listed: list[str] | None = None) -> None:
        self.gone, self.failing, self.listed = set(gone), set(failing), listed or []
        self.signals: list[str] = []
        self.in_flight = self.max_in_flight = 0

    def get_workflow_handle(self, workflow_id: str) -> Any:
        import asyncio

        from temporalio.service import RPCError, RPCStatusCode

        fake = self

        class Handle:
            async def signal(self, name: str, payload: Any) -> None:
                assert name == "credits_added"
                fake.in_flight += 1
                fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                await asyncio.sleep(0.01)
                fake.in_flight -= 1
                fake.signals.append(workflow_id)
                if workflow_id in fake.gone:
                    raise RPCError("workflow execution already completed",
                                   RPCStatusCode.NOT_FOUND, b"")
                if workflow_id in fake.failing:
                    raise RPCError("unavailable", RPCStatusCode.UNAVAILABLE, b"")

        return Handle()

    async def list_workflows(self, query: str, limit: int | None = None) -> Any:
        assert "SmsPaused = true" in query
        for wid in self.listed:
            yield type("Execution", (), {"id": wid})()


async def test_wake_signals_the_covered_prefix_and_skips_gone_cases(db: Database, uid: str):
    from dunning.credits import wake

    make_account(db, uid)
    for i in range(6):
        reserve(db, uid, 1, f"w{i}")
    top_up(db, uid, 3)
    fake = FakeTemporal(gone={"w1"})
    result = await wake.wake_paused(fake, db, uid, concurrency=2)  # type: ignore[arg-type]
    # w1 no longer runs: dropped from the queue, its credit goes to w3 in a second pass.
    assert sorted(fake.signals) == ["w0", "w1", "w2", "w3"]
    assert (result.woken, result.removed, result.waiting, result.still_waiting) == (3, 1, 6, 2)
    assert fake.max_in_flight <= 2
    # w0, w2, w3 are served: their credits are set aside (debited now), w4 and w5 still wait.
    assert [w for w, _ in queue(db, uid)] == ["w4", "w5"]
    assert (result.granted, result.balance_after) == (3, 0)
    with db.session() as s:
        assert ledger.granted_count(s, uid) == 3
        debits = s.execute(
            select(CreditEntry.workflow_id, func.sum(CreditEntry.amount))
            .where(CreditEntry.account_id == uid, CreditEntry.workflow_id.is_not(None))
            .group_by(CreditEntry.workflow_id)
        ).all()
    assert {w: int(n) for w, n in debits if n} == {"w0": -1, "w2": -1, "w3": -1}  # w1 refunded
    assert assert_ledger_exact(db, uid) == 0
    # Their sends use the grants: no second debit, and the balance does not move.
    for w in ("w3", "w0", "w2"):
        assert reserve(db, uid, 1, w).ok
    assert assert_ledger_exact(db, uid) == 0
    with db.session() as s:
        assert ledger.granted_count(s, uid) == 0
    assert not reserve(db, uid, 1, "w4").ok  # still nothing for those behind


async def test_wake_uses_visibility_only_for_what_the_queue_leaves(db: Database, uid: str):
    from dunning.credits import wake

    make_account(db, uid)
    reserve(db, uid, 2, "w0")
    top_up(db, uid, 3)  # w0 takes 2, 1 is left over
    fake = FakeTemporal(listed=["w0", "x1", "x2"])
    result = await wake.wake_paused(fake, db, uid)  # type: ignore[arg-type]
    assert fake.signals == ["w0", "x1"] and result.woken == 2


async def test_wake_reports_when_no_signal_gets_through(db: Database, uid: str):
    from dunning.credits import wake

    make_account(db, uid)
    reserve(db, uid, 1, "w0")
    top_up(db, uid, 1)
    with pytest.raises(RuntimeError, match="could not signal"):
        await wake.wake_paused(FakeTemporal(failing={"w0"}), db, uid)  # type: ignore[arg-type]
    # Served but not told: its credits stay set aside; its own re-check finds them, and the
    # next wake signals it again once the grant is stale.
    assert queue(db, uid) == []
    with db.session() as s:
        assert ledger.granted_count(s, uid) == 1
        assert ledger.stale_grants(s, uid, utcnow() + timedelta(minutes=2)) == ["w0"]
    assert reserve(db, uid, 1, "w0").ok
    assert assert_ledger_exact(db, uid) == 0


def test_grant_serves_first_come_and_stops_at_the_first_it_cannot_cover(db: Database, uid: str):
    make_account(db, uid)
    for wf, need in (("a", 2), ("b", 3), ("c", 1)):
        assert not reserve(db, uid, need, wf).ok
    top_up(db, uid, 4)
    with db.session() as s:
        g = ledger.grant(s, uid)
    # a (2) fits, b (3) does not: c (1) would, but the queue is strict, it waits behind b.
    assert (g.workflow_ids, g.credits, g.balance, g.still_waiting) == (["a"], 2, 2, 2)
    assert queue(db, uid) == [("b", 3), ("c", 1)]
    assert not reserve(db, uid, 1, "newcomer").ok  # the 2 left are owed to b first
    with db.session() as s:
        assert ledger.grant(s, uid).workflow_ids == []  # nothing more to serve
    assert assert_ledger_exact(db, uid) == 2


def test_a_grant_the_case_does_not_use_goes_back(db: Database, uid: str):
    make_account(db, uid)
    for wf in ("ended", "skipped", "repriced"):
        assert not reserve(db, uid, 2, wf).ok
    top_up(db, uid, 6)
    with db.session() as s:
        assert ledger.grant(s, uid).credits == 6
    with db.session() as s:  # the case ended; another's step was skipped
        ledger.leave_queue(s, uid, "ended", "case recovered")
        ledger.leave_queue(s, uid, "skipped", "the number opted out (STOP)")
    assert assert_ledger_exact(db, uid) == 4
    # The text now costs 3 (template changed): the grant of 2 goes back, 3 are taken instead.
    assert reserve(db, uid, 3, "repriced").ok
    assert assert_ledger_exact(db, uid) == 3
    with db.session() as s:
        notes = list(s.scalars(select(CreditEntry.note).where(
            CreditEntry.account_id == uid, CreditEntry.kind == "refund")))
        assert ledger.granted_count(s, uid) == ledger.waiting_count(s, uid) == 0
    assert sorted(n or "" for n in notes) == [
        "grant returned: case recovered",
        "grant returned: the number opted out (STOP)",
        "grant returned: the text now costs a different amount",
    ]


def test_grants_racing_sends_and_top_ups_never_debit_a_text_twice(db: Database, uid: str):
    """Wakes (grants), top-ups and the cases' own sends at once: every case pays for its text
    exactly once, whoever served it, and the ledger replays to the balance."""
    make_account(db, uid)
    cases = [f"r{i}" for i in range(24)]
    for wf in cases:
        assert not reserve(db, uid, 1, wf).ok

    done: set[str] = set()  # each case belongs to one thread: one send at a time per case

    def act(i: int) -> Any:
        if i % 4 == 0:
            top_up(db, uid, 3)
            with db.session() as s:
                return ledger.grant(s, uid)
        mine = cases[(i - 1 - i // 4)::12]
        for wf in mine:
            if wf not in done and reserve(db, uid, 1, wf).ok:
                done.add(wf)
        return None

    for _ in range(3):
        run_threads(16, act)
    with db.session() as s:
        paid = s.execute(
            select(CreditEntry.workflow_id, func.sum(CreditEntry.amount))
            .where(CreditEntry.account_id == uid, CreditEntry.workflow_id.is_not(None))
            .group_by(CreditEntry.workflow_id)
        ).all()
        granted = ledger.granted_count(s, uid)
    assert all(int(n) in (0, -1) for _, n in paid)
    served = sum(1 for _, n in paid if int(n) == -1)
    assert served == min(len(cases), 3 * 4 * 3)  # 36 credits added, 24 cases: all served
    assert granted == served - len(done)  # served by a wake, send not made yet
    assert assert_ledger_exact(db, uid) == 36 - served
