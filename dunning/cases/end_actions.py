"""End-of-dunning actions: when a case is exhausted, do nothing, or through Stripe cancel the
subscription, mark the invoice uncollectible or pause collection. Per account
(`dunning account update A --on-exhausted ...`).

Exactly once per case: a `case_actions` row (unique per case and action) is claimed `pending`
with an idempotency key derived from the case before Stripe is called, and settled `done` or
`failed` after. A retry finds a settled row and returns it; a `pending` one calls again with the
same key, which Stripe answers with its first result. Stripe unreachable: `BillingUnavailable`,
the activity is retried with backoff (the row stays pending).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dunning.accounts.accounts import get_account
from dunning.cases.billing import BillingRefused, StripeBilling
from dunning.domain.contract import InputError
from dunning.platform.db import Database
from dunning.platform.db.models import CaseAction, utcnow

ACTIONS = ("none", "cancel-subscription", "mark-uncollectible", "pause-collection")


def check_action(value: str, field_name: str = "on-exhausted") -> str:
    action = (value or "").strip().lower()
    if action not in ACTIONS:
        raise InputError(field_name, f"{value!r} is not one of {', '.join(ACTIONS)}")
    return action


def idempotency_key(workflow_id: str, action: str) -> str:
    digest = hashlib.sha256(workflow_id.encode()).hexdigest()[:40]
    return f"dunning-{action}-{digest}"


@dataclass(frozen=True)
class ActionOutcome:
    action: str
    status: str  # none | done | failed
    stripe_ref: str | None = None
    error: str | None = None


def action_json(row: CaseAction) -> dict[str, object]:
    return {"action": row.action, "status": row.status, "stripe_ref": row.stripe_ref,
            "error": row.error, "at": row.updated_at.isoformat() if row.updated_at else None}


def summary(session: Session, account_id: str, since: datetime | None = None
            ) -> dict[str, dict[str, int]]:
    """The account's end-of-dunning actions for the report: action -> status -> count."""
    query = select(CaseAction.action, CaseAction.status, func.count()).where(
        CaseAction.account_id == account_id)
    if since is not None:
        query = query.where(CaseAction.created_at >= since)
    out: dict[str, dict[str, int]] = {}
    for action, status, n in session.execute(query.group_by(CaseAction.action,
                                                            CaseAction.status)):
        out.setdefault(action, {})[status] = int(n)
    return out


class EndActions:
    def __init__(self, db: Database, billing: StripeBilling) -> None:
        self.db = db
        self.billing = billing

    def take(self, workflow_id: str, account_id: str, invoice_id: str,
             action: str | None = None) -> ActionOutcome:
        """Take the case's end action (`action`, or the account's setting), once."""
        with self.db.session() as s:
            if action is None:
                account = get_account(s, account_id)
                action = account.on_exhausted or "none"
            if action == "none":
                return ActionOutcome("none", "none")
            row = s.scalar(select(CaseAction).where(CaseAction.workflow_id == workflow_id,
                                                    CaseAction.action == action))
            if row is not None and row.status in ("done", "failed"):
                return ActionOutcome(row.action, row.status, row.stripe_ref, row.error)
            key = idempotency_key(workflow_id, action)
            if row is None:
                try:
                    with s.begin_nested():
                        s.add(CaseAction(workflow_id=workflow_id, account_id=account_id,
                                         action=action, status="pending", idempotency_key=key))
                except IntegrityError:
                    pass  # a concurrent attempt claimed it: same key, Stripe dedupes
        try:
            ref = self._call(action, invoice_id, key)
        except BillingRefused as exc:
            return self._settle(workflow_id, action, "failed", error=str(exc))
        return self._settle(workflow_id, action, "done", ref=ref)

    def _call(self, action: str, invoice_id: str, key: str) -> str:
        if action == "mark-uncollectible":
            return self.billing.mark_uncollectible(invoice_id, key)
        subscription = self.billing.subscription_of(invoice_id)
        if subscription is None:
            raise BillingRefused(f"invoice {invoice_id} has no subscription")
        if action == "cancel-subscription":
            return self.billing.cancel_subscription(subscription, key)
        return self.billing.pause_collection(subscription, key)

    def _settle(self, workflow_id: str, action: str, status: str, *, ref: str | None = None,
                error: str | None = None) -> ActionOutcome:
        with self.db.session() as s:
            row = s.scalar(select(CaseAction).where(CaseAction.workflow_id == workflow_id,
                                                    CaseAction.action == action)
                           .with_for_update())
            assert row is not None
            if row.status == "pending":
                row.status, row.stripe_ref, row.error = status, ref, (error or None)
                row.updated_at = utcnow()
            return ActionOutcome(row.action, row.status, row.stripe_ref, row.error)
