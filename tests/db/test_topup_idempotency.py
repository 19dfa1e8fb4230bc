"""Idempotent top-ups on SQLite and PostgreSQL: a key credits once per account, also when two
top-ups with the same key race, and `dunning credits topup --idempotency-key` says so."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select, update

from dunning.accounts.accounts import AccountOptions, create_account
from dunning.credits import ledger
from dunning.domain.contract import InputError
from dunning.platform.db import Database
from dunning.platform.db.models import CreditEntry

Run = Callable[..., tuple[int, str, str]]


def _account(db: Database, account_id: str) -> None:
    with db.session() as s:
        create_account(s, account_id, AccountOptions(company_name=f"Co {account_id}"))


def _entries(db: Database, account_id: str) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(CreditEntry)
                            .where(CreditEntry.account_id == account_id)) or 0)


def test_a_repeated_key_credits_once(db: Database, uid: str) -> None:
    _account(db, uid)
    _account(db, f"{uid}-b")
    first = ledger.top_up_idempotent(db, uid, 1000, "retry-1")
    again = ledger.top_up_idempotent(db, uid, 1000, "retry-1")
    assert (first.balance, first.duplicate) == (1000, False)
    assert (again.balance, again.amount, again.duplicate) == (1000, 1000, True)
    # Another key, and the same key on another account, are other top-ups.
    assert ledger.top_up_idempotent(db, uid, 5, "retry-2").balance == 1005
    assert ledger.top_up_idempotent(db, f"{uid}-b", 7, "retry-1").balance == 7
    # A repeat after other changes still answers with the first result.
    assert ledger.top_up_idempotent(db, uid, 1000, "retry-1").balance == 1000
    with db.session() as s:
        assert ledger.balance_of(s, uid) == 1005 == ledger.ledger_sum(s, uid)
    assert _entries(db, uid) == 2
    with pytest.raises(InputError, match="idempotency-key"):
        ledger.top_up_idempotent(db, uid, 5, "")
    with pytest.raises(InputError, match="idempotency-key"):
        ledger.top_up_idempotent(db, uid, 5, "x" * 201)


def test_racing_top_ups_with_one_key_credit_once(db: Database, uid: str) -> None:
    _account(db, uid)
    start = threading.Barrier(8)

    def one(_: int) -> ledger.KeyedTopUp:
        start.wait()
        return ledger.top_up_idempotent(db, uid, 250, "same-key")

    with ThreadPoolExecutor(max_workers=8) as ex:
        results = list(ex.map(one, range(8)))
    assert sum(not r.duplicate for r in results) == 1
    assert {r.balance for r in results} == {250}
    with db.session() as s:
        assert ledger.balance_of(s, uid) == 250 == ledger.ledger_sum(s, uid)
    assert _entries(db, uid) == 1


def test_the_unique_index_refuses_a_second_entry_with_the_key(db: Database, uid: str) -> None:
    """The database's own guard: even a writer that skips the check cannot store the key
    twice."""
    from sqlalchemy.exc import IntegrityError

    _account(db, uid)
    ledger.top_up_idempotent(db, uid, 3, "k1")
    with pytest.raises(IntegrityError), db.session() as s:
        entry = ledger.top_up(s, uid, 3)
        assert entry == 6
        s.execute(update(CreditEntry)
                  .where(CreditEntry.account_id == uid, CreditEntry.idempotency_key.is_(None))
                  .values(idempotency_key="k1"))
    with db.session() as s:
        assert ledger.balance_of(s, uid) == 3


def test_cli_topup_with_an_idempotency_key(cli: Run, db: Database, uid: str) -> None:
    _account(db, uid)
    args = ("credits", "topup", "--account", uid, "120", "--idempotency-key", "inv-77", "--json")
    code, out, err = cli(*args)
    assert code == 0, err
    first = json.loads(out)
    assert first["balance"] == 120 and first["duplicate"] is False
    code, out, err = cli(*args)
    assert code == 0, err
    again = json.loads(out)
    assert again["balance"] == 120 and again["duplicate"] is True and again["amount"] == 120
    code, out, _ = cli("credits", "balance", "--account", uid, "--json")
    assert json.loads(out)["balance"] == 120
    code, _, err = cli("credits", "topup", "--account", uid, "5", "--idempotency-key", " ")
    assert code == 1 and "idempotency-key" in err and "Traceback" not in err
    assert _entries(db, uid) == 1
