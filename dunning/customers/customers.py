"""Customers: the one place where customer records are created and updated.

The CSV import (`dunning.customers.importer`) and the billing-source sync (Stripe
`customer.created` / `customer.updated`) both go through `upsert_customers` /
`upsert_customer`, with phone numbers checked by `dunning.domain.phones.validate_phone` first.
A case that names a customer (its email, name, plan) records them with `record_case_customer`
(one prebuilt INSERT ... ON CONFLICT per dialect: it runs on every case start).

Rules:
- A value of None means "not given": the stored value is kept (an empty CSV cell never erases
  what is known). There is no way to clear a field through an upsert.
- A record whose given values all equal the stored ones is "unchanged" and not written at all,
  so re-importing the same data changes nothing (not even `updated_at` or `source`).
- Otherwise it is "updated" and `source` becomes the writer's (`import`, `stripe`, ...).
- A batch costs one INSERT ... ON CONFLICT on PostgreSQL, one SELECT and an executemany INSERT
  and UPDATE on SQLite, never one statement per customer. Callers own the transaction; two of
  them upserting the same customer are serialised (the row lock on PostgreSQL, the database
  lock on SQLite), the later one applying its values over the earlier one's.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from sqlalchemy import Insert, Table, and_, bindparam, func, or_
from sqlalchemy.orm import Session

from dunning.domain.contract import EMAIL_RE, InputError, check_id
from dunning.domain.phones import PhoneInfo
from dunning.domain.quiet_hours import UNKNOWN_ZONE
from dunning.platform.db import insert_for
from dunning.platform.db.models import Customer

Outcome = Literal["imported", "updated", "unchanged"]

NAME_MAX: Final = 200
EMAIL_MAX: Final = 320
PLAN_MAX: Final = 100
ZONES_MAX: Final = 400  # width of customers.phone_time_zones

_TABLE: Table = Customer.__table__  # type: ignore[assignment]
# The stored values an upsert compares, in this order.
_FIELDS: Final = (
    "name",
    "email",
    "phone_e164",
    "phone_region",
    "phone_type",
    "phone_time_zones",
    "plan",
    "locale",
)
_SELECT_CHUNK: Final = 500  # ids per SELECT ... IN (...)

Values = tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class CustomerData:
    """What a source knows about one customer; None = not given (keep the stored value)."""

    customer_id: str
    phone: PhoneInfo | None = None
    email: str | None = None
    name: str | None = None
    plan: str | None = None
    locale: str | None = None  # canonical BCP 47 (dunning.domain.locales.normalize_locale)


def check_customer_fields(
    email: str | None = None, name: str | None = None, plan: str | None = None
) -> None:
    """Raise InputError(field, message) for an email, name or plan that cannot be stored."""
    if email is not None and (len(email) > EMAIL_MAX or not EMAIL_RE.match(email)):
        raise InputError("email", f"{email!r} is not an email address")
    if name is not None and len(name) > NAME_MAX:
        raise InputError("name", f"longer than {NAME_MAX} characters")
    if plan is not None and len(plan) > PLAN_MAX:
        raise InputError("plan", f"longer than {PLAN_MAX} characters")


def zones_column(zones: Sequence[str]) -> str:
    """Comma-joined zones for `phone_time_zones`.

    A list too long for the column (only NANPA's country-wide list, 42 zones from Guam to
    Newfoundland, for numbers such as +1 500 personal numbers) is stored as Etc/Unknown: it
    says nothing about where the customer is, and quiet hours then use the account's zone
    instead of squeezing sends into the few hours that suit all 42.
    """
    joined = ",".join(zones)
    return joined if len(joined) <= ZONES_MAX else UNKNOWN_ZONE


def _given(item: CustomerData) -> Values:
    phone = item.phone
    if phone is None:
        return (item.name, item.email, None, None, None, None, item.plan, item.locale)
    return (
        item.name,
        item.email,
        phone.e164,
        phone.region,
        phone.number_type,
        zones_column(phone.time_zones),
        item.plan,
        item.locale,
    )


def _merge(stored: Values, given: Values, phone_given: bool) -> Values:
    if phone_given:  # the phone's four columns go together, region None included
        return tuple(
            g if (g is not None or 2 <= i <= 5) else s
            for i, (s, g) in enumerate(zip(stored, given, strict=True))
        )
    return tuple(s if g is None else g for s, g in zip(stored, given, strict=True))


def _existing(session: Session, account_id: str, ids: Sequence[str]) -> dict[str, Values]:
    found: dict[str, Values] = {}
    for start in range(0, len(ids), _SELECT_CHUNK):
        chunk = ids[start : start + _SELECT_CHUNK]
        rows = fetchall(session, _select_sql(len(chunk)), (account_id, *chunk))
        for row in rows:
            found[row[0]] = tuple(row[1:])
    return found


@functools.cache
def _select_sql(n: int) -> str:
    return (
        f"SELECT customer_id, {', '.join(_FIELDS)} FROM {_TABLE.name} "
        f"WHERE account_id = ? AND customer_id IN ({', '.join('?' * n)})"
    )


def _driver_sql(session: Session, sql: str) -> str:
    style = session.get_bind().dialect.paramstyle
    if style in ("format", "pyformat"):
        return sql.replace("%", "%%").replace("?", "%s")
    if style != "qmark":  # pragma: no cover - neither SQLite nor psycopg
        raise NotImplementedError(f"paramstyle {style}")
    return sql


def fetchall(session: Session, sql: str, params: tuple[Any, ...]) -> list[Any]:
    """Rows of `sql` (with `?` placeholders) run through the DB-API driver directly."""
    return list(session.connection().exec_driver_sql(_driver_sql(session, sql), params))


def executemany(session: Session, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """Run `sql` (with `?` placeholders) once per row through the DB-API's executemany.

    Bulk writes skip SQLAlchemy's per-row parameter processing (several microseconds a row),
    so values must already be in the driver's form (see `bind_value`).
    """
    if rows:
        session.connection().exec_driver_sql(_driver_sql(session, sql), rows)


def bind_value(session: Session, column: str, value: Any) -> Any:
    """`value` as SQLAlchemy would hand it to the driver for customers.`column`."""
    dialect = session.get_bind().dialect
    process = _TABLE.c[column].type.dialect_impl(dialect).bind_processor(dialect)
    return process(value) if process is not None else value


_INSERT_SQL = (
    f"INSERT INTO {_TABLE.name} (account_id, customer_id, {', '.join(_FIELDS)}, source, "
    f"updated_at) VALUES ({', '.join('?' * (len(_FIELDS) + 4))})"
)
_UPDATE_SQL = (
    f"UPDATE {_TABLE.name} SET {', '.join(f + ' = ?' for f in _FIELDS)}, source = ?, "
    "updated_at = ? WHERE account_id = ? AND customer_id = ?"
)


def upsert_customers(
    session: Session, account_id: str, items: Sequence[CustomerData], source: str
) -> list[Outcome]:
    """Create or update many customers of one account; one outcome per item, in order.

    Values must already be checked (`validate_phone`, `check_customer_fields`, `check_id`).
    An id given twice is applied in order, as if upserted one after the other.
    """
    if not items:
        return []
    if session.get_bind().dialect.name == "postgresql":
        return _upsert_on_conflict(session, account_id, items, source)
    ids = list(dict.fromkeys(item.customer_id for item in items))
    current = _existing(session, account_id, ids)
    inserts: dict[str, Values] = {}
    updates: dict[str, Values] = {}
    outcomes: list[Outcome] = []
    for item in items:
        cid = item.customer_id
        given = _given(item)
        stored = current.get(cid)
        if stored is None:
            current[cid] = inserts[cid] = given
            outcomes.append("imported")
            continue
        merged = _merge(stored, given, item.phone is not None)
        if merged == stored:
            outcomes.append("unchanged")
            continue
        current[cid] = merged
        if cid in inserts:
            inserts[cid] = merged
        else:
            updates[cid] = merged
        outcomes.append("updated")
    if inserts or updates:
        now = bind_value(session, "updated_at", datetime.now(UTC))
        executemany(
            session,
            _INSERT_SQL,
            [(account_id, cid, *values, source, now) for cid, values in inserts.items()],
        )
        executemany(
            session,
            _UPDATE_SQL,
            [(*values, source, now, account_id, cid) for cid, values in updates.items()],
        )
    return outcomes


# PostgreSQL: one INSERT ... ON CONFLICT per batch. The conflict check always goes through the
# primary key, whereas the planner, with statistics that lag behind a big import in progress,
# answers `customer_id IN (...)` by scanning all of the account's rows (quadratic time).
_KEEP_UNLESS_GIVEN = ", ".join(
    f"{f} = COALESCE(EXCLUDED.{f}, c.{f})" for f in ("name", "email", "plan", "locale")
)
_PHONE_FIELDS = ("phone_e164", "phone_region", "phone_type", "phone_time_zones")
_PHONE_TOGETHER = ", ".join(
    f"{f} = CASE WHEN EXCLUDED.phone_e164 IS NULL THEN c.{f} ELSE EXCLUDED.{f} END"
    for f in _PHONE_FIELDS
)
_MERGED = ", ".join(
    f"CASE WHEN EXCLUDED.phone_e164 IS NULL THEN c.{f} ELSE EXCLUDED.{f} END"
    if f in _PHONE_FIELDS else f"COALESCE(EXCLUDED.{f}, c.{f})"
    for f in _FIELDS
)


@functools.cache
def _on_conflict_sql(rows: int) -> str:
    row = f"({', '.join(['%s'] * (len(_FIELDS) + 4))})"
    return (
        f"INSERT INTO {_TABLE.name} AS c (account_id, customer_id, {', '.join(_FIELDS)}, "
        f"source, updated_at) VALUES {', '.join([row] * rows)} "
        f"ON CONFLICT (account_id, customer_id) DO UPDATE SET {_KEEP_UNLESS_GIVEN}, "
        f"{_PHONE_TOGETHER}, source = EXCLUDED.source, updated_at = EXCLUDED.updated_at "
        f"WHERE ({_MERGED}) IS DISTINCT FROM ({', '.join('c.' + f for f in _FIELDS)}) "
        "RETURNING c.customer_id, c.xmax = 0"
    )


def _upsert_on_conflict(
    session: Session, account_id: str, items: Sequence[CustomerData], source: str
) -> list[Outcome]:
    now = datetime.now(UTC)
    # An id given twice goes into a second statement (one statement may not touch a row twice).
    rounds: list[list[int]] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        n = seen.get(item.customer_id, 0)
        seen[item.customer_id] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(index)
    outcomes: list[Outcome] = ["unchanged"] * len(items)
    conn = session.connection()
    for indexes in rounds:
        params: list[Any] = []
        for index in indexes:
            item = items[index]
            params += (account_id, item.customer_id, *_given(item), source, now)
        written = {
            cid: inserted
            for cid, inserted in conn.exec_driver_sql(_on_conflict_sql(len(indexes)),
                                                      tuple(params))
        }
        for index in indexes:
            inserted = written.get(items[index].customer_id)
            if inserted is not None:
                outcomes[index] = "imported" if inserted else "updated"
    return outcomes


def upsert_customer(
    session: Session,
    account_id: str,
    customer_id: str,
    phone: PhoneInfo | None = None,
    email: str | None = None,
    name: str | None = None,
    plan: str | None = None,
    source: str = "stripe",
    locale: str | None = None,
) -> Outcome:
    """Create or update one customer (checks id, email, name and plan; None keeps a value)."""
    check_id("customer_id", customer_id)
    check_customer_fields(email, name, plan)
    item = CustomerData(customer_id, phone, email, name, plan, locale)
    return upsert_customers(session, account_id, [item], source)[0]


__all__ = [
    "CustomerData",
    "Outcome",
    "check_customer_fields",
    "record_case_customer",
    "upsert_customer",
    "upsert_customers",
    "zones_column",
]


# --- the customer a case names ------------------------------------------------------------


def _case_customer_upsert(dialect: str) -> Insert:
    """INSERT ... ON CONFLICT for the customer a case names: given values (not None) replace
    the stored ones; a case repeating what is known writes nothing."""
    customer = insert_for(dialect)(_TABLE).values(
        account_id=bindparam("c_account"), customer_id=bindparam("c_customer"),
        email=bindparam("c_email"), name=bindparam("c_name"), plan=bindparam("c_plan"),
        source="case", updated_at=bindparam("c_now"),
    )
    new = customer.excluded
    changed = [
        and_(new[c].is_not(None), new[c].is_distinct_from(_TABLE.c[c]))
        for c in ("email", "name", "plan")
    ]
    return customer.on_conflict_do_update(
        index_elements=[_TABLE.c.account_id, _TABLE.c.customer_id],
        set_={
            "email": func.coalesce(new.email, _TABLE.c.email),
            "name": func.coalesce(new.name, _TABLE.c.name),
            "plan": func.coalesce(new.plan, _TABLE.c.plan),
            "updated_at": new.updated_at,
        },
        where=or_(*changed),
    )


_CASE_UPSERTS: dict[str, Insert] = {}


def record_case_customer(
    session: Session, account_id: str, customer_id: str, *, email: str | None,
    name: str | None, plan: str | None, now: datetime,
) -> None:
    """Create the customer a case names, or update the fields the case gives (None or "" keep
    the stored value). Values come checked by `parse_case_input`."""
    dialect = session.get_bind().dialect.name
    statement = _CASE_UPSERTS.get(dialect)
    if statement is None:
        statement = _CASE_UPSERTS[dialect] = _case_customer_upsert(dialect)
    session.execute(statement, {
        "c_account": account_id, "c_customer": customer_id, "c_email": email or None,
        "c_name": name or None, "c_plan": plan or None, "c_now": now,
    })
