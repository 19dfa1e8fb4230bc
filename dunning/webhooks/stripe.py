"""Billing-source events from Stripe: failed and paid invoices, canceled subscriptions, customers.

`POST /webhooks/stripe/{account_id}` (dunning.webhooks.app) checks the `Stripe-Signature` header
against the account's signing secret (`accounts.stripe_webhook_secret`, set with
`dunning stripe set-secret`) before it looks at anything else, then hands the event here.

Events:
- `invoice.payment_failed`: starts the invoice's dunning case (`DunningClient.start_case`): the
  invoice's `hosted_invoice_url` is the billing link; `amount_due`, `currency` (upper-cased),
  `customer`, `customer_email`, `customer_name` and the invoice id come from the invoice, the
  failure time from the event's `created`. Stripe sends one per failed attempt: the case is
  started once (the workflow id is per invoice). An invoice already reported paid is not dunned.
- `invoice.paid`: signals `payment_recovered` with `amount_paid`.
- `invoice.voided`, `invoice.marked_uncollectible`: cancel the invoice's case.
- `customer.subscription.deleted`: cancels the customer's active cases (the `cases` table).
- `customer.created`, `customer.updated`: the customer's `phone` (with `address.country` as the
  region of a number written without +), `name`, `email` and `metadata.plan` go through the same
  validation (`dunning.domain.phones.validate_phone`) and upsert
  (`dunning.customers.upsert_customer`)
  as the file import. A number that is not SMS-capable is not stored; the reason is in the
  response and the log. When an update changes the phone to nothing or to a number that is
  rejected, the stored number is removed (the customer no longer uses it). Updates older than
  one already applied (Stripe does not guarantee order; retries come late) are ignored.
- A new default card (`customer.updated` changing `invoice_settings.default_payment_method`, or
  `payment_method.attached`): each open invoice of the customer's active cases is paid through
  Stripe at once (dunning.cases.card_update); a payment recovers the case as `invoice.paid`
  does, a decline is recorded and the schedule goes on. Done before the event is recorded, so a
  failure (Stripe unreachable: 503) is retried by Stripe with the same idempotency keys.
- Anything else is acknowledged and ignored (not recorded).

Idempotency: each event id is handled once per account (`processed_events`, source
`stripe:<account>`). It is recorded only after its work succeeded (customer changes: in the same
transaction), so a failed attempt is retried by Stripe: the Temporal operations are idempotent
(start by workflow id, signals to a closed case are no-ops). Temporal unreachable (or too slow)
raises `TemporalUnavailable`, which the app answers with 503 so that Stripe retries.

Two more kinds of rows in `processed_events`: `stripe-paid:<account>` / invoice id (an invoice
reported paid) and `stripe-cust:<account>` / customer id, whose `created_at` is the Stripe time
of the newest customer event applied.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import stripe
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from temporalio.service import RPCError

from dunning.cases.card_update import (
    PAYMENT_METHOD_ATTACHED,
    CardUpdateCharger,
    card_fixed_customer,
)
from dunning.cases.client import CaseNotFound, CaseRequest, DunningClient
from dunning.customers.customers import check_customer_fields, upsert_customer
from dunning.domain.contract import InputError, check_decline_code, check_id
from dunning.domain.locales import locale_or_none
from dunning.domain.phones import PhoneError, PhoneInfo, validate_phone
from dunning.messages.inbox import claim_event
from dunning.platform.db import Database
from dunning.platform.db.models import Case, Customer, ProcessedEvent
from dunning.platform.providers import mask_phone

log = logging.getLogger("dunning.stripe")

SIGNATURE_HEADER = "Stripe-Signature"
TOLERANCE_SECONDS = 300  # Stripe's default: a signature older (or newer) than this is refused
MAX_SIGNATURE_HEADER_LENGTH = 4096
TEMPORAL_TIMEOUT = 10.0  # seconds for the Temporal calls of one event; Stripe waits ~20 s
CONNECT_TIMEOUT = 5.0

EVENT_SOURCE = "stripe"
PAID_SOURCE = "stripe-paid"
CUSTOMER_SOURCE = "stripe-cust"
_SOURCE_MAX = 32  # width of processed_events.source

INVOICE_FAILED = "invoice.payment_failed"
INVOICE_PAID = "invoice.paid"
INVOICE_VOIDED = "invoice.voided"
INVOICE_UNCOLLECTIBLE = "invoice.marked_uncollectible"
SUBSCRIPTION_DELETED = "customer.subscription.deleted"
CUSTOMER_CREATED = "customer.created"
CUSTOMER_UPDATED = "customer.updated"
HANDLED = frozenset({
    INVOICE_FAILED, INVOICE_PAID, INVOICE_VOIDED, INVOICE_UNCOLLECTIBLE, SUBSCRIPTION_DELETED,
    CUSTOMER_CREATED, CUSTOMER_UPDATED, PAYMENT_METHOD_ATTACHED,
})
_NOT_DUNNED = frozenset({"paid", "void", "uncollectible", "draft"})


class TemporalUnavailable(Exception):
    """Temporal could not be reached (or did not answer in time): retry the event later."""


class EventError(ValueError):
    """A verified body that is no Stripe snapshot event we can read."""


# --- signatures ------------------------------------------------------------------------------


def signature_header_ok(header: str | None) -> bool:
    """A `Stripe-Signature` header worth checking: `t=<digits>` and at least one `v1=`."""
    if not header or len(header) > MAX_SIGNATURE_HEADER_LENGTH:
        return False
    if not header.isascii() or not header.isprintable():
        return False
    parts = [p.strip().split("=", 1) for p in header.split(",")]
    stamps = [p[1] for p in parts if len(p) == 2 and p[0] == "t"]
    return len(stamps) == 1 and stamps[0].isdigit() and any(
        len(p) == 2 and p[0] == "v1" and p[1] for p in parts
    )


def verify_signature(
    payload: bytes,
    header: str | None,
    secret: str | None,
    *,
    tolerance: int = TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """Stripe's scheme, checked by the Stripe SDK (offline): one of the header's `v1` values is
    hex(HMAC-SHA256(secret, f"{t}.{payload}")) and `t` is within `tolerance` seconds of now.

    No secret (an unknown account, or none set) is checked against a random one, so that the
    answer and its timing do not tell whether the account exists.
    """
    if not signature_header_ok(header):
        return False
    assert header is not None
    key = secret or f"whsec_{secrets.token_hex(16)}"
    try:
        stripe.WebhookSignature.verify_header(payload.decode("utf-8"), header, key, tolerance)
    except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError, TypeError):
        return False
    stamp = int(next(p.split("=", 1)[1] for p in header.split(",") if p.strip().startswith("t=")))
    if stamp > (time.time() if now is None else now) + tolerance:
        return False  # from the future: the SDK only refuses old ones
    return secret is not None and secret != ""


# --- events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StripeEvent:
    id: str
    type: str
    created: datetime
    obj: dict[str, Any]
    previous: dict[str, Any] = field(default_factory=dict)


MAX_CREATED = 253402300799  # 9999-12-31T23:59:59Z


def parse_event(payload: bytes) -> StripeEvent:
    """The fields we use of a (verified) snapshot event; EventError when they are not there."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise EventError("body is not JSON") from None
    if not isinstance(data, dict) or data.get("object") != "event":
        raise EventError("not a Stripe event (object must be 'event')")
    event_id, kind, created = data.get("id"), data.get("type"), data.get("created")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= 200:
        raise EventError("event id missing")
    if not isinstance(kind, str) or not kind:
        raise EventError("event type missing")
    if isinstance(created, bool) or not isinstance(created, int) or created < 0:
        raise EventError("event created time missing")
    if created > MAX_CREATED:  # not a time Stripe sends; fromtimestamp would overflow (500)
        raise EventError("event created time out of range")
    body = data.get("data")
    obj = body.get("object") if isinstance(body, dict) else None
    if not isinstance(obj, dict):
        raise EventError("data.object missing")
    previous = body.get("previous_attributes") if isinstance(body, dict) else None
    return StripeEvent(
        event_id, kind, datetime.fromtimestamp(created, UTC), obj,
        previous if isinstance(previous, dict) else {},
    )


