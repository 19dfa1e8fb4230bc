"""The credit ledger: every change to a balance is one conditional UPDATE plus one ledger row,
in the same transaction. The balance can never go below zero (the UPDATE's WHERE clause, and a
CHECK constraint behind it), and it always equals the sum of the ledger.

On PostgreSQL the UPDATE, the ledger INSERT (and, for a reservation, leaving the waiters' queue)
travel as ONE statement (data-modifying CTEs), compiled once and run on the driver's cursor, so
the account row stays locked for as short a time as possible; on SQLite (where BEGIN IMMEDIATE
serialises writers anyway) they are separate statements in the same transaction.

A send's debit on PostgreSQL usually goes further (`debit_and_commit`): the claimed message
row joins the same statement, which is sent with the COMMIT in one round trip, so the row lock
is never held across a round trip to the worker. It takes only debits that leave no follow-up
(a notice level or the refill threshold crossed needs the lock held while it is recorded).

Reservations (SMS debits) are fair, first come first served, with the waiters table as the
queue: a case whose text the balance cannot pay is added to `sms_waiters` (keeping the time it
first began waiting). A reservation succeeds only if the balance covers its own cost PLUS the
credits needed by every waiter ahead of it (all waiters, for a case that is not waiting). So a
newcomer never takes credits that older waiters are owed, and a waiter woken because the balance
covers it and everyone ahead of it (see `dunning.credits.wake`) can always reserve. The queue is
strict:
a waiter needing more than the balance holds back those behind it until a top-up covers it.

No lost wake-up (PostgreSQL, READ COMMITTED): a reservation whose conditional UPDATE matched
nothing holds no lock. Before it inserts its waiter row it locks the account row
(SELECT ... FOR UPDATE) and tries once more. A top-up that committed in between is seen by the
retry; a top-up arriving later waits for our commit, so its subsequent read of the waiters sees
us. On SQLite, BEGIN IMMEDIATE already serialises the whole transaction.

Grants: a wake after a top-up serves the queue itself (`grant`): under the account row's lock it
debits, in first-come order, the credits of every waiter the balance covers (one ledger entry
each, naming the case and step) and marks them granted. So 10,000 paused cases are served in
one transaction, and their sends, which come later at the provider's pace, find their credits
set aside (`reserve` consumes the grant under the same lock) instead of each re-checking the
whole queue. A granted waiter that will not send (the case ended, the step was skipped, quiet
hours) gets its credits back as a `refund` when it leaves the queue (`leave_queue`). The fast
path of `reserve` is for cases that are not waiting (one index probe says so); a waiter always
takes the locked path, so a wake and the case's own send never both debit for one text.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    Integer,
    String,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from dunning.accounts.accounts import unknown_account
from dunning.domain.contract import InputError
from dunning.platform.db import Database, commits_in_one_trip, execute_on_driver
from dunning.platform.db.models import Account, CreditEntry, SmsWaiter, utcnow

NOTICE_LOW = "low"
NOTICE_ZERO = "zero"


@dataclass
class Reservation:
    """The outcome of a debit attempt, with what the follow-ups (notices, auto-refill) need."""

    ok: bool
    balance: int
    account_id: str = ""
    amount: int = 0
    entry_id: int | None = None  # the ledger row of the debit
    waiting: bool = False  # a failed reservation that queued the case as a waiter
    notice: str | None = None  # accounts.balance_notice as the debit left it
    threshold: int | None = None  # auto-refill threshold (None: auto-refill off)
    refill_amount: int | None = None

    @property
    def before(self) -> int:
        """The balance before this debit."""
        return self.balance + (self.amount if self.ok else 0)


@dataclass
class _Change:
    balance: int
    notice: str | None
    threshold: int | None
    refill_amount: int | None
    entry_id: int | None


def balance_of(session: Session, account_id: str) -> int:
    value = session.scalar(select(Account.credit_balance).where(Account.id == account_id))
    if value is None:
        raise unknown_account(account_id)
    return int(value)


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def credits_ahead(account_id: Any, workflow_id: Any, *, queued: bool = True
                  ) -> ColumnElement[Any]:
    """Credits owed to the waiters ahead of `workflow_id` in the account's queue: all waiters
    when it is not waiting itself, else those that began waiting before it (ties by id).
    Takes values or bind parameters. `queued=False`: for a statement that already requires
    the case not to be waiting, the short form (every waiter is ahead of it)."""
    w = aliased(SmsWaiter, name="w_ahead")
    if not queued:
        return (
            select(func.coalesce(func.sum(w.credits_needed), 0))
            .where(w.account_id == account_id, w.credits_granted == 0)
            .scalar_subquery()
        )
    me = aliased(SmsWaiter, name="w_me")
    my_since = (
        select(me.since)
        .where(me.account_id == account_id, me.workflow_id == workflow_id)
        .scalar_subquery()
    )
    return (
        select(func.coalesce(func.sum(w.credits_needed), 0))
        .where(
            w.account_id == account_id,
            w.workflow_id != workflow_id,
            w.credits_granted == 0,  # granted waiters already hold their credits
            or_(
                my_since.is_(None),
                w.since < my_since,
                and_(w.since == my_since, w.workflow_id < workflow_id),
            ),
        )
        .scalar_subquery()
    )


_P = {
    "acct": bindparam("p_acct", type_=String),
    "amount": bindparam("p_amount", type_=BigInteger),
    "need": bindparam("p_need", type_=BigInteger),
    "now": bindparam("p_now", type_=DateTime(timezone=True)),
    "kind": bindparam("p_kind", type_=String),
    "wf": bindparam("p_wf", type_=String),
    "step": bindparam("p_step", type_=Integer),
    "msg": bindparam("p_msg", type_=Integer),
    "note": bindparam("p_note", type_=String),
}
_RETURNING = (
    Account.credit_balance, Account.balance_notice, Account.auto_refill_threshold,
    Account.auto_refill_amount,
)


def _leaves_nothing_due() -> ColumnElement[bool]:
    """In a debit's WHERE clause (the row before the debit of `p_need`): the debit crosses
    no notice level and not the auto-refill threshold, so it leaves no follow-up. The SQL
    twin of `dunning.credits.followups._decide` for a debit that fits (tested against it)."""
    after = Account.credit_balance - _P["need"]
    threshold = Account.auto_refill_threshold
    level = case((after <= 0, 2), (and_(threshold.is_not(None), after < threshold), 1), else_=0)
    noticed = case((Account.balance_notice == NOTICE_ZERO, 2),
                   (Account.balance_notice == NOTICE_LOW, 1), else_=0)
    crossed = and_(
        threshold.is_not(None), Account.auto_refill_amount.is_not(None),
        Account.auto_refill_amount != 0, Account.credit_balance >= threshold, threshold > after,
    )
    return and_(level <= noticed, ~crossed)


@functools.cache
def _statements(
    debit: bool, fair: bool, dequeue: bool, postgres: bool, newcomer: bool = False,
    then: Callable[[Any], Any] | None = None,
) -> tuple[Any, ...]:
    """The statements of one kind of balance change, built once with bind parameters (so
    SQLAlchemy's compiled cache is hit without rebuilding and re-keying them every time).

    PostgreSQL: (one statement,): UPDATE ... RETURNING feeding the ledger INSERT (and the
    waiter DELETE) as data-modifying CTEs. Others: (update, ledger insert, waiter delete).

    `then` (PostgreSQL, a debit): `then(changed)` is one more INSERT ... SELECT ... FROM
    changed RETURNING <its id>, run in the same statement; its id ends the row. Such a debit
    also matches only when it leaves no follow-up due (see `debit_and_commit`)."""
    new_balance = Account.credit_balance + _P["amount"]
    values: dict[str, Any] = {"credit_balance": new_balance, "updated_at": _P["now"]}
    if not debit:
        # Credits re-arm the balance notices: back at/above the threshold (or above zero
        # without one) clears them; above zero but still low turns `zero` back into `low`.
        values["balance_notice"] = case(
            (new_balance >= func.coalesce(Account.auto_refill_threshold, 1), null()),
            (and_(new_balance > 0, Account.balance_notice == NOTICE_ZERO), literal(NOTICE_LOW)),
            else_=Account.balance_notice,
        )
    upd = update(Account).where(Account.id == _P["acct"]).values(**values)
    if debit:
        upd = upd.where(Account.credit_balance >= _P["need"])  # cheap test first
        if fair:
            # An empty queue (the usual case) costs one index probe. With `newcomer`, a case
            # that is itself queued (granted or not) never takes this path: it takes the
            # locked one, where a grant is used rather than a second debit.
            anyone = aliased(SmsWaiter, name="w_any")
            me = aliased(SmsWaiter, name="w_self")
            waiting: ColumnElement[bool] = anyone.credits_granted == 0
            behind: ColumnElement[bool] = (
                Account.credit_balance
                >= _P["need"] + credits_ahead(_P["acct"], _P["wf"], queued=not newcomer)
            )
            if newcomer:
                waiting = or_(waiting, anyone.workflow_id == _P["wf"])
                behind = and_(behind, ~select(me.workflow_id).where(
                    me.account_id == _P["acct"], me.workflow_id == _P["wf"]
                ).exists())
            upd = upd.where(or_(
                ~select(anyone.workflow_id).where(anyone.account_id == _P["acct"], waiting)
                .exists(),
                behind,
            ))
        if then is not None:
            upd = upd.where(_leaves_nothing_due())
    upd = upd.returning(*_RETURNING)
    entry_cols = ["account_id", "kind", "amount", "workflow_id", "step", "message_id", "note",
                  "created_at"]
    entry_vals: list[Any] = [_P["acct"], _P["kind"], _P["amount"], _P["wf"], _P["step"], _P["msg"],
                  _P["note"], _P["now"]]
    dequeue_stmt = delete(SmsWaiter).where(
        SmsWaiter.account_id == _P["acct"], SmsWaiter.workflow_id == _P["wf"]
    )
    if not postgres:
        ledger_stmt = (
            insert(CreditEntry)
            .values({**dict(zip(entry_cols, entry_vals, strict=True)),
                     "balance_after": bindparam("p_after", type_=BigInteger)})
            .returning(CreditEntry.id)
        )
        return upd, ledger_stmt, dequeue_stmt
    changed = upd.cte("changed")
    ledger = (
        insert(CreditEntry)
        .from_select([*entry_cols, "balance_after"],
                     select(*entry_vals, changed.c.credit_balance))
        .returning(CreditEntry.id)
        .cte("ledger")
    )
    columns: list[Any] = [changed.c[c.key] for c in _RETURNING]
    query = select(*columns, ledger.c.id).select_from(changed.join(ledger, true()))
    if then is not None:
        also = then(changed).cte("also")
        query = query.add_columns(*also.c).join_from(changed, also, true())
    if dequeue:  # a data-modifying CTE runs even though nothing selects from it
        query = query.add_cte(
            dequeue_stmt.where(select(changed.c.credit_balance).exists()).cte("dequeued")
        )
    return (query,)


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
    fair: bool = False,
    dequeue: bool = False,
    newcomer: bool = False,
) -> _Change | None:
    """Add `amount` (negative for debits) unless that takes the balance below zero (or, with
    `fair`, below what the waiters ahead of `workflow_id` are owed). With `dequeue`, a debit
    that fits also takes `workflow_id` out of the waiters' queue.

    Returns the new state, or None when the debit does not fit. One statement decides, so
    concurrent writers on SQLite or PostgreSQL can never overdraw.
    """
    debit = amount < 0
    fair = fair and debit and workflow_id is not None
    dequeue = dequeue and debit and workflow_id is not None
    newcomer = newcomer and debit and workflow_id is not None
    if newcomer and fair:
        dequeue = False  # it matches only a case that is not queued: nothing to take out
    postgres = _is_postgres(session)
    stmts = _statements(debit, fair, dequeue, postgres, newcomer)
    params = _params(account_id, amount, kind, workflow_id, step, message_id, note)
    # Core execution on the session's connection (same transaction, none of the ORM's
    # per-statement work): flush pending ORM changes first, as the ORM would.
    if session.new or session.dirty or session.deleted:
        session.flush()
    conn = session.connection()
    if postgres:
        row: Any
        if commits_in_one_trip(session):  # the hot path: compiled once, on the driver's cursor
            row = execute_on_driver(session, stmts[0], params)
        else:
            row = conn.execute(stmts[0], params).one_or_none()
        if row is None:
            return None
        change = _change(row)
    else:
        upd, ledger_stmt, dequeue_stmt = stmts
        updated = conn.execute(upd, params).one_or_none()
        if updated is None:
            return None
        entry_id = conn.execute(ledger_stmt, {**params, "p_after": int(updated[0])}).scalar_one()
        if dequeue:
            conn.execute(dequeue_stmt, params)
        change = _Change(int(updated[0]), updated[1], _opt_int(updated[2]),
                         _opt_int(updated[3]), int(entry_id))
    loaded = session.identity_map.get(session.identity_key(Account, account_id))
    if loaded is not None:  # an Account the session holds must not show the old balance
        session.expire(loaded, ["credit_balance", "balance_notice", "updated_at"])
    return change


def _params(account_id: str, amount: int, kind: str, workflow_id: str | None,
            step: int | None, message_id: int | None, note: str | None) -> dict[str, Any]:
    """The bind parameters of a balance change (`_statements`)."""
    return {
        "p_acct": account_id, "p_amount": amount, "p_need": -amount, "p_now": utcnow(),
        "p_kind": kind, "p_wf": workflow_id, "p_step": step, "p_msg": message_id,
        "p_note": note,
    }


def _change(row: Any) -> _Change:
    """A balance change as its PostgreSQL statement returns it (`_RETURNING`, ledger id)."""
    return _Change(int(row[0]), row[1], _opt_int(row[2]), _opt_int(row[3]), int(row[4]))


def _debited(account_id: str, amount: int, change: _Change) -> Reservation:
    return Reservation(
        True, change.balance, account_id, amount, entry_id=change.entry_id,
        notice=change.notice, threshold=change.threshold, refill_amount=change.refill_amount,
    )


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def check_credit_amount(field_name: str, value: object) -> int:
    """A number of credits to add: a whole number, at least 1 (the one rule for top-ups)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(field_name, "must be a positive whole number of credits")
    return value


def top_up(session: Session, account_id: str, amount: int, *, kind: str = "topup",
           note: str | None = None) -> int:
    check_credit_amount("amount", amount)
    change = _apply(session, account_id, amount, kind, note=note)
    if change is None:
        raise unknown_account(account_id)
    return change.balance


MAX_IDEMPOTENCY_KEY = 200


@dataclass
class KeyedTopUp:
    """A top-up made once per (account, idempotency key): the first one's result."""

    account_id: str
    balance: int  # the balance right after the first top-up with this key
    amount: int  # what the first top-up with this key added
    duplicate: bool  # True: the key was used before; nothing changed now


def check_idempotency_key(key: object) -> str:
    if (not isinstance(key, str) or not key.strip() or len(key) > MAX_IDEMPOTENCY_KEY
            or not key.isprintable()):
        raise InputError("idempotency-key",
                         f"must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters")
    return key


def keyed_top_up(session: Session, account_id: str, key: str) -> KeyedTopUp | None:
    """The top-up made earlier with this key, if any."""
    row = session.execute(
        select(CreditEntry.amount, CreditEntry.balance_after).where(
            CreditEntry.account_id == account_id, CreditEntry.idempotency_key == key
        )
    ).one_or_none()
    if row is None:
        return None
    return KeyedTopUp(account_id, int(row.balance_after), int(row.amount), True)


def top_up_once(session: Session, account_id: str, amount: int, key: str, *,
                kind: str = "topup", note: str | None = None) -> KeyedTopUp:
    """Add credits at most once per (account, key): a repeat (a billing system retrying after a
    timeout) returns the first result and changes nothing.

    The account row is locked first, so two top-ups racing with one key run one after the
    other and the second sees the first's entry (PostgreSQL READ COMMITTED reads what committed
    while it waited; SQLite's BEGIN IMMEDIATE serialises anyway). The unique (account, key)
    index of the ledger is the last word: a violation (IntegrityError) means another top-up
    with the key committed; `top_up_idempotent` then answers with it."""
    check_idempotency_key(key)
    if amount <= 0:
        raise InputError("amount", "must be a positive whole number of credits")
    _lock_account(session, account_id)
    first = keyed_top_up(session, account_id, key)
    if first is not None:
        return first
    change = _apply(session, account_id, amount, kind, note=note)
    if change is None:
        raise InputError("account", f"unknown account {account_id!r}")
    session.execute(
        update(CreditEntry).where(CreditEntry.id == change.entry_id)
        .values(idempotency_key=key)
    )
    return KeyedTopUp(account_id, change.balance, amount, False)


def top_up_idempotent(db: Database, account_id: str, amount: int, key: str, *,
                      note: str | None = None) -> KeyedTopUp:
    """`top_up_once` in a transaction of its own; a lost race on the unique key reads the
    winner's entry instead."""
    try:
        with db.session() as s:
            return top_up_once(s, account_id, amount, key, note=note)
    except IntegrityError:
        with db.session() as s:
            first = keyed_top_up(s, account_id, key)
        if first is None:
            raise
        return first


def _lock_account(session: Session, account_id: str) -> Any:
    """SELECT ... FOR UPDATE of the account row: (balance, notice, refill threshold, refill
    amount), held until the caller's commit. An unknown account is an InputError."""
    locked = session.execute(
        select(
            Account.credit_balance, Account.balance_notice, Account.auto_refill_threshold,
            Account.auto_refill_amount,
        )
        .where(Account.id == account_id)
        .with_for_update()
    ).one_or_none()
    if locked is None:
        raise unknown_account(account_id)
    return locked


def reserve(
    session: Session,
    account_id: str,
    amount: int,
    *,
    workflow_id: str,
    step: int,
    message_id: int | None = None,
    enqueue: bool = False,
    fair: bool = True,
) -> Reservation:
    """Debit `amount` credits for a case's SMS, first come first served.

    Success is one statement (plus the ledger row). On failure, or when the case is in the
    waiters' queue, the account row is locked: a waiter holding a grant for this step uses it
    (the debit was made by the wake), otherwise the debit is tried once more (a top-up may have
    landed). With `enqueue`, a case that still cannot be served is then queued as a waiter
    (keeping its place if it was already waiting), and a case that is served leaves the queue.
    The lock is held until the caller's commit.
    """
    if amount <= 0:
        if enqueue:
            leave_queue(session, account_id, workflow_id, "the text costs no credits")
        return Reservation(True, balance_of(session, account_id), account_id, 0)
    kwargs: dict[str, Any] = {
        "workflow_id": workflow_id, "step": step, "message_id": message_id, "fair": fair,
        "dequeue": enqueue,
    }
    change = _apply(session, account_id, -amount, "sms_debit", newcomer=enqueue, **kwargs)
    if change is None:
        locked = _lock_account(session, account_id)
        if enqueue and _use_grant(session, account_id, workflow_id, step, amount):
            # Debited by the wake that granted it: nothing to take now (amount 0, so the
            # follow-ups see no new crossing).
            return Reservation(
                True, int(locked[0]), account_id, 0, notice=locked[1],
                threshold=_opt_int(locked[2]), refill_amount=_opt_int(locked[3]),
            )
        change = _apply(session, account_id, -amount, "sms_debit", **kwargs)
        if change is None:
            balance = balance_of(session, account_id)  # a returned grant may have added some
            if enqueue:
                add_waiter(session, account_id, workflow_id, amount, step=step)
            return Reservation(
                False, balance, account_id, amount, waiting=enqueue, notice=locked[1],
                threshold=_opt_int(locked[2]), refill_amount=_opt_int(locked[3]),
            )
    return _debited(account_id, amount, change)


def debit_and_commit(
    session: Session,
    account_id: str,
    amount: int,
    *,
    workflow_id: str,
    step: int,
    then: Callable[[Any], Any],
    then_params: dict[str, Any],
) -> tuple[Reservation, int] | None:
    """A case's SMS debit in ONE round trip, as the last statement of the session's
    transaction and sent with its COMMIT (`execute_on_driver(commit=True)`): the balance
    UPDATE, the ledger row and `then(changed)` (the caller's INSERT, e.g. the claimed message
    row, whose id is returned with the reservation). PostgreSQL through psycopg only
    (`dunning.platform.db.commits_in_one_trip`).

    It matches only a debit `reserve` would make on its fast path (the balance covers the text
    and every waiter ahead; the case is not queued) that also leaves no follow-up due (no
    notice level, no auto-refill threshold crossed; those need the account row's lock held
    while they are recorded). None otherwise: nothing of this statement happened, the
    transaction's earlier work has committed, and the caller goes on through `reserve` in a
    new transaction (the session's next statement begins it)."""
    if amount <= 0:
        raise ValueError("a one-trip debit takes a positive amount")
    (stmt,) = _statements(True, True, False, True, True, then)  # not queued: no dequeue
    params = {**_params(account_id, -amount, "sms_debit", workflow_id, step, None, None),
              **then_params}
    if session.new or session.dirty or session.deleted:
        session.flush()
    row = execute_on_driver(session, stmt, params, commit=True)
    if row is None:
        return None
    return _debited(account_id, amount, _change(row)), int(row[5])


def _use_grant(session: Session, account_id: str, workflow_id: str, step: int,
               amount: int) -> bool:
    """Under the account lock: consume this case's grant if it pays for exactly this text
    (True). A grant for another step or price goes back (refund) and the case keeps its place
    in the queue, waiting as before (False)."""
    mine = session.execute(
        select(SmsWaiter.credits_granted, SmsWaiter.step).where(
            SmsWaiter.account_id == account_id, SmsWaiter.workflow_id == workflow_id
        )
    ).first()
    if mine is None or not mine[0]:
        return False
    if int(mine[0]) == amount and mine[1] == step:
        remove_waiter(session, account_id, workflow_id)
        return True
    _return_grants(session, account_id, [(workflow_id, int(mine[0]), mine[1])],
                   "grant returned: the text now costs a different amount")
    session.execute(
        update(SmsWaiter)
        .where(SmsWaiter.account_id == account_id, SmsWaiter.workflow_id == workflow_id)
        .values(credits_granted=0, granted_at=None)
    )
    return False


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
    change = _apply(
        session, account_id, amount, "refund", workflow_id=workflow_id, step=step,
        message_id=message_id, note=note,
    )
    assert change is not None
    return change.balance


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


def add_waiter(session: Session, account_id: str, workflow_id: str, credits_needed: int,
               *, step: int | None = None) -> None:
    """Queue a case (or update what it needs, keeping its place). `since` comes from the
    database's clock on PostgreSQL, so workers on several hosts agree on the order."""
    exists = session.get(SmsWaiter, (account_id, workflow_id))
    if exists is None:
        since: Any = func.clock_timestamp() if _is_postgres(session) else utcnow()
        session.execute(
            insert(SmsWaiter).values(
                account_id=account_id, workflow_id=workflow_id, credits_needed=credits_needed,
                since=since, step=step, credits_granted=0,
            )
        )
    elif exists.credits_needed != credits_needed or exists.step != step:
        exists.credits_needed = credits_needed
        exists.step = step


def remove_waiter(session: Session, account_id: str, workflow_id: str) -> None:
    """Drop a waiter row as it is (its grant, if any, was used): see `leave_queue`."""
    session.execute(
        delete(SmsWaiter).where(
            SmsWaiter.account_id == account_id, SmsWaiter.workflow_id == workflow_id
        )
    )


def leave_queue(session: Session, account_id: str, workflow_id: str, reason: str) -> None:
    """The case no longer waits for credits (it ended, or its text will not be sent now):
    out of the queue, and a grant it held goes back to the balance as a refund."""
    release_waiters(session, account_id, [workflow_id], reason)


def release_waiters(session: Session, account_id: str, workflow_ids: list[str],
                    reason: str) -> int:
    """`leave_queue` for many cases; returns how many were in the queue."""
    removed = 0
    for start in range(0, len(workflow_ids), 500):
        chunk = workflow_ids[start:start + 500]
        rows = session.execute(
            delete(SmsWaiter)
            .where(SmsWaiter.account_id == account_id, SmsWaiter.workflow_id.in_(chunk))
            .returning(SmsWaiter.workflow_id, SmsWaiter.credits_granted, SmsWaiter.step)
        ).all()
        removed += len(rows)
        held = [(r[0], int(r[1]), r[2]) for r in rows if r[1]]
        _return_grants(session, account_id, held, f"grant returned: {reason}")
    return removed


def _return_grants(session: Session, account_id: str,
                   held: list[tuple[str, int, int | None]], note: str) -> int:
    total = 0
    for workflow_id, amount, step in held:
        refund(session, account_id, amount, workflow_id=workflow_id, step=step,
               message_id=None, note=note[:400])
        total += amount
    return total


def remove_waiters(session: Session, account_id: str, workflow_ids: list[str]) -> int:
    """Queue entries of cases that no longer run: dropped, their grants refunded."""
    return release_waiters(session, account_id, workflow_ids, "the case no longer runs")


@dataclass
class Grant:
    """What one wake set aside: the cases served (first come first served) and the balance
    after, with what the balance follow-ups (notices, auto-refill) need."""

    account_id: str
    workflow_ids: list[str]
    credits: int
    balance_before: int
    balance: int
    still_waiting: int
    notice: str | None = None
    threshold: int | None = None
    refill_amount: int | None = None

    def as_reservation(self) -> Reservation:
        """The grant as one debit, for `BalanceFollowups.after_reserve` (threshold crossings,
        notices)."""
        return Reservation(
            True, self.balance, self.account_id, self.credits, notice=self.notice,
            threshold=self.threshold, refill_amount=self.refill_amount,
        )


def grant(session: Session, account_id: str) -> Grant:
    """Serve the queue from the balance: lock the account row, walk the ungranted waiters in
    first-come order and grant each one the balance still covers (stopping at the first it does
    not: the queue is strict), debiting each with its own ledger entry. One transaction."""
    locked = _lock_account(session, account_id)
    balance = int(locked[0])
    queue = session.execute(
        select(SmsWaiter.workflow_id, SmsWaiter.credits_needed, SmsWaiter.step)
        .where(SmsWaiter.account_id == account_id, SmsWaiter.credits_granted == 0)
        .order_by(SmsWaiter.since, SmsWaiter.workflow_id)
    ).all()
    chosen: list[tuple[str, int, int | None]] = []
    budget = balance
    for workflow_id, needed, step in queue:
        if needed > budget:
            break
        budget -= int(needed)
        chosen.append((workflow_id, int(needed), step))
    result = Grant(account_id, [], 0, balance, balance, len(queue), locked[1],
                   _opt_int(locked[2]), _opt_int(locked[3]))
    if not chosen:
        return result
    now = utcnow()
    granted: set[str] = set()
    needs = {w: n for w, n, _ in chosen}
    for start in range(0, len(chosen), 500):
        chunk = [w for w, _, _ in chosen[start:start + 500]]
        rows = session.execute(
            update(SmsWaiter)
            .where(SmsWaiter.account_id == account_id, SmsWaiter.workflow_id.in_(chunk),
                   SmsWaiter.credits_granted == 0)
            .values(credits_granted=SmsWaiter.credits_needed, granted_at=now)
            .returning(SmsWaiter.workflow_id, SmsWaiter.credits_needed)
        ).all()
        for workflow_id, needed in rows:  # what the row says now is what is debited
            needs[workflow_id] = int(needed)
            granted.add(workflow_id)
    entries: list[dict[str, Any]] = []
    running = balance
    for workflow_id, _, step in chosen:
        if workflow_id not in granted:
            continue  # left the queue meanwhile
        running -= needs[workflow_id]
        entries.append({
            "account_id": account_id, "kind": "sms_debit", "amount": -needs[workflow_id],
            "balance_after": running, "workflow_id": workflow_id, "step": step,
            "message_id": None, "note": "granted to a waiting case by a wake",
            "created_at": now,
        })
    total = balance - running
    if running < 0:  # cannot happen under the lock; never let it through
        raise RuntimeError(f"grant would overdraw {account_id!r}")
    if entries:
        session.execute(insert(CreditEntry), entries)
        session.execute(
            update(Account).where(Account.id == account_id)
            .values(credit_balance=Account.credit_balance - total, updated_at=now)
        )
    loaded = session.identity_map.get(session.identity_key(Account, account_id))
    if loaded is not None:
        session.expire(loaded, ["credit_balance", "updated_at"])
    result.workflow_ids = [w for w, _, _ in chosen if w in granted]
    result.credits = total
    result.balance = running
    result.still_waiting = len(queue) - len(result.workflow_ids)
    return result


def stale_grants(session: Session, account_id: str, older_than: datetime) -> list[str]:
    """Granted waiters whose case has not used the grant since `older_than` (a lost signal,
    or a case that was not running when signalled): candidates for another signal."""
    return list(session.scalars(
        select(SmsWaiter.workflow_id)
        .where(SmsWaiter.account_id == account_id, SmsWaiter.credits_granted > 0,
               SmsWaiter.granted_at < older_than)
        .order_by(SmsWaiter.since, SmsWaiter.workflow_id)
    ))


def waiters(session: Session, account_id: str) -> list[tuple[str, int, datetime]]:
    """The account's queue of cases still waiting for credits (not granted), first come first
    served."""
    rows = session.execute(
        select(SmsWaiter.workflow_id, SmsWaiter.credits_needed, SmsWaiter.since)
        .where(SmsWaiter.account_id == account_id, SmsWaiter.credits_granted == 0)
        .order_by(SmsWaiter.since, SmsWaiter.workflow_id)
    ).all()
    return [(r[0], int(r[1]), r[2]) for r in rows]


def waiting_count(session: Session, account_id: str) -> int:
    """Cases still waiting for credits (granted ones are served: they wait for their send)."""
    return int(
        session.scalar(
            select(func.count()).select_from(SmsWaiter).where(
                SmsWaiter.account_id == account_id, SmsWaiter.credits_granted == 0
            )
        )
        or 0
    )


def granted_to(session: Session, account_id: str, workflow_ids: list[str]) -> int:
    """Credits currently granted to these cases."""
    total = 0
    for start in range(0, len(workflow_ids), 500):
        total += int(session.scalar(
            select(func.coalesce(func.sum(SmsWaiter.credits_granted), 0)).where(
                SmsWaiter.account_id == account_id,
                SmsWaiter.workflow_id.in_(workflow_ids[start:start + 500]),
            )
        ) or 0)
    return total


def granted_count(session: Session, account_id: str) -> int:
    """Cases served by a wake whose send has not used the grant yet."""
    return int(
        session.scalar(
            select(func.count()).select_from(SmsWaiter).where(
                SmsWaiter.account_id == account_id, SmsWaiter.credits_granted > 0
            )
        )
        or 0
    )
