"""Auto-refill: configuring it, and charging and settling one refill.

Auto-refill (`dunning credits auto-refill --threshold T --amount N`):
- A *crossing* is the one debit that takes the balance from T or more to below T. Debits of an
  account are serialised by the account row lock their UPDATE takes, so exactly one debit sees
  the crossing, and in its own transaction `after_reserve` inserts a `pending` Refill row, unless
  one is already pending (never two at once: the pending check runs under the same lock).
- After that transaction commits, a background runner thread charges the gateway, then in one
  transaction marks the refill `succeeded` and grants N credits (ledger kind `refill`), and wakes
  the paused cases the way a top-up does (`dunning.credits.wake`): promptly, through a `Waker`.
- A refill that fails is recorded (`failed` + the gateway's error), shown by `credits refills`
  and `credits balance`, the account's contact gets one email, and it is NOT retried: at most one
  attempt per crossing. SMS stays paused (email reminders go on) until credits come in; a top-up
  back to T or more re-arms it, and running `auto-refill` again while the balance is below T
  starts one new attempt at once.
- An ambiguous gateway outcome (connection lost, 5xx, rate limited, payment still processing)
  leaves the refill `pending` with the error noted; it is tried again, with the SAME idempotency
  key, by the account's next crossing or failed reservation once STALE_AFTER has passed (a
  pending refill left by a killed worker is picked up the same way). The key makes Stripe
  return the original PaymentIntent instead of charging twice.

Where the rest lives: the gateways in `dunning.credits.gateways`, the decisions a debit leaves
(notice, refill) and the runner that acts on them after the commit in
`dunning.credits.followups`, the notice emails in `dunning.credits.notices`.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dunning.accounts import pricing
from dunning.accounts.accounts import get_account
from dunning.credits import ledger, notices
from dunning.credits.gateways import (
    GATEWAYS,
    Charge,
    GatewayError,
    GatewayPending,
    Gateways,
)
from dunning.domain.outbound import scrub
from dunning.errors import InputError
from dunning.events import outbox
from dunning.platform.db import Database
from dunning.platform.db.models import Account, Refill, utcnow
from dunning.platform.providers.email import EmailProvider

log = logging.getLogger("dunning.refill")

STALE_AFTER = timedelta(minutes=10)
MAX_CREDITS = 1_000_000_000


# --- configuration -------------------------------------------------------------------------


def _check_count(value: int, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(field_name, "must be a whole number of credits, at least 1")
    if value > MAX_CREDITS:
        raise InputError(field_name, f"must be at most {MAX_CREDITS}")
    return value


def configure(
    session: Session,
    account_id: str,
    *,
    threshold: int | None = None,
    amount: int | None = None,
    off: bool = False,
    gateway: str | None = None,
    stripe_customer: str | None = None,
    stripe_payment_method: str | None = None,
) -> dict[str, Any]:
    """Switch auto-refill on (threshold T, amount N; given values replace the current ones)
    or off, and choose the gateway. Validates everything before changing anything."""
    account = get_account(session, account_id, lock=True)
    if off and (threshold is not None or amount is not None):
        raise InputError("off", "switching auto-refill off takes no threshold or amount")
    if off:
        new_threshold: int | None = None
        new_amount: int | None = None
    else:
        new_threshold = threshold if threshold is not None else account.auto_refill_threshold
        new_amount = amount if amount is not None else account.auto_refill_amount
        if new_threshold is None or new_amount is None:
            raise InputError("threshold", "give a threshold T and an amount N (or switch "
                             "auto-refill off)")
        _check_count(int(new_threshold), "threshold")
        _check_count(int(new_amount), "amount")
    name = (gateway or account.refill_gateway or "simulated").strip().lower()
    if name not in GATEWAYS:
        raise InputError("gateway", f"{gateway!r} is not one of {', '.join(GATEWAYS)}")
    customer = account.stripe_customer_id
    if stripe_customer is not None:
        customer = stripe_customer.strip() or None
        if customer and not customer.startswith("cus_"):
            raise InputError("stripe-customer", f"{stripe_customer!r} is not a Stripe customer "
                             "id such as cus_123")
    method = account.stripe_payment_method
    if stripe_payment_method is not None:
        method = stripe_payment_method.strip() or None
        if method and not method.startswith(("pm_", "card_", "src_", "ba_")):
            raise InputError("stripe-payment-method", f"{stripe_payment_method!r} is not a "
                             "Stripe payment method id such as pm_123")
    if name == "stripe" and new_amount is not None:
        if account.credit_price_minor is None or not account.credit_currency:
            raise InputError(
                "gateway",
                "a Stripe refill charges N credits x the price of a credit, and this account "
                "has none: set the price of a credit first",
            )
        if not customer or not method:
            raise InputError(
                "gateway", "Stripe refills need a Stripe customer (cus_...) and a payment "
                "method saved for off-session use (pm_...)",
            )
        pricing.check_charge(int(new_amount), account.credit_price_minor,
                             account.credit_currency)
    account.auto_refill_threshold = new_threshold
    account.auto_refill_amount = new_amount
    account.refill_gateway = name
    account.stripe_customer_id = customer
    account.stripe_payment_method = method
    session.flush()
    return auto_refill_json(account)


def auto_refill_json(account: Account) -> dict[str, Any]:
    on = account.auto_refill_threshold is not None and account.auto_refill_amount is not None
    data: dict[str, Any] = {
        "account_id": account.id,
        "auto_refill": None,
        "gateway": account.refill_gateway,
        "stripe_customer": account.stripe_customer_id,
        "stripe_payment_method": account.stripe_payment_method,
    }
    if on:
        assert account.auto_refill_amount is not None
        data["auto_refill"] = {
            "threshold": account.auto_refill_threshold,
            "amount": account.auto_refill_amount,
            "gateway": account.refill_gateway,
            "charge": pricing.credits_value(account, account.auto_refill_amount),
        }
    return data


def arm_if_low(session: Session, account_id: str) -> int | None:
    """Auto-refill was just (re)configured: if the balance is already below the threshold and
    no refill is pending, start one now (the id; run it with `execute_refill` after commit)."""
    account = get_account(session, account_id, lock=True)
    threshold, amount = account.auto_refill_threshold, account.auto_refill_amount
    if threshold is None or not amount or account.credit_balance >= threshold:
        return None
    if pending_refill(session, account_id) is not None:
        return None
    return new_refill(session, account_id, int(amount), account.refill_gateway)


def pending_refill(session: Session, account_id: str) -> Refill | None:
    return session.scalar(
        select(Refill).where(Refill.account_id == account_id, Refill.status == "pending")
        .order_by(Refill.id).limit(1)
    )


def new_refill(session: Session, account_id: str, amount: int, gateway: str) -> int:
    row = Refill(account_id=account_id, amount=amount, status="pending", gateway=gateway,
                 idempotency_key=f"dunning-refill-{uuid.uuid4().hex}")
    session.add(row)
    session.flush()
    return int(row.id)


def claim_stale(session: Session, refill: Refill) -> int | None:
    """Take over a pending refill nobody has touched for STALE_AFTER (one taker wins)."""
    now = utcnow()
    result = session.execute(
        update(Refill)
        .where(Refill.id == refill.id, Refill.status == "pending",
               Refill.updated_at < now - STALE_AFTER)
        .values(updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(refill.id) if getattr(result, "rowcount", 0) == 1 else None


# --- executing a refill -----------------------------------------------------------------


@dataclass
class RefillOutcome:
    id: int
    account_id: str
    status: str
    amount: int
    gateway: str
    gateway_ref: str | None
    error: str | None
    balance: int | None


def execute_refill(
    db: Database,
    refill_id: int,
    gateways: Gateways,
    *,
    email: EmailProvider | None = None,
    default_sender: str = "billing@localhost",
) -> RefillOutcome | None:
    """Charge a pending refill and settle it: `succeeded` + the credits, `failed` + the error
    (and, with `email`, one email to the account's contact), or still `pending` when the
    gateway's answer is not final. Settling is conditional on `pending`, so running it twice
    never grants twice."""
    with db.session() as s:
        row = s.get(Refill, refill_id)
        if row is None or row.status != "pending":
            return None
        account = s.get(Account, row.account_id)
        if account is None:
            return None
        price, currency = account.credit_price_minor, account.credit_currency
        charge = Charge(
            refill_id=row.id, account_id=row.account_id, credits=int(row.amount),
            amount_minor=pricing.charge_minor(int(row.amount), price) if price else 0,
            currency=currency, customer=account.stripe_customer_id,
            payment_method=account.stripe_payment_method, idempotency_key=row.idempotency_key,
        )
        gateway_name = row.gateway
    try:
        ref = gateways.get(gateway_name).charge(charge)
    except GatewayPending as exc:
        return _settle(db, refill_id, "pending", error=f"not final, will retry: {exc}"[:400])
    except GatewayError as exc:
        outcome = _settle(db, refill_id, "failed", error=str(exc)[:400] or "declined")
    except Exception as exc:  # a bug or an unexpected library error: treat as not final
        log.exception("refill %s: gateway %s raised", refill_id, gateway_name)
        return _settle(db, refill_id, "pending", error=f"not final, will retry: {exc}"[:400])
    else:
        return _settle(db, refill_id, "succeeded", ref=ref)
    if outcome is not None and outcome.status == "failed" and email is not None:
        notices.send_notice(db, outcome.account_id, notices.REFILL_FAILED, email,
                            default_sender, detail=outcome.error or "")
    return outcome


def _settle(
    db: Database, refill_id: int, status: str, *, ref: str | None = None,
    error: str | None = None,
) -> RefillOutcome | None:
    with db.session() as s:
        row = s.get(Refill, refill_id)
        if row is None:
            return None
        # Lock order everywhere: the account row first, then its refills.
        s.execute(select(Account.id).where(Account.id == row.account_id).with_for_update())
        values: dict[str, Any] = {"status": status, "updated_at": utcnow()}
        if ref is not None:
            values["gateway_ref"] = ref[:100]
        values["error"] = error
        result = s.execute(
            update(Refill).where(Refill.id == refill_id, Refill.status == "pending")
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        balance: int | None = None
        if getattr(result, "rowcount", 0) == 1 and status == "failed":
            outbox.record(  # outbound event (dunning.events), in this transaction
                s, row.account_id, "refill.failed",
                {"refill_id": row.id, "credits": int(row.amount), "gateway": row.gateway,
                 "error": scrub(error or "declined")},
            )
        if getattr(result, "rowcount", 0) == 1 and status == "succeeded":
            balance = ledger.top_up(
                s, row.account_id, int(row.amount), kind="refill",
                note=f"auto-refill #{row.id} via {row.gateway}" + (f" ({ref})" if ref else ""),
            )
        s.refresh(row)
        return RefillOutcome(row.id, row.account_id, row.status, int(row.amount), row.gateway,
                             row.gateway_ref, row.error, balance)


def refills_json(session: Session, account_id: str, limit: int = 50) -> dict[str, Any]:
    account = get_account(session, account_id)
    rows = session.scalars(
        select(Refill).where(Refill.account_id == account_id)
        .order_by(Refill.id.desc()).limit(limit)
    ).all()
    return {
        "account_id": account_id,
        **{k: v for k, v in auto_refill_json(account).items() if k != "account_id"},
        "refills": [refill_json(account, r) for r in rows],
    }


def refill_json(account: Account, r: Refill) -> dict[str, Any]:
    return {
        "id": r.id, "amount": int(r.amount), "status": r.status, "gateway": r.gateway,
        "gateway_ref": r.gateway_ref, "error": r.error,
        "charge": pricing.credits_value(account, int(r.amount)),
        "created_at": r.created_at.isoformat() if r.created_at else None,
        "updated_at": r.updated_at.isoformat() if r.updated_at else None,
    }


def last_refill(session: Session, account_id: str) -> Refill | None:
    return session.scalar(
        select(Refill).where(Refill.account_id == account_id).order_by(Refill.id.desc()).limit(1)
    )
