"""What the console's pages and the HTTP API do, on top of the engine's own services.

Each change checks the caller's identity (`Identity.can_change`), validates everything before
writing, and appends an audit entry in the same transaction. Reads take an open session.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, Final

import phonenumbers
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dunning.accounts import messaging, pricing
from dunning.accounts.accounts import AccountOptions, account_json, get_account, update_account
from dunning.console import audit
from dunning.console.access import Identity
from dunning.credits import ledger, refill
from dunning.customers.customers import upsert_customer
from dunning.customers.importer import ImportReport, import_stream
from dunning.domain.contract import InputError, check_id, parse_schedule
from dunning.domain.phones import PhoneError, validate_phone
from dunning.domain.segments import non_gsm7_chars
from dunning.domain.templates import (
    VARIABLES,
    render,
    render_sms,
    validate_email_template,
    validate_sms_template,
)
from dunning.platform.db import Database
from dunning.platform.db.models import (
    ApiIdempotencyKey,
    Case,
    ConsentEvent,
    CreditEntry,
    Customer,
    Message,
    ProcessedEvent,
    SmsWaiter,
)
from dunning.platform.providers import mask_phone

MAX_TOP_UP: Final = refill.MAX_CREDITS
PAGE_SIZE: Final = 50
CASE_STATES: Final = ("active", "recovered", "exhausted", "canceled")


class Forbidden(Exception):
    """The identity may not do this (a viewer trying to change something)."""


def require_change(ident: Identity) -> None:
    if not ident.can_change:
        raise Forbidden("viewers can look but not change anything")


# --- the account -------------------------------------------------------------------------------

ACCOUNT_FIELDS: Final = ("company_name", "sms_sender", "email_from", "contact_email",
                         "schedule", "grace", "quiet_hours", "timezone", "support_contact")


def change_account(session: Session, ident: Identity, values: dict[str, str | None]
                   ) -> dict[str, Any]:
    """`account update` for the API: the given fields (strings; "" clears an optional one)."""
    require_change(ident)
    opts = AccountOptions(**{k: v for k, v in values.items() if k in ACCOUNT_FIELDS})
    account = update_account(session, ident.account_id, opts)
    audit.record(session, ident.account_id, ident.actor, "account.updated",
                 fields=sorted(k for k, v in values.items() if v is not None))
    return account_json(session, account)


# --- SMS settings ------------------------------------------------------------------------------


def template_preview(session: Session, account_id: str, text: str, *, plan: str | None = None,
                     country: str | None = None) -> dict[str, Any]:
    """The SMS a sample customer would get from the (unsaved) template `text`: the same
    rendering and pricing the engine uses (`messaging.quote_sms`). `error` is set (and the
    figures are None) when the template would be refused."""
    account = get_account(session, account_id)
    region = (country or messaging.DEFAULT_PREVIEW_COUNTRY).strip().upper()
    ctx = messaging.account_sample_context(account)
    try:
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise InputError("country", f"{country!r} is not an ISO 3166 alpha-2 region")
        validate_sms_template(text, ctx)
    except InputError as exc:
        return {"text": None, "encoding": None, "segments": None, "credits": None,
                "error": exc.message, "field": exc.field, "plan": plan or None,
                "country": region}
    rendered = render_sms(text, ctx)
    quote = messaging.quote_sms(session, account_id, region, rendered)
    return {"text": quote.text, "encoding": quote.encoding, "segments": quote.segments,
            "credits": quote.credits, "characters": len(rendered),
            "non_gsm7_chars": non_gsm7_chars(rendered), "error": None, "field": None,
            "plan": plan or None, "country": region}


@dataclass
class SmsChanges:
    """A save of the SMS settings page / `updateSmsSettings`; None leaves a value as it is."""

    sms_enabled: bool | None = None
    steps: dict[int, bool] | None = None
    template: str | None = None
    plan: str | None = None


def update_sms_settings(session: Session, ident: Identity, changes: SmsChanges
                        ) -> dict[str, Any]:
    """Validate everything first (InputError names the field), then apply and audit."""
    require_change(ident)
    account = get_account(session, ident.account_id)
    if changes.plan is not None and len(changes.plan) > messaging.MAX_PLAN_LENGTH:
        raise InputError("plan", f"must be at most {messaging.MAX_PLAN_LENGTH} characters")
    count = len(parse_schedule(account.schedule))
    for step in (changes.steps or {}):
        if not 1 <= step <= count:
            raise InputError("steps", f"{step} is not a step of this account (1 to {count})")
    if changes.template is not None:
        validate_sms_template(changes.template, messaging.account_sample_context(account))
    if changes.sms_enabled is not None:
        messaging.set_sms_switch(session, ident.account_id, changes.sms_enabled)
    if changes.steps:
        switches = {str(k): bool(v) for k, v in (account.sms_steps or {}).items()}
        switches.update({str(k): bool(v) for k, v in changes.steps.items()})
        account.sms_steps = switches
    if changes.template is not None:
        current, _source = messaging.sms_template_source(session, ident.account_id,
                                                         changes.plan)
        if current != changes.template:
            messaging.set_sms_template(session, ident.account_id, changes.template,
                                       changes.plan)
    session.flush()
    audit.record(session, ident.account_id, ident.actor, "sms_settings.updated",
                 sms_enabled=changes.sms_enabled,
                 steps={str(k): v for k, v in changes.steps.items()} if changes.steps else None,
                 template_changed=changes.template is not None or None, plan=changes.plan)
    return messaging.sms_settings_json(session, ident.account_id)


def email_preview(session: Session, account_id: str, subject: str, body: str, step: int
                  ) -> dict[str, Any]:
    """The email a sample customer would get at `step` from an (unsaved) subject and body, or
    the error (and its field) that saving it would give."""
    account = get_account(session, account_id)
    offsets = parse_schedule(account.schedule)
    days = offsets[max(step, 1) - 1] // 86400 if offsets else 3
    try:
        validate_email_template(subject, body)
    except InputError as exc:
        return {"subject": None, "body": None, "error": exc.message, "field": exc.field}
    ctx = messaging.account_sample_context(account, days_overdue=days)
    return {"subject": render(subject, ctx), "body": render(body, ctx), "error": None,
            "field": None}


def save_email_template(session: Session, ident: Identity, subject: str, body: str, *,
                        step: int, plan: str | None) -> dict[str, Any]:
    require_change(ident)
    data = messaging.set_email_template(session, ident.account_id, subject, body, step=step,
                                        plan=plan)
    audit.record(session, ident.account_id, ident.actor, "email_template.updated",
                 step=step, plan=plan or None)
    return data


def template_variables() -> list[str]:
    return ["{" + v + "}" for v in VARIABLES]


# --- phone numbers and customers ----------------------------------------------------------------


def import_phones(session: Session, ident: Identity, stream: IO[bytes], *, name: str,
                  default_region: str | None = None, total_bytes: int = 0) -> ImportReport:
    """The CLI's import (`dunning.customers.importer`), audited. CsvFileError: nothing stored
    (the caller's transaction rolls back)."""
    require_change(ident)
    get_account(session, ident.account_id)
    report = import_stream(session, ident.account_id, stream, name=name,
                           default_region=default_region or None, total_bytes=total_bytes)
    audit.record(session, ident.account_id, ident.actor, "phones.imported",
                 imported=report.imported, updated=report.updated,
                 unchanged=report.unchanged, rejected=report.rejected)
    return report


def rejected_csv(report: ImportReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["line", "customer_id", "phone", "reason"])
    for err in report.errors:
        writer.writerow([err.line, err.customer_id, err.phone, err.reason])
    return out.getvalue()


def put_customer(session: Session, ident: Identity, customer_id: str, *,
                 phone: str | None = None, country: str | None = None,
                 email: str | None = None, name: str | None = None,
                 plan: str | None = None) -> str:
    require_change(ident)
    get_account(session, ident.account_id)
    check_id("customer_id", customer_id)
    info = None
    if phone is not None:
        try:
            info = validate_phone(phone, country or None)
        except PhoneError as exc:
            raise InputError("phone", exc.reason) from None
    outcome = upsert_customer(session, ident.account_id, customer_id, info, email, name, plan,
                              source="api")
    audit.record(session, ident.account_id, ident.actor, "customer.upserted",
                 customer_id=customer_id, outcome=outcome)
    return outcome


def stripe_sync_status(session: Session, account_id: str, public_url: str) -> dict[str, Any]:
    """The account's Stripe sync endpoint, whether it has its signing secret, the last event
    taken in and how many customers came from Stripe."""
    from dunning.webhooks.stripe import EVENT_SOURCE, source_for

    account = get_account(session, account_id)
    last = session.scalar(select(func.max(ProcessedEvent.created_at))
                          .where(ProcessedEvent.source == source_for(EVENT_SOURCE, account_id)))
    synced = session.scalar(select(func.count()).select_from(Customer)
                            .where(Customer.account_id == account_id,
                                   Customer.source == "stripe"))
    return {"url": f"{public_url}/webhooks/stripe/{account_id}",
            "configured": bool(account.stripe_webhook_secret), "last_event_at": last,
            "customers": int(synced or 0)}


# --- credits -------------------------------------------------------------------------------------


def balance_json(session: Session, account_id: str) -> dict[str, Any]:
    account = get_account(session, account_id)
    value = ledger.balance_of(session, account_id)
    return {
        "account_id": account_id,
        "balance": value,
        "value": pricing.credits_value(account, value),
        "paused_cases": ledger.waiting_count(session, account_id),
        "auto_refill": refill.auto_refill_json(account)["auto_refill"],
    }


def check_amount(value: Any, field_name: str = "amount") -> int:
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit():
            raise InputError(field_name, "must be a whole number of credits, at least 1")
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(field_name, "must be a whole number of credits, at least 1")
    if value > MAX_TOP_UP:
        raise InputError(field_name, f"must be at most {MAX_TOP_UP}")
    return value


@dataclass
class TopUpDone:
    account_id: str
    balance: int
    duplicate: bool

    def as_json(self) -> dict[str, Any]:
        return {"account_id": self.account_id, "balance": self.balance,
                "duplicate": self.duplicate}


def _request_hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def top_up(db: Database, ident: Identity, amount: Any, idempotency_key: str | None = None
           ) -> TopUpDone:
    """Add credits (one ledger entry) and audit it, in one transaction. With a key, a repeat
    changes nothing and answers the first result (`duplicate`); the same key with another
    amount is an InputError. Waking the paused cases is the caller's next step."""
    require_change(ident)
    credits = check_amount(amount)
    key = None
    if idempotency_key is not None:
        key = idempotency_key.strip()
        if not key or len(key) > 200 or not key.isprintable():
            raise InputError("Idempotency-Key", "must be 1 to 200 printable characters")
    digest = _request_hash({"amount": credits})
    for _ in range(2):
        try:
            with db.session() as s:
                if key is not None:
                    seen = s.get(ApiIdempotencyKey, (ident.account_id, key))
                    if seen is not None:
                        return _replay(seen, digest)
                balance = ledger.top_up(s, ident.account_id, credits)
                audit.record(s, ident.account_id, ident.actor, "credits.topped_up",
                             amount=credits, balance=balance, idempotency_key=key)
                if key is not None:
                    s.add(ApiIdempotencyKey(
                        account_id=ident.account_id, key=key, operation="topUp",
                        request_hash=digest, status_code=200,
                        response={"account_id": ident.account_id, "balance": balance}))
                return TopUpDone(ident.account_id, balance, False)
        except IntegrityError:  # the same key, committed meanwhile by a concurrent request
            continue
    raise InputError("Idempotency-Key", "is being used by a concurrent request; retry")


def _replay(seen: ApiIdempotencyKey, digest: str) -> TopUpDone:
    if seen.request_hash != digest:
        raise InputError("Idempotency-Key", "was used before with a different request")
    body = seen.response
    return TopUpDone(str(body["account_id"]), int(body["balance"]), True)


def set_auto_refill(session: Session, ident: Identity, *, threshold: Any, amount: Any,
                    off: bool) -> int | None:
    """Switch auto-refill on or off (as `dunning credits auto-refill`). Returns the id of a
    refill to run now (the balance is below the threshold already), or None."""
    require_change(ident)
    if off:
        refill.configure(session, ident.account_id, off=True)
        low, credits = None, None
    else:
        low, credits = check_amount(threshold, "threshold"), check_amount(amount, "amount")
        refill.configure(session, ident.account_id, threshold=low, amount=credits)
    audit.record(session, ident.account_id, ident.actor, "auto_refill.updated",
                 off=off or None, threshold=low, amount=credits)
    return None if off else refill.arm_if_low(session, ident.account_id)


def ledger_page(session: Session, account_id: str, page: int, size: int = PAGE_SIZE
                ) -> tuple[list[CreditEntry], int]:
    total = int(session.scalar(select(func.count()).select_from(CreditEntry)
                               .where(CreditEntry.account_id == account_id)) or 0)
    rows = list(session.scalars(
        select(CreditEntry).where(CreditEntry.account_id == account_id)
        .order_by(CreditEntry.id.desc()).offset(max(0, page - 1) * size).limit(size)
    ))
    return rows, total


def ledger_csv_rows(session: Session, account_id: str) -> Any:
    yield "id,created_at,kind,amount,balance_after,step,note\n"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = (CreditEntry.id, CreditEntry.created_at, CreditEntry.kind, CreditEntry.amount,
               CreditEntry.balance_after, CreditEntry.step, CreditEntry.note)
    for entry_id, created_at, kind, amount, after, step, note in session.execute(
        select(*columns).where(CreditEntry.account_id == account_id)
        .order_by(CreditEntry.id).execution_options(yield_per=5000)
    ):
        writer.writerow([entry_id, created_at.isoformat(), kind, amount, after,
                         "" if step is None else step, note or ""])
        if out.tell() > 256 * 1024:
            yield out.getvalue()
            out.seek(0)
            out.truncate()
    yield out.getvalue()


# --- cases ---------------------------------------------------------------------------------


@dataclass
class CaseQuery:
    state: str | None = None
    customer: str | None = None
    invoice: str | None = None
    sms_paused: bool | None = None
    page: int = 1

    def check(self) -> CaseQuery:
        if self.state and self.state not in CASE_STATES:
            raise InputError("state", f"must be one of {', '.join(CASE_STATES)}")
        for name in ("customer", "invoice"):
            value = getattr(self, name)
            if value and len(value) > 128:
                raise InputError(name, "at most 128 characters")
        return self


def search_cases(session: Session, account_id: str, query: CaseQuery, size: int = PAGE_SIZE
                 ) -> tuple[list[tuple[Case, bool]], int]:
    """Cases of the account, newest first, with whether each waits for credits (SmsPaused:
    in the waiters queue and not yet served)."""
    waiting = (select(SmsWaiter.workflow_id)
               .where(SmsWaiter.account_id == account_id, SmsWaiter.credits_granted == 0))
    where = [Case.account_id == account_id]
    if query.state:
        where.append(Case.state == query.state)
    if query.customer:
        where.append(Case.customer_id == query.customer)
    if query.invoice:
        where.append(Case.invoice_id == query.invoice)
    if query.sms_paused is True:
        where.append(Case.workflow_id.in_(waiting))
    elif query.sms_paused is False:
        where.append(Case.workflow_id.not_in(waiting))
    total = int(session.scalar(select(func.count()).select_from(Case).where(*where)) or 0)
    rows = list(session.scalars(
        select(Case).where(*where).order_by(Case.started_at.desc(), Case.workflow_id)
        .offset(max(0, query.page - 1) * size).limit(size)
    ))
    paused = set(session.scalars(
        waiting.where(SmsWaiter.workflow_id.in_([c.workflow_id for c in rows]))
    )) if rows else set()
    return [(c, c.workflow_id in paused) for c in rows], total


def case_row(session: Session, account_id: str, invoice_id: str) -> Case | None:
    return session.scalar(select(Case).where(Case.account_id == account_id,
                                             Case.invoice_id == invoice_id))


def recoveries_by_step(session: Session, account_id: str) -> list[dict[str, Any]]:
    """Recovered cases by the last step that reached the customer (a sent reminder, any
    channel) before they paid; step 0: paid before any reminder went out."""
    last_sent = (select(Message.workflow_id, func.max(Message.step).label("step"))
                 .where(Message.account_id == account_id, Message.status == "sent")
                 .group_by(Message.workflow_id).subquery())
    rows = session.execute(
        select(last_sent.c.step, Case.currency, func.count(), func.sum(Case.recovered_amount))
        .select_from(Case).outerjoin(last_sent, last_sent.c.workflow_id == Case.workflow_id)
        .where(Case.account_id == account_id, Case.state == "recovered")
        .group_by(last_sent.c.step, Case.currency))
    steps: dict[int, dict[str, Any]] = {}
    for raw_step, currency, count, amount in rows:
        step = int(raw_step or 0)
        entry = steps.setdefault(step, {"step": step, "count": 0, "amounts": {}})
        entry["count"] += int(count)
        entry["amounts"][currency] = entry["amounts"].get(currency, 0) + int(amount or 0)
    return [steps[k] for k in sorted(steps)]


# --- compliance ---------------------------------------------------------------------------------


def consent_history(session: Session, account_id: str, page: int, size: int = PAGE_SIZE
                    ) -> tuple[list[dict[str, Any]], int]:
    total = int(session.scalar(select(func.count()).select_from(ConsentEvent)
                               .where(ConsentEvent.account_id == account_id)) or 0)
    rows = session.scalars(
        select(ConsentEvent).where(ConsentEvent.account_id == account_id)
        .order_by(ConsentEvent.id.desc()).offset(max(0, page - 1) * size).limit(size))
    return [{"phone": mask_phone(r.phone_e164), "action": r.action, "source": r.source,
             "keyword": r.keyword, "at": r.created_at} for r in rows], total


def set_quiet_hours(session: Session, ident: Identity, window: str, timezone: str | None
                    ) -> None:
    require_change(ident)
    update_account(session, ident.account_id,
                   AccountOptions(quiet_hours=window, timezone=timezone or None))
    audit.record(session, ident.account_id, ident.actor, "quiet_hours.updated",
                 quiet_hours=window, timezone=timezone or None)


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