def source_for(kind: str, account_id: str) -> str:
    """`<kind>:<account>`, or a digest of the account id when that is too long for the column."""
    full = f"{kind}:{account_id}"
    if len(full) <= _SOURCE_MAX:
        return full
    digest = hashlib.sha256(account_id.encode("utf-8")).hexdigest()
    return f"{kind}:~{digest[: _SOURCE_MAX - len(kind) - 2]}"


def _text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _id_of(value: Any) -> str | None:
    """An id field that may come expanded (`{"id": ...}`) or as the id itself."""
    if isinstance(value, dict):
        value = value.get("id")
    return _text(value)


def _decline_code(invoice: dict[str, Any]) -> str | None:
    """Stripe's `last_payment_error.decline_code`: on the invoice, or on its payment intent
    when expanded; None when absent or not a decline code."""
    sources = [invoice.get("last_payment_error"), invoice.get("last_finalization_error")]
    intent = invoice.get("payment_intent")
    if isinstance(intent, dict):
        sources.insert(0, intent.get("last_payment_error"))
    for error in sources:
        code = error.get("decline_code") if isinstance(error, dict) else None
        if code:
            try:
                return check_decline_code(code)
            except InputError:
                return None
    return None


def _amount(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


TemporalSource = DunningClient | Callable[[], Awaitable[DunningClient]]


class LazyTemporal:
    """A DunningClient made on first use and kept; a failed connection is tried again next
    time, so the webhook server runs (and answers 503 to what needs Temporal) while Temporal
    is not up yet."""

    def __init__(self, source: TemporalSource, timeout: float = CONNECT_TIMEOUT) -> None:
        self._client = source if isinstance(source, DunningClient) else None
        self._factory = None if isinstance(source, DunningClient) else source
        self._timeout = timeout
        self._lock = asyncio.Lock()

    async def get(self) -> DunningClient:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                assert self._factory is not None
                try:
                    self._client = await asyncio.wait_for(self._factory(), self._timeout)
                except Exception as exc:
                    raise TemporalUnavailable(
                        f"cannot connect to Temporal: {_first_line(exc)}"
                    ) from None
            return self._client


async def _recover(client: DunningClient, *, account_id: str, invoice_id: str,
                   amount: int | None) -> None:
    await client.recover(account_id, invoice_id, amount)


class StripeEvents:
    """The event handlers for the accounts of one database."""

    def __init__(
        self, db: Database, temporal: LazyTemporal, *, timeout: float = TEMPORAL_TIMEOUT,
        charger: CardUpdateCharger | None = None,
    ) -> None:
        self.db = db
        self.temporal = temporal
        self.timeout = timeout
        self.charger = charger

    async def handle(self, account_id: str, event: StripeEvent) -> dict[str, Any]:
        """Apply one event; the JSON answer for Stripe. Raises TemporalUnavailable, or a
        database error, when it should be retried."""
        base = {"event": event.id, "type": event.type}
        if event.type not in HANDLED:
            return {**base, "status": "ignored", "reason": "event type not used"}
        if await asyncio.to_thread(self._processed, account_id, event.id):
            return {**base, "status": "duplicate"}
        charges: list[dict[str, Any]] | None = None
        card_customer = card_fixed_customer(event.type, event.obj, event.previous)
        if card_customer is not None and self.charger is not None:
            charges = await self._charge_open_invoices(account_id, card_customer, event.id)
        if event.type in (CUSTOMER_CREATED, CUSTOMER_UPDATED):
            # One transaction: the change and the record that the event was processed.
            result = await asyncio.to_thread(self._sync_customer, account_id, event)
        else:
            if event.type == INVOICE_FAILED:
                result = await self._invoice_failed(account_id, event)
            elif event.type == INVOICE_PAID:
                result = await self._invoice_paid(account_id, event)
            elif event.type == SUBSCRIPTION_DELETED:
                result = await self._subscription_deleted(account_id, event)
            elif event.type == PAYMENT_METHOD_ATTACHED:
                result = ({"status": "processed", "customer": card_customer}
                          if card_customer else
                          {"status": "ignored", "reason": "the payment method has no customer"})
            else:
                result = await self._invoice_closed(account_id, event)
            # Recorded only now that Temporal has done its part.
            await asyncio.to_thread(self._record, account_id, event.id)
        if charges is not None:
            result = {**result, "charges": charges}
        log.info("stripe %s %s for %s: %s%s", event.type, event.id, account_id,
                 result.get("status"), f" ({result['reason']})" if result.get("reason") else "")
        return {**base, **result}

    # --- bookkeeping ------------------------------------------------------------------------

    def _processed(self, account_id: str, event_id: str) -> bool:
        with self.db.session() as s:
            key = (source_for(EVENT_SOURCE, account_id), event_id)
            return s.get(ProcessedEvent, key) is not None

    def _record(self, account_id: str, event_id: str) -> None:
        with self.db.session() as s:
            claim_event(s, source_for(EVENT_SOURCE, account_id), event_id)

    def _mark_paid(self, account_id: str, invoice_id: str) -> None:
        with self.db.session() as s:
            claim_event(s, source_for(PAID_SOURCE, account_id), invoice_id)

    def _invoice_was_paid(self, account_id: str, invoice_id: str) -> bool:
        with self.db.session() as s:
            key = (source_for(PAID_SOURCE, account_id), invoice_id[:200])
            return s.get(ProcessedEvent, key) is not None

    async def _call(self, op: Callable[[DunningClient], Awaitable[Any]]) -> Any:
        client = await self.temporal.get()
        try:
            return await asyncio.wait_for(op(client), self.timeout)
        except (RPCError, TimeoutError) as exc:
            raise TemporalUnavailable(f"Temporal did not answer: {_first_line(exc)}") from None

    # --- invoices ---------------------------------------------------------------------------

    def case_request(self, account_id: str, event: StripeEvent) -> CaseRequest | str:
        """The case to start for a failed invoice, or why none is started."""
        inv = event.obj
        invoice_id, customer_id = _id_of(inv.get("id")), _id_of(inv.get("customer"))
        if invoice_id is None:
            return "the invoice has no id"
        if customer_id is None:
            return "the invoice has no customer"
        status = _text(inv.get("status"))
        if status in _NOT_DUNNED:
            return f"the invoice is {status}"
        link = _text(inv.get("hosted_invoice_url"))
        if link is None:
            return "the invoice has no hosted_invoice_url to pay at"
        amount = _amount(inv.get("amount_due"))
        if amount is None or amount <= 0:
            return "nothing is due on the invoice"
        currency = (_text(inv.get("currency")) or "").upper()
        email = _text(inv.get("customer_email"))
        try:
            check_customer_fields(email=email)
        except InputError:
            email = None  # a case without the address beats no case; email is skipped
        name = _text(inv.get("customer_name"))
        decline = _decline_code(inv)
        return CaseRequest(
            account_id=account_id, customer_id=customer_id, invoice_id=invoice_id,
            amount_due=amount, currency=currency, billing_link=link, failed_at=event.created,
            customer_email=email, customer_name=name[:200] if name else None,
            decline_code=decline,
        )

    async def _invoice_failed(self, account_id: str, event: StripeEvent) -> dict[str, Any]:
        request = self.case_request(account_id, event)
        if isinstance(request, str):
            return {"status": "ignored", "reason": request}
        if await asyncio.to_thread(self._invoice_was_paid, account_id, request.invoice_id):
            return {"status": "ignored", "invoice": request.invoice_id,
                    "reason": "the invoice was already paid"}
        try:
            started = await self._call(lambda c: c.start_case(request))
        except InputError as exc:
            return {"status": "ignored", "invoice": request.invoice_id, "reason": str(exc)}
        if started.started and await asyncio.to_thread(
            self._invoice_was_paid, account_id, request.invoice_id
        ):
            # invoice.paid came in meanwhile and found no case to signal: close this one.
            await self._signal_case(lambda c: c.recover(account_id, request.invoice_id))
        return {
            "status": "processed", "invoice": request.invoice_id,
            "workflow_id": started.workflow_id,
            "case": "started" if started.started else "already exists",
        }

    async def _signal_case(
        self, op: Callable[[DunningClient], Awaitable[object]]
    ) -> str:
        try:
            await self._call(op)
        except CaseNotFound:
            return "no running case"
        return "signalled"

    async def _invoice_paid(self, account_id: str, event: StripeEvent) -> dict[str, Any]:
        invoice_id = _id_of(event.obj.get("id"))
        if invoice_id is None:
            return {"status": "ignored", "reason": "the invoice has no id"}
        amount = _amount(event.obj.get("amount_paid"))
        # Marked before the signal: a payment_failed handled at the same time either starts its
        # case before the signal (which then finds it) or sees the mark after starting it.
        await asyncio.to_thread(self._mark_paid, account_id, invoice_id)
        case = await self._signal_case(lambda c: c.recover(account_id, invoice_id, amount))
        return {"status": "processed", "invoice": invoice_id, "case": case}

    async def _charge_open_invoices(
        self, account_id: str, customer_id: str, event_id: str
    ) -> list[dict[str, Any]]:
        """Pay each open invoice of the customer's active cases (see dunning.cases.card_update);
        a payment recovers its case as `invoice.paid` does. Raises BillingUnavailable."""
        assert self.charger is not None
        charger = self.charger
        out = []
        for workflow_id, invoice_id in await asyncio.to_thread(
            charger.open_cases, account_id, customer_id
        ):
            outcome = await asyncio.to_thread(charger.charge, account_id, workflow_id,
                                              invoice_id, event_id)
            entry = outcome.as_json()
            if outcome.status == "paid":
                await asyncio.to_thread(self._mark_paid, account_id, invoice_id)
                entry["case"] = await self._signal_case(
                    partial(_recover, account_id=account_id, invoice_id=invoice_id,
                            amount=outcome.amount_paid)
                )
            log.info("card updated: invoice %s %s%s", invoice_id, outcome.status,
                     f" ({outcome.decline_code})" if outcome.decline_code else "")
            out.append(entry)
        return out

    async def _cancel(self, account_id: str, invoice_id: str, reason: str) -> bool:
        outcome = await self._signal_case(lambda c: c.cancel(account_id, invoice_id, reason))
        return outcome == "signalled"

    async def _invoice_closed(self, account_id: str, event: StripeEvent) -> dict[str, Any]:
        invoice_id = _id_of(event.obj.get("id"))
        if invoice_id is None:
            return {"status": "ignored", "reason": "the invoice has no id"}
        reason = "invoice voided" if event.type == INVOICE_VOIDED else "invoice uncollectible"
        case = await self._signal_case(lambda c: c.cancel(account_id, invoice_id, reason))
        return {"status": "processed", "invoice": invoice_id, "case": case}

    def _active_invoices(self, account_id: str, customer_id: str) -> list[str]:
        with self.db.session() as s:
            return list(s.scalars(
                select(Case.invoice_id).where(
                    Case.account_id == account_id, Case.customer_id == customer_id,
                    Case.state == "active",
                ).order_by(Case.invoice_id)
            ))

    async def _subscription_deleted(
        self, account_id: str, event: StripeEvent
    ) -> dict[str, Any]:
        customer_id = _id_of(event.obj.get("customer"))
        if customer_id is None:
            return {"status": "ignored", "reason": "the subscription has no customer"}
        invoices = await asyncio.to_thread(self._active_invoices, account_id, customer_id)
        canceled: list[str] = []
        for invoice_id in invoices:
            if await self._cancel(account_id, invoice_id, "subscription canceled"):
                canceled.append(invoice_id)
        return {"status": "processed", "customer": customer_id, "canceled": canceled}

    # --- customers --------------------------------------------------------------------------

    def _sync_customer(self, account_id: str, event: StripeEvent) -> dict[str, Any]:
        for attempt in range(2):
            try:
                with self.db.session() as s:
                    return self._apply_customer(s, account_id, event)
            except IntegrityError:  # PostgreSQL: the same customer created concurrently
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def _apply_customer(self, s: Session, account_id: str, event: StripeEvent) -> dict[str, Any]:
        obj = event.obj
        customer_id = _id_of(obj.get("id"))
        try:
            check_id("customer_id", customer_id)
        except InputError as exc:
            return {"status": "ignored", "reason": str(exc)}
        assert customer_id is not None
        if not claim_event(s, source_for(EVENT_SOURCE, account_id), event.id):
            return {"status": "duplicate"}
        if not self._newest(s, account_id, customer_id, event.created):
            return {"status": "ignored", "customer": customer_id,
                    "reason": "a newer update of this customer was applied already"}
        result: dict[str, Any] = {"status": "processed", "customer": customer_id}
        warnings: list[str] = []
        name, email = _text(obj.get("name")), _text(obj.get("email"))
        metadata = obj.get("metadata")
        plan = _text(metadata.get("plan")) if isinstance(metadata, dict) else None
        for label, value in (("name", name), ("email", email), ("plan", plan)):
            try:
                check_customer_fields(**{label: value})
            except InputError as exc:
                warnings.append(f"{label} not stored: {exc.message}")
                if label == "name":
                    name = None
                elif label == "email":
                    email = None
                else:
                    plan = None
        locale = _preferred_locale(obj.get("preferred_locales"))
        if locale is None and obj.get("preferred_locales"):
            warnings.append("preferred_locales not stored: no BCP 47 locale CLDR knows")
        raw_phone = _text(obj.get("phone"))
        address = obj.get("address")
        country = _text(address.get("country")) if isinstance(address, dict) else None
        phone: PhoneInfo | None = None
        phone_note = "not given"
        if raw_phone is not None:
            try:
                phone = validate_phone(raw_phone, None, default_region=country)
                phone_note = "stored"
            except PhoneError as exc:
                phone_note = "rejected"
                result["phone_reason"] = exc.reason
                log.warning("stripe customer %s of %s: phone %s rejected: %s", customer_id,
                            account_id, mask_phone(raw_phone), exc.reason)
        outcome = upsert_customer(s, account_id, customer_id, phone=phone, email=email,
                                  name=name, plan=plan, source="stripe", locale=locale)
        if phone is None and "phone" in event.previous and _clear_phone(s, account_id,
                                                                        customer_id):
            phone_note += ", previous number removed"
            outcome = "updated" if outcome == "unchanged" else outcome
        result.update(outcome=outcome, phone=phone_note)
        if warnings:
            result["warnings"] = warnings
        return result

    def _newest(self, s: Session, account_id: str, customer_id: str, created: datetime) -> bool:
        """Record `created` as the customer's newest event time; False if a newer one was
        applied before."""
        key = (source_for(CUSTOMER_SOURCE, account_id), customer_id)
        row = s.get(ProcessedEvent, key)
        if row is None:
            s.add(ProcessedEvent(source=key[0], event_id=key[1], created_at=created))
            s.flush()
            return True
        if _aware(row.created_at) > created:
            return False
        row.created_at = created
        return True


def _preferred_locale(value: Any) -> str | None:
    """The first usable tag of a Stripe customer's `preferred_locales` (e.g. ["pt-BR", "en"])."""
    if not isinstance(value, list):
        return None
    for tag in value:
        if isinstance(tag, str):
            found = locale_or_none(tag)
            if found is not None:
                return found
    return None


def _clear_phone(s: Session, account_id: str, customer_id: str) -> bool:
    """Forget a customer's number (Stripe says it changed to nothing usable); True if one was
    stored."""
    result = s.execute(
        update(Customer)
        .where(Customer.account_id == account_id, Customer.customer_id == customer_id,
               Customer.phone_e164.is_not(None))
        .values(phone_e164=None, phone_region=None, phone_type=None, phone_time_zones=None,
                source="stripe", updated_at=datetime.now(UTC))
    )
    return bool(getattr(result, "rowcount", 0))


__all__ = [
    "HANDLED",
    "SIGNATURE_HEADER",
    "EventError",
    "LazyTemporal",
    "StripeEvent",
    "StripeEvents",
    "TemporalUnavailable",
    "parse_event",
    "signature_header_ok",
    "source_for",
    "verify_signature",
]
