"""The customer a case names is recorded through `customers.record_case_customer` (the one
customer upsert module), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dunning.customers.customers import record_case_customer
from dunning.platform.db import Database
from dunning.platform.db.models import Customer
from tests.helpers import make_account

T0 = datetime(2026, 1, 31, 9, tzinfo=UTC)


def row(db: Database, account: str, customer: str) -> tuple[object, ...]:
    with db.session() as s:
        c = s.get(Customer, (account, customer))
        assert c is not None
        return (c.email, c.name, c.plan, c.source, c.updated_at.replace(tzinfo=UTC))


def test_a_case_creates_then_updates_only_what_it_gives(db: Database, uid: str) -> None:
    account = f"cc-{uid}"
    make_account(db, account)
    with db.session() as s:
        record_case_customer(s, account, "c1", email="ada@example.com", name="Ada", plan=None,
                             now=T0)
    assert row(db, account, "c1") == ("ada@example.com", "Ada", None, "case", T0)
    # The same values again: nothing is written (not even updated_at).
    with db.session() as s:
        record_case_customer(s, account, "c1", email="ada@example.com", name=None, plan="",
                             now=T0 + timedelta(hours=1))
    assert row(db, account, "c1") == ("ada@example.com", "Ada", None, "case", T0)
    # A new plan is applied; what the case leaves out is kept.
    later = T0 + timedelta(hours=2)
    with db.session() as s:
        record_case_customer(s, account, "c1", email=None, name=None, plan="pro", now=later)
    assert row(db, account, "c1") == ("ada@example.com", "Ada", "pro", "case", later)
