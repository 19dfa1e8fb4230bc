"""Charge as soon as the card is fixed: when Stripe reports a new default payment method
(`customer.updated` whose `previous_attributes.invoice_settings` shows a changed
`default_payment_method`, or `payment_method.attached`), ask Stripe to pay each open invoice of
the customer's active cases (`POST /v1/invoices/<id>/pay`). Per account, on by default
(`dunning account update A --charge-on-card-update off`).

One attempt per (invoice, Stripe event), recorded in `charge_attempts` with an idempotency key
derived from both: Stripe retrying the event pays nothing twice, a later card change tries again.
A payment goes through the usual recovery path (the caller marks the invoice paid and signals
`payment_recovered`); a decline is recorded with its decline code and the schedule goes on.
Stripe unreachable: `BillingUnavailable`, the webhook answers 503 and Stripe retries the event.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from dunning.cases.billing import BillingRefused, StripeBilling
from dunning.platform.db import Database
from dunning.platform.db.models import Account, Case, ChargeAttempt, utcnow

PAYMENT_METHOD_ATTACHED = "payment_method.attached"
CUSTOMER_UPDATED = "customer.updated"


def _id(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("id")
    return value.strip() or None if isinstance(value, str) else None


def card_fixed_customer(kind: str, obj: dict[str, Any], previous: dict[str, Any]) -> str | None:
    """The customer whose card was just fixed by this event, or None."""
    if kind == PAYMENT_METHOD_ATTACHED:
        return _id(obj.get("customer"))
    if kind != CUSTOMER_UPDATED:
        return None
    before = previous.get("invoice_settings")
    if not isinstance(before, dict) or "default_payment_method" not in before:
        return None
    now = (obj.get("invoice_settings") or {}).get("default_payment_method")
    if _id(now) is None or _id(now) == _id(before.get("default_payment_method")):
        return None
    return _id(obj.get("id"))


def idempotency_key(invoice_id: str, event_id: str) -> str:
    digest = hashlib.sha256(f"{invoice_id}\n{event_id}".encode()).hexdigest()[:40]
    return f"dunning-pay-{digest}"


@dataclass(frozen=True)
class ChargeOutcome:
    invoice_id: str
    status: str  # paid | declined | failed | open
    amount_paid: int | None = None
    decline_code: str | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class CardUpdateCharger:
    def __init__(self, db: Database, billing: StripeBilling) -> None:
        self.db = db
        self.billing = billing

    def open_cases(self, account_id: str, customer_id: str) -> list[tuple[str, str]]:
        """(workflow id, invoice id) of the customer's active cases; [] when the account has
        the feature off."""
        with self.db.session() as s:
            on = s.scalar(select(Account.charge_on_card_update).where(Account.id == account_id))
            if not on:
                return []
            return [(w, i) for w, i in s.execute(
                select(Case.workflow_id, Case.invoice_id).where(
                    Case.account_id == account_id, Case.customer_id == customer_id,
                    Case.state == "active",
                ).order_by(Case.started_at, Case.invoice_id)
            ).all()]

    def charge(self, account_id: str, workflow_id: str, invoice_id: str,
               event_id: str) -> ChargeOutcome:
        key = idempotency_key(invoice_id, event_id)
        with self.db.session() as s:
            row = s.scalar(select(ChargeAttempt).where(ChargeAttempt.idempotency_key == key))
            if row is not None and row.status != "pending":
                return ChargeOutcome(invoice_id, row.status, None, row.decline_code, row.error)
            if row is None:
                try:
                    with s.begin_nested():
                        s.add(ChargeAttempt(
                            account_id=account_id, workflow_id=workflow_id,
                            invoice_id=invoice_id, trigger_event=event_id[:200],
                            idempotency_key=key, status="pending",
                        ))
                except IntegrityError:
                    pass  # a concurrent delivery of the same event: same key at Stripe
        try:
            paid = self.billing.pay_invoice(invoice_id, key)
        except BillingRefused as exc:
            status = "declined" if exc.decline_code or "card" in str(exc) else "failed"
            return self._settle(key, invoice_id, status, exc.decline_code, str(exc))
        status = "paid" if paid.status == "paid" else "open"
        outcome = self._settle(key, invoice_id, status, None, None)
        return ChargeOutcome(invoice_id, outcome.status, paid.amount_paid)

    def _settle(self, key: str, invoice_id: str, status: str, decline: str | None,
                error: str | None) -> ChargeOutcome:
        with self.db.session() as s:
            row = s.scalar(select(ChargeAttempt).where(ChargeAttempt.idempotency_key == key))
            assert row is not None
            if row.status == "pending":
                row.status, row.decline_code = status, (decline[:64] if decline else None)
                row.error = error[:400] if error else None
                row.updated_at = utcnow()
            return ChargeOutcome(invoice_id, row.status, None, row.decline_code, row.error)
