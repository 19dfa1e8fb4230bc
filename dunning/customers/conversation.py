"""One conversation per customer, and the operator's controls over a customer.

A customer with several open cases gets at most `accounts.daily_message_limit` emails (and, apart,
as many SMS) per rolling 24 hours across them (default 1; 0: no limit). A case's own reminders
never hold each other back (its schedule spaces them); a reminder of another case that would go
over the limit is held until the moment the oldest send in the window is 24 hours old, then sent
if its step is still the newest one due (a later step overtakes it, as after any wait). Sends
of the same customer are serialised on the customer row, so two cases never both take the last
place.

Operators can pause a customer (all reminders held until a time, or until resumed) and exclude
one (their cases end at once as canceled, "customer excluded").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, literal_column, or_, select
from sqlalchemy.orm import Session

from dunning.accounts.accounts import get_account
from dunning.domain.contract import InputError, check_id
from dunning.domain.templates import TemplateContext, format_amount
from dunning.platform.db.models import Account, Case, Customer, Message

WINDOW = timedelta(hours=24)
PAUSE_RECHECK = timedelta(hours=1)  # a pause without an end is checked again this often
# Sends that reached, may have reached or are about to reach the provider ("retry": credits
# reserved, waiting for a send slot or a retry).
COUNTED = ("sent", "claimed", "unknown", "retry")

# The hot path's statements, built once (a send asks both).
_A = cast(Table, Account.__table__)
_C = cast(Table, Customer.__table__)
_M = cast(Table, Message.__table__)
# The customer's row, locked (two cases of one customer never both pass), with the account's
# limit: one round trip.
_CUSTOMER_HOLD = (
    select(_C.c.paused, _C.c.paused_until, _A.c.daily_message_limit)
    .select_from(_C.join(_A, _A.c.id == _C.c.account_id))
    .where(_C.c.account_id == bindparam("h_account"),
           _C.c.customer_id == bindparam("h_customer"))
    .with_for_update(of=_C)
)
# The customer's other cases' sends in the window, newest first (the statuses inlined: an
# expanding IN would be rendered again on every execution).
_RECENT_SENDS = (
    select(_M.c.created_at)
    .where(_M.c.account_id == bindparam("h_account"),
           _M.c.customer_id == bindparam("h_customer"),
           _M.c.channel == bindparam("h_channel"), _M.c.workflow_id != bindparam("h_workflow"),
           or_(*(_M.c.status == literal_column(f"'{status}'") for status in COUNTED)),
           _M.c.created_at > bindparam("h_since"))
    .order_by(_M.c.created_at.desc())
    .limit(bindparam("h_limit"))
)


@dataclass(frozen=True)
class Hold:
    reason: str
    until: datetime


def hold_for(session: Session, account_id: str, customer_id: str, channel: str,
             workflow_id: str, now: datetime) -> Hold | None:
    """Whether this reminder must wait (operator pause, or the customer's daily limit)."""
    params = {"h_account": account_id, "h_customer": customer_id}
    customer = session.execute(_CUSTOMER_HOLD, params).first()
    if customer is not None and customer.paused:
        until = customer.paused_until
        if until is None:
            return Hold("the customer is paused by the operator", now + PAUSE_RECHECK)
        if _aware(until) > now:
            return Hold(f"the customer is paused by the operator until {_aware(until).isoformat()}",
                        _aware(until))
    limit = customer.daily_message_limit if customer is not None else session.scalar(
        select(Account.daily_message_limit).where(Account.id == account_id))
    if not limit:
        return None
    recent = session.scalars(_RECENT_SENDS, {
        **params, "h_channel": channel, "h_workflow": workflow_id, "h_since": now - WINDOW,
        "h_limit": limit,
    }).all()
    if len(recent) < limit:
        return None
    until = _aware(min(recent)) + WINDOW
    return Hold(f"one conversation per customer: {limit} {channel} per day across their cases "
                f"already went out; next allowed {until.isoformat()}", until)


def open_cases(session: Session, account_id: str, customer_id: str) -> tuple[int, str]:
    """(number of the customer's open cases, what they owe across them, formatted)."""
    rows = session.execute(
        select(Case.currency, func.count(), func.sum(Case.amount_due))
        .where(Case.account_id == account_id, Case.customer_id == customer_id,
               Case.state == "active")
        .group_by(Case.currency).order_by(Case.currency)
    ).all()
    count = sum(int(n) for _, n, _ in rows)
    total = " + ".join(format_amount(int(amount or 0), currency) for currency, _, amount in rows)
    return count, total


def with_open_cases(session: Session, ctx: TemplateContext, templates: tuple[str, ...],
                    account_id: str, customer_id: str) -> TemplateContext:
    """The context with `{open_invoices}` and `{total_due}` filled in, when a template uses
    them (one query; none on the common path)."""
    if not any("{open_invoices" in t or "{total_due" in t for t in templates):
        return ctx
    count, total = open_cases(session, account_id, customer_id)
    return replace(ctx, open_invoices=max(count, 1), total_due=total)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# --- operator controls ------------------------------------------------------------------------


def get_customer(session: Session, account_id: str, customer_id: str) -> Customer:
    get_account(session, account_id)
    check_id("customer", customer_id)
    row = session.get(Customer, (account_id, customer_id))
    if row is None:
        raise InputError("customer", f"unknown customer {customer_id!r} of account "
                                     f"{account_id!r}")
    return row


def pause(session: Session, account_id: str, customer_id: str, until: datetime | None,
          now: datetime) -> Customer:
    if until is not None and _aware(until) <= now:
        raise InputError("until", f"{until.isoformat()} is not in the future")
    row = get_customer(session, account_id, customer_id)
    row.paused, row.paused_until = True, until
    return row


def resume(session: Session, account_id: str, customer_id: str) -> Customer:
    row = get_customer(session, account_id, customer_id)
    row.paused, row.paused_until, row.excluded = False, None, False
    return row


def exclude(session: Session, account_id: str, customer_id: str) -> Customer:
    row = get_customer(session, account_id, customer_id)
    row.excluded = True
    return row


def is_excluded(session: Session, account_id: str, customer_id: str) -> bool:
    return bool(session.scalar(select(Customer.excluded).where(
        Customer.account_id == account_id, Customer.customer_id == customer_id)))


def customer_state_json(row: Customer) -> dict[str, Any]:
    return {
        "account_id": row.account_id, "customer_id": row.customer_id,
        "paused": bool(row.paused),
        "paused_until": _aware(row.paused_until).isoformat() if row.paused_until else None,
        "excluded": bool(row.excluded),
    }
