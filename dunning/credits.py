"""The credit ledger: every change to a balance is one conditional UPDATE plus one ledger row,
in the same transaction. The balance can never go below zero (the UPDATE's WHERE clause, and a
CHECK constraint behind it), and it always equals the sum of the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from dunning.db.models import Account, CreditEntry, SmsWaiter, utcnow
from dunning.domain import InputError


@dataclass
class Reservation:
    ok: bool
    balance: int


def balance_of(session: Session, account_id: str) -> int:
    value = session.scalar(select(Account.credit_balance).where(Account.id == account_id))
    if value is None:
        raise InputError("account", f"unknown account {account_id!r}")
    return int(value)


def _apply(
    session: Session,
    account_id: str,
    amount: int,
    kind: str,
    *,
    workflow_id: str | None = None,
    step: int | None = None,
    message_id: int | None = None,
    note: str | None = None,
) -> int | None:
    """Add `amount` (negative for debits) unless that takes the balance below zero.

    Returns the new balance, or None when the debit does not fit. One statement decides, so
    concurrent writers on SQLite or PostgreSQL can never overdraw.
    """
    stmt = (
        update(Account)
        .where(Account.id == account_id)
        .values(credit_balance=Account.credit_balance + amount, updated_at=utcnow())
        .returning(Account.credit_balance)
    )
    if amount < 0:
        stmt = stmt.where(Account.credit_balance >= -amount)
    new_balance = session.execute(stmt).scalar_one_or_none()
    if new_balance is None:
        return None
    session.add(
        CreditEntry(
            account_id=account_id,
            kind=kind,
            amount=amount,
            balance_after=int(new_balance),
            workflow_id=workflow_id,
            step=step,
            message_id=message_id,
            note=note,
        )
    )
    return int(new_balance)


def top_up(session: Session, account_id: str, amount: int, *, kind: str = "topup",
           note: str | None = None) -> int:
    if amount <= 0:
        raise InputError("amount", "must be a positive whole number of credits")
    new_balance = _apply(session, account_id, amount, kind, note=note)
    if new_balance is None:
        raise InputError("account", f"unknown account {account_id!r}")
    return new_balance


def reserve(
    session: Session,
    account_id: str,
    amount: int,
    *,
    workflow_id: str,
    step: int,
    message_id: int | None = None,
) -> Reservation:
    if amount <= 0:
        return Reservation(True, balance_of(session, account_id))
    new_balance = _apply(
        session, account_id, -amount, "sms_debit", workflow_id=workflow_id, step=step,
        message_id=message_id,
    )
    if new_balance is None:
        return Reservation(False, balance_of(session, account_id))
    return Reservation(True, new_balance)


def refund(
    session: Session,
    account_id: str,
    amount: int,
    *,
    workflow_id: str | None,
    step: int | None,
    message_id: int | None,
    note: str,
) -> int:
    new_balance = _apply(
        session, account_id, amount, "refund", workflow_id=workflow_id, step=step,
        message_id=message_id, note=note,
    )
    assert new_balance is not None
    return new_balance


def ledger_sum(session: Session, account_id: str) -> int:
    return int(
        session.scalar(
            select(func.coalesce(func.sum(CreditEntry.amount), 0)).where(
                CreditEntry.account_id == account_id
            )
        )
        or 0
    )


# --- waiters: cases whose SMS lane is paused for credits -----------------------------------


def add_waiter(session: Session, account_id: str, workflow_id: str, credits_needed: int) -> None:
    exists = session.get(SmsWaiter, (account_id, workflow_id))
    if exists is None:
        session.add(
            SmsWaiter(account_id=account_id, workflow_id=workflow_id,
                      credits_needed=credits_needed, since=utcnow())
        )
    else:
        exists.credits_needed = credits_needed


def remove_waiter(session: Session, account_id: str, workflow_id: str) -> None:
    session.execute(
        delete(SmsWaiter).where(
            SmsWaiter.account_id == account_id, SmsWaiter.workflow_id == workflow_id
        )
    )


def waiters(session: Session, account_id: str) -> list[tuple[str, int, datetime]]:
    rows = session.execute(
        select(SmsWaiter.workflow_id, SmsWaiter.credits_needed, SmsWaiter.since)
        .where(SmsWaiter.account_id == account_id)
        .order_by(SmsWaiter.since, SmsWaiter.workflow_id)
    ).all()
    return [(r[0], int(r[1]), r[2]) for r in rows]
