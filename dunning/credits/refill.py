"""Auto-refill through payment gateways, and balance notices.

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

Gateways: `simulated` grants at once (tests, demos, invoiced customers) and `stripe` charges
the saved payment method off-session (PaymentIntent, confirm=True, idempotency key = the
refill's key) for N x the credit's display price. Settings: DUNNING_STRIPE_API_KEY (or
STRIPE_API_KEY), DUNNING_STRIPE_API_URL (default https://api.stripe.com).

Notices: the account's `contact_email` gets one email when a debit takes the balance below the
threshold (`low`) and one when the balance hits zero or a text cannot be paid (`zero`, SMS
paused). `accounts.balance_notice` remembers the last one sent; credits that bring the balance
back up re-arm it (see `ledger._apply`), so each crossing notifies once, never per message.

Nothing here may break an SMS send: `after_reserve` runs its few statements in a savepoint and
logs any error; charges, grants, emails and wakes run after the commit, off the activity thread.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from dunning.accounts import pricing
from dunning.credits import ledger
from dunning.domain.contract import InputError
from dunning.domain.outbound import scrub
from dunning.events import outbox
from dunning.platform.db import Database
from dunning.platform.db.models import Account, Refill, utcnow
from dunning.platform.providers.email import EmailProvider, OutgoingEmail

log = logging.getLogger("dunning.refill")

GATEWAYS = ("simulated", "stripe")
STALE_AFTER = timedelta(minutes=10)
MAX_CREDITS = 1_000_000_000
_RANK = {None: 0, ledger.NOTICE_LOW: 1, ledger.NOTICE_ZERO: 2}


# --- gateways ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Charge:
    refill_id: int
    account_id: str
    credits: int
    amount_minor: int  # 0 when the account has no price (simulated gateway only)
    currency: str | None
    customer: str | None
    payment_method: str | None
    idempotency_key: str


class GatewayError(Exception):
    """The gateway refused the charge for good (declined, invalid, not configured)."""


class GatewayPending(Exception):
    """The outcome is unknown or not final yet: try again later with the same key."""


class PaymentGateway(Protocol):
    name: str

    def charge(self, charge: Charge) -> str:
        """Take the payment; return the gateway's reference. Raises GatewayError or
        GatewayPending."""
        ...


class SimulatedGateway:
    """Grants at once. `fail` makes every charge fail with that message (tests, drills);
    `hold` (an Event) makes charges wait for it."""

    name = "simulated"

    def __init__(self, fail: str | None = None, hold: threading.Event | None = None) -> None:
        self.fail = fail
        self.hold = hold
        self.charges: list[Charge] = []
        self._lock = threading.Lock()

    def charge(self, charge: Charge) -> str:
        if self.hold is not None:
            self.hold.wait(30)
        with self._lock:
            self.charges.append(charge)
        if self.fail:
            raise GatewayError(self.fail)
        return f"sim_{charge.idempotency_key}"


class StripeGateway:
    """Off-session PaymentIntent on the saved payment method, with the refill's idempotency
    key (the SDK sends it as the Idempotency-Key header, and reuses it on its own retries)."""

    name = "stripe"

    def __init__(self, api_key: str | None = None, api_base: str | None = None,
                 *, max_network_retries: int = 1, timeout: float = 30.0) -> None:
        self.api_key = api_key if api_key is not None else (
            os.environ.get("DUNNING_STRIPE_API_KEY") or os.environ.get("STRIPE_API_KEY") or ""
        )
        self.api_base = (api_base or os.environ.get("DUNNING_STRIPE_API_URL")
                         or "https://api.stripe.com").rstrip("/")
        self.max_network_retries = max_network_retries
        self.timeout = timeout

    def charge(self, charge: Charge) -> str:
        import stripe

        if not self.api_key:
            raise GatewayError("Stripe is not configured: set DUNNING_STRIPE_API_KEY")
        if not charge.amount_minor or not charge.currency:
            raise GatewayError("the account has no credit price: set one with `credits price`")
        if not charge.customer or not charge.payment_method:
            raise GatewayError("the account has no Stripe customer and payment method")
        client = stripe.StripeClient(
            self.api_key,
            base_addresses={"api": self.api_base},
            max_network_retries=self.max_network_retries,
            http_client=stripe.RequestsClient(timeout=self.timeout),
        )
        try:
            intent = client.v1.payment_intents.create(
                params={
                    "amount": charge.amount_minor,
                    "currency": charge.currency.lower(),
                    "customer": charge.customer,
                    "payment_method": charge.payment_method,
                    "off_session": True,
                    "confirm": True,
                    "description": f"{charge.credits} SMS credits (auto-refill)",
                    "metadata": {
                        "dunning_account": charge.account_id,
                        "dunning_refill": str(charge.refill_id),
                        "credits": str(charge.credits),
                    },
                },
                options={"idempotency_key": charge.idempotency_key},
            )
        except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
            raise GatewayPending(f"Stripe unreachable: {_stripe_message(exc)}") from None
        except stripe.StripeError as exc:
            status = getattr(exc, "http_status", None) or 0
            if status >= 500 or status == 409:
                raise GatewayPending(f"Stripe error: {_stripe_message(exc)}") from None
            raise GatewayError(_stripe_message(exc)) from None
        status, intent_id = str(intent.status or ""), str(intent.id or "")
        if status == "succeeded":
            return intent_id
        if status == "processing":
            raise GatewayPending(f"payment {intent_id} still processing")
        raise GatewayError(f"payment {intent_id} not completed (status {status})")


def _stripe_message(exc: Exception) -> str:
    err = getattr(exc, "error", None)
    code = getattr(err, "decline_code", None) or getattr(err, "code", None)
    message = getattr(err, "message", None) or getattr(exc, "user_message", None) or str(exc)
    text = f"{code}: {message}" if code else str(message)
    return " ".join(text.split())[:380]


_gateways: dict[str, PaymentGateway] = {}
_gateway_lock = threading.Lock()


def set_gateway(name: str, gateway: PaymentGateway | None) -> None:
    """Replace the gateway used for `name` in this process (None: back to the default)."""
    with _gateway_lock:
        if gateway is None:
            _gateways.pop(name, None)
        else:
            _gateways[name] = gateway


def gateway_for(name: str) -> PaymentGateway:
    with _gateway_lock:
        if name in _gateways:
            return _gateways[name]
    if name == "stripe":
        return StripeGateway()
    if name == "simulated":
        return SimulatedGateway()
    raise GatewayError(f"unknown payment gateway {name!r}")


# --- configuration -------------------------------------------------------------------------


def _locked_account(session: Session, account_id: str) -> Account:
    account = session.get(Account, account_id, with_for_update=True)
    if account is None:
        raise InputError("account", f"unknown account {account_id!r}")
    return account


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
    account = _locked_account(session, account_id)
    if off and (threshold is not None or amount is not None):
        raise InputError("off", "--off takes no --threshold or --amount")
    if off:
        new_threshold: int | None = None
        new_amount: int | None = None
    else:
        new_threshold = threshold if threshold is not None else account.auto_refill_threshold
        new_amount = amount if amount is not None else account.auto_refill_amount
        if new_threshold is None or new_amount is None:
            raise InputError("threshold", "give --threshold T and --amount N (or --off)")
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
                f"has none: set it first, e.g. `dunning credits price --account {account_id} "
                "--price 0.01 --currency USD`",
            )
        if not customer or not method:
            raise InputError(
                "gateway", "Stripe refills need --stripe-customer cus_... and "
                "--stripe-payment-method pm_... (a payment method saved for off-session use)",
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
    account = _locked_account(session, account_id)
    threshold, amount = account.auto_refill_threshold, account.auto_refill_amount
    if threshold is None or not amount or account.credit_balance >= threshold:
        return None
    if _pending(session, account_id) is not None:
        return None
    return _new_refill(session, account_id, int(amount), account.refill_gateway)


def _pending(session: Session, account_id: str) -> Refill | None:
    return session.scalar(
        select(Refill).where(Refill.account_id == account_id, Refill.status == "pending")
        .order_by(Refill.id).limit(1)
    )


def _new_refill(session: Session, account_id: str, amount: int, gateway: str) -> int:
    row = Refill(account_id=account_id, amount=amount, status="pending", gateway=gateway,
                 idempotency_key=f"dunning-refill-{uuid.uuid4().hex}")
    session.add(row)
    session.flush()
    return int(row.id)


def _claim_stale(session: Session, refill: Refill) -> int | None:
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


# --- the hook in the send activity -------------------------------------------------------


@dataclass
class Followup:
    """What a reservation leaves to do after its commit."""

    account_id: str
    balance: int
    notice: str | None = None  # low | zero: email the account's contact
    refill_id: int | None = None  # charge and grant this refill


def _level(balance: int, threshold: int | None) -> str | None:
    if balance <= 0:
        return ledger.NOTICE_ZERO
    if threshold is not None and balance < threshold:
        return ledger.NOTICE_LOW
    return None


def _decide(res: ledger.Reservation) -> tuple[str | None, bool, bool]:
    """(notice level to record, crossed the refill threshold, look for a stale refill), from
    the reservation alone: the common case needs no statement at all."""
    if res.ok:
        level = _level(res.balance, res.threshold)
        crossed = (
            res.threshold is not None and bool(res.refill_amount)
            and res.before >= res.threshold > res.balance
        )
        stale = crossed
    else:
        # Out of credits for this text (not merely queued behind older waiters): SMS pauses.
        level = ledger.NOTICE_ZERO if res.balance < res.amount else None
        crossed = False
        stale = bool(res.refill_amount)
    if _RANK[level] <= _RANK.get(res.notice, 0):
        level = None
    return level, crossed, stale


def plan_followup(session: Session, res: ledger.Reservation) -> Followup | None:
    """Decide, inside the reservation's transaction (the account row is locked), whether this
    debit crossed the auto-refill threshold or a notice level. Changes rows; sends nothing."""
    level, crossed, stale = _decide(res)
    if level is None and not crossed and not stale:
        return None
    follow = Followup(res.account_id, res.balance)
    if level is not None:
        session.execute(
            update(Account).where(Account.id == res.account_id).values(balance_notice=level)
        )
        follow.notice = level
        outbox.record(  # outbound event (dunning.events), in this transaction
            session, res.account_id,
            "credits.empty" if level == ledger.NOTICE_ZERO else "credits.low",
            {"balance": res.balance, "threshold": res.threshold},
        )
    if crossed or stale:
        pending = _pending(session, res.account_id)
        if pending is None and crossed:
            assert res.refill_amount is not None
            gateway = session.scalar(
                select(Account.refill_gateway).where(Account.id == res.account_id)
            ) or "simulated"
            follow.refill_id = _new_refill(session, res.account_id, res.refill_amount, gateway)
        elif pending is not None:
            follow.refill_id = _claim_stale(session, pending)
    if follow.notice is None and follow.refill_id is None:
        return None
    return follow


def after_reserve(
    session: Session,
    res: ledger.Reservation,
    db: Database,
    email: EmailProvider | None = None,
    default_sender: str = "billing@localhost",
) -> Followup | None:
    """The send activity's hook, right after `ledger.reserve` in the same transaction.

    Never raises: the decisions run in a savepoint (rolled back alone on error) and the work
    they leave (emails, charges, grants, wakes) starts on the runner thread after the commit.
    Nothing happens if the transaction rolls back.
    """
    if not res.account_id:
        return None
    level, crossed, stale = _decide(res)
    if level is None and not crossed and not stale:
        return None  # the hot path: nothing due, not a single statement
    try:
        with session.begin_nested():
            follow = plan_followup(session, res)
    except Exception:
        log.exception("balance follow-up for %s failed; the send goes on", res.account_id)
        return None
    if follow is None:
        return None

    def _after_commit(_session: Session) -> None:
        submit(lambda: run_followup(db, follow, email, default_sender))

    event.listen(session, "after_commit", _after_commit, once=True)
    return follow


# --- the runner: work that happens after the commit ------------------------------------


_runner: ThreadPoolExecutor | None = None
_runner_lock = threading.Lock()
_inflight: set[Future[Any]] = set()


def submit(fn: Callable[[], Any]) -> Future[Any]:
    global _runner
    with _runner_lock:
        if _runner is None:
            _runner = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dunning-refill")
        future = _runner.submit(_guarded, fn)
        _inflight.add(future)
    future.add_done_callback(_forget)
    return future


def _forget(future: Future[Any]) -> None:
    with _runner_lock:
        _inflight.discard(future)


def _guarded(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:
        log.exception("balance follow-up failed")
        return None


def drain(timeout: float = 30.0) -> bool:
    """Wait for the follow-ups started so far (tests, orderly shutdown). True if all done."""
    import concurrent.futures

    with _runner_lock:
        pending = list(_inflight)
    _done, not_done = concurrent.futures.wait(pending, timeout=timeout)
    return not not_done


def run_followup(
    db: Database, follow: Followup, email: EmailProvider | None, default_sender: str
) -> None:
    if follow.notice is not None:
        send_notice(db, follow.account_id, follow.notice, email, default_sender)
    if follow.refill_id is not None:
        done = execute_refill(db, follow.refill_id, email=email, default_sender=default_sender)
        if done is not None and done.status == "succeeded":
            wake_account(db, follow.account_id)


def wake_account(db: Database, account_id: str) -> None:
    """Wake the account's paused cases through the process's waker (best effort: a case
    that misses it re-checks by itself)."""
    from dunning.credits.wake import get_waker

    try:
        future = get_waker().wake(db, account_id)
        result = future.result(timeout=300)
        log.info("auto-refill of %s woke %d paused cases", account_id, result.woken)
    except Exception as exc:
        log.warning("auto-refill of %s: could not wake paused cases now (%s); they resume "
                    "at their next re-check", account_id, exc)


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
    *,
    email: EmailProvider | None = None,
    default_sender: str = "billing@localhost",
) -> RefillOutcome | None:
    """Charge a pending refill and settle it: `succeeded` + the credits, `failed` + the error
    (and one email to the account's contact), or still `pending` when the gateway's answer is
    not final. Settling is conditional on `pending`, so running it twice never grants twice."""
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
        ref = gateway_for(gateway_name).charge(charge)
    except GatewayPending as exc:
        return _settle(db, refill_id, "pending", error=f"not final, will retry: {exc}"[:400])
    except GatewayError as exc:
        outcome = _settle(db, refill_id, "failed", error=str(exc)[:400] or "declined")
    except Exception as exc:  # a bug or an unexpected library error: treat as not final
        log.exception("refill %s: gateway %s raised", refill_id, gateway_name)
        return _settle(db, refill_id, "pending", error=f"not final, will retry: {exc}"[:400])
    else:
        return _settle(db, refill_id, "succeeded", ref=ref)
    if outcome is not None and outcome.status == "failed":
        send_notice(db, outcome.account_id, "refill_failed", email, default_sender,
                    detail=outcome.error or "")
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
    account = session.get(Account, account_id)
    if account is None:
        raise InputError("account", f"unknown account {account_id!r}")
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


# --- notices ------------------------------------------------------------------------------


def notice_email(account: Account, kind: str, balance: int, sender: str,
                 detail: str = "") -> OutgoingEmail | None:
    if not account.contact_email:
        return None
    value = pricing.credits_value(account, balance)
    shown = f"{balance} credits" + (f" (= {value})" if value else "")
    refill_on = account.auto_refill_threshold is not None and account.auto_refill_amount
    how = (f"dunning credits topup --account {account.id} N")
    if kind == ledger.NOTICE_LOW:
        subject = f"{account.company_name}: SMS credits are running low ({balance} left)"
        lines = [
            f"The SMS credit balance of {account.id} fell below "
            f"{account.auto_refill_threshold} credits: it is now {shown}.",
            (f"An automatic refill of {account.auto_refill_amount} credits has been started."
             if refill_on else "Top up to keep text reminders going."),
        ]
    elif kind == ledger.NOTICE_ZERO:
        subject = f"{account.company_name}: SMS credits used up, text reminders paused"
        lines = [
            f"The SMS credit balance of {account.id} is {shown}, not enough for the next text.",
            "Text reminders are paused and resume by themselves, oldest first, as soon as "
            "credits are added. Email reminders go on as scheduled.",
        ]
    else:
        subject = f"{account.company_name}: automatic SMS credit refill failed"
        lines = [
            f"The automatic refill of {account.auto_refill_amount} credits for {account.id} "
            f"failed: {detail}",
            f"The balance is {shown}. It is not retried automatically; text reminders stay "
            "paused once the credits run out (email reminders go on).",
        ]
    lines += ["", f"To add credits: {how}", ""]
    return OutgoingEmail(
        sender=account.email_from or sender,
        to=account.contact_email,
        subject=subject,
        body="\n".join(lines),
        message_id=f"<credits-{kind}-{uuid.uuid4().hex}@dunning>",
    )


def send_notice(
    db: Database,
    account_id: str,
    kind: str,
    email: EmailProvider | None = None,
    default_sender: str = "billing@localhost",
    *,
    detail: str = "",
) -> bool:
    """Email the account's contact about its balance (low | zero) or a failed refill."""
    with db.session() as s:
        account = s.get(Account, account_id)
        if account is None:
            return False
        balance = int(account.credit_balance)
        msg = notice_email(account, kind, balance, default_sender, detail)
    if msg is None:
        log.info("balance notice %s for %s: no contact email", kind, account_id)
        return False
    provider = email or _default_email()
    try:
        provider.send(msg)
    except Exception as exc:
        log.warning("balance notice %s for %s not sent: %s", kind, account_id, exc)
        return False
    return True


def _default_email() -> EmailProvider:
    from dunning.platform.providers.factory import email_provider
    from dunning.platform.settings import get_settings

    return email_provider(get_settings())


def format_balance(account: Account, balance: int | None = None) -> str:
    value = int(account.credit_balance if balance is None else balance)
    shown = pricing.credits_value(account, value)
    return f"{value} credits" + (f" (= {shown})" if shown else "")
