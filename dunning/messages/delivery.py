"""Plivo delivery reports: delivery status, refunds of unbilled failures, opt-outs (error 200).

Finding the message: by our `ref` (the `messages.id` in the callback URL), cross-checked with the
MessageUUID (or ParentMessageUUID) when the row has a provider id; a row without one (an ambiguous
send, `unknown`, or a send not yet recorded, `claimed`) adopts the report's MessageUUID. Without
`ref`, by provider id.

Order: a report whose Sequence is lower than or equal to the stored one is ignored (stale or
repeated). Without a Sequence, a report is applied only when its status is further along
(queued < sent < delivered | undelivered | failed) than the stored one.

Billing rule (Plivo bills messages it handed to a carrier: sent, delivered, undelivered; it
does not bill `failed`, which never left Plivo):
- TotalAmount present: billed when it is above zero;
- else `failed` is unbilled, and so is any failure with error 200 (destination opted out),
  420 (expired in Plivo's queue), 450 (destination country barred) or 900 (insufficient credit),
  which are all stopped before a carrier; `undelivered` otherwise counts as billed.
An unbilled `failed`/`undelivered` report refunds the message's credits once (the ledger holds at
most one refund per message, whoever made it).

A report for a message in status `unknown` settles it: queued/sent/delivered -> `sent`,
failed/undelivered -> `failed`. Error 200 records an opt-out of the number for that account.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from dunning.credits import ledger
from dunning.customers import consent
from dunning.messages import log as message_log
from dunning.platform.db.models import CreditEntry, Customer, Message
from dunning.platform.providers import mask_phone

log = logging.getLogger("dunning.webhooks")

# Where Plivo posts delivery reports; every SMS names its row in the query (`?ref=<id>`).
STATUS_PATH = "/webhooks/plivo/status"

FAILURES = frozenset({"failed", "undelivered"})
SUCCESSES = frozenset({"queued", "sent", "delivered"})
UNBILLED_ERROR_CODES = frozenset({"200", "420", "450", "900"})
OPT_OUT_ERROR_CODE = "200"
_RANK = {"queued": 1, "sent": 2, "delivered": 3, "undelivered": 3, "failed": 3}


@dataclass(frozen=True)
class DeliveryReport:
    message_uuid: str
    status: str
    error_code: str | None = None
    sequence: int | None = None
    total_amount: Decimal | None = None
    to_number: str | None = None  # E.164
    parent_uuid: str | None = None
    ref: int | None = None


def billed(report: DeliveryReport) -> bool:
    """Whether Plivo charged for the message, by the rule in the module docstring."""
    if report.total_amount is not None:
        return report.total_amount > 0
    if report.status == "failed":
        return False
    return report.error_code not in UNBILLED_ERROR_CODES


def _already_refunded(session: Session, row: Message) -> bool:
    return (
        session.scalar(
            select(CreditEntry.id).where(
                CreditEntry.account_id == row.account_id,
                CreditEntry.message_id == row.id,
                CreditEntry.kind == "refund",
            ).limit(1)
        )
        is not None
    )


def _find(session: Session, report: DeliveryReport) -> tuple[Message | None, str]:
    uuids = {report.message_uuid} | ({report.parent_uuid} if report.parent_uuid else set())
    if report.ref is not None:
        row = session.get(Message, report.ref, with_for_update=True)
        if row is None or row.channel != "sms":
            return None, "no such message"
        if row.provider_id:
            if row.provider_id not in uuids:
                return None, "MessageUUID does not match the message"
        elif row.status in ("unknown", "claimed"):
            message_log.adopt_provider_id(row, report.message_uuid)
        else:
            return None, f"message in status {row.status} was never handed to Plivo"
        return row, ""
    row = session.scalars(
        select(Message)
        .where(Message.provider_id == report.message_uuid, Message.channel == "sms")
        .order_by(Message.id)
        .limit(1)
        .with_for_update()
    ).first()
    return row, "" if row is not None else "no such message"


def _is_newer(row: Message, report: DeliveryReport) -> bool:
    if report.sequence is not None:
        return row.delivery_sequence is None or report.sequence > row.delivery_sequence
    return _RANK.get(report.status, 0) > _RANK.get(row.delivery_status or "", 0)


def process_delivery_report(
    session: Session, report: DeliveryReport,
    on_refund: Callable[[str], None] | None = None,
) -> str:
    """Apply one report; returns what happened, for the log ('updated', 'stale', ...).
    `on_refund(account_id)` is told when credits went back (paused cases may now fit)."""
    row, why = _find(session, report)
    if row is None:
        log.info("delivery report uuid=%s ignored: %s", report.message_uuid, why)
        return "ignored"
    if not _is_newer(row, report):
        return "stale"
    message_log.record_delivery(row, report.status, report.error_code, report.sequence)
    failed = report.status in FAILURES
    if report.status in SUCCESSES:
        message_log.settle_unknown(row, delivered=True)
    elif failed:
        reason = f"delivery report: {report.status}" + (
            f" (error {report.error_code})" if report.error_code else ""
        )
        message_log.settle_unknown(row, delivered=False, reason=reason)
    if failed and row.credits > 0 and not billed(report) and not _already_refunded(session, row):
        ledger.refund(
            session, row.account_id, row.credits, workflow_id=row.workflow_id, step=row.step,
            message_id=row.id,
            note=f"Plivo did not bill: {report.status}"
            + (f" error {report.error_code}" if report.error_code else ""),
        )
        log.info("refunded %s credits for message %s (%s)", row.credits, row.id, report.status)
        if on_refund is not None:
            on_refund(row.account_id)
    if report.error_code == OPT_OUT_ERROR_CODE:
        phone = report.to_number or _customer_phone(session, row)
        if phone:
            consent.record_opt_out(
                session, row.account_id, phone, source="plivo-error-200", keyword=None,
                provider_message_id=report.message_uuid,
            )
            log.info("number %s opted out for account %s (Plivo error 200)",
                     mask_phone(phone), row.account_id)
    return "updated"


def _customer_phone(session: Session, row: Message) -> str | None:
    customer = session.get(Customer, (row.account_id, row.customer_id))
    return customer.phone_e164 if customer is not None else None
