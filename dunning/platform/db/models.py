"""SQLAlchemy 2.0 typed models. The schema itself is owned by the Alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class Account(Base):
    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint("credit_balance >= 0", name="ck_accounts_balance_nonnegative"),
    )

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    company_name: Mapped[str] = mapped_column(String(200))
    sms_sender: Mapped[str | None] = mapped_column(String(32), index=True)
    email_from: Mapped[str | None] = mapped_column(String(320))
    contact_email: Mapped[str | None] = mapped_column(String(320))
    support_contact: Mapped[str | None] = mapped_column(String(200))
    schedule: Mapped[str] = mapped_column(String(400), default="0d,3d,7d,14d")
    grace_seconds: Mapped[int] = mapped_column(Integer, default=7 * 86400)
    quiet_hours: Mapped[str] = mapped_column(String(16), default="08:00-21:00")
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    sms_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # {"1": true, "3": false}: per-step switches; a step not listed follows sms_enabled.
    sms_steps: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    credit_balance: Mapped[int] = mapped_column(BigInteger, default=0)
    auto_refill_threshold: Mapped[int | None] = mapped_column(BigInteger)
    auto_refill_amount: Mapped[int | None] = mapped_column(BigInteger)
    # simulated | stripe; Stripe customer and saved payment method for off-session refills
    refill_gateway: Mapped[str] = mapped_column(
        String(16), default="simulated", server_default="simulated"
    )
    stripe_customer_id: Mapped[str | None] = mapped_column(String(100))
    stripe_payment_method: Mapped[str | None] = mapped_column(String(100))
    # Display price of one credit in minor units of credit_currency (e.g. 1 = $0.01).
    credit_price_minor: Mapped[int | None] = mapped_column(Integer)
    credit_currency: Mapped[str | None] = mapped_column(String(3))
    # low | zero | None: the last balance notice sent, so each crossing notifies once.
    balance_notice: Mapped[str | None] = mapped_column(String(8))
    # Signing secret of the account's Stripe webhook endpoint (billing-source events).
    # Encrypted at rest (dunning.platform.secret_box: `enc:v1:<key id>:<data>`).
    stripe_webhook_secret: Mapped[str | None] = mapped_column(String(512))
    # Hosts billing links may point at (`pay.acme.com,*.acme.com`); NULL: any https host.
    billing_link_hosts: Mapped[str | None] = mapped_column(String(1000))
    # BCP 47 locale of customers without one of their own (and of templates set without one).
    locale: Mapped[str] = mapped_column(String(35), default="en", server_default="en")
    # {billing_link} becomes a tracked short link on DUNNING_PUBLIC_URL.
    track_links: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")
    # SMS holdout experiment: this share (percent) of new cases gets email only; None: off.
    sms_holdout_percent: Mapped[int | None] = mapped_column(Integer)
    # SMS A/B test: this share (percent) of new cases gets template B instead; None: off.
    sms_ab_template: Mapped[str | None] = mapped_column(Text)
    sms_ab_percent: Mapped[int | None] = mapped_column(Integer)
    # End of dunning: none | cancel-subscription | mark-uncollectible | pause-collection.
    on_exhausted: Mapped[str] = mapped_column(String(24), default="none", server_default="none")
    # Ask Stripe to pay open invoices as soon as the customer's card changes.
    charge_on_card_update: Mapped[bool] = mapped_column(
        Boolean, default=True, server_default=true()
    )
    # One conversation per customer: emails (and, separately, SMS) per rolling day across the
    # customer's cases; 0: no limit.
    daily_message_limit: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    def sms_step_on(self, step: int) -> bool:
        if not self.sms_enabled:
            return False
        return bool((self.sms_steps or {}).get(str(step), True))


class SmsTemplate(Base):
    """SMS template per account, plan ('' = default), step (0 = every step) and locale
    ('' = the account's default locale)."""

    __tablename__ = "sms_templates"

    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    plan: Mapped[str] = mapped_column(String(100), primary_key=True, default="")
    step: Mapped[int] = mapped_column(Integer, primary_key=True, default=0)
    locale: Mapped[str] = mapped_column(String(35), primary_key=True, default="")
    body: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class EmailTemplate(Base):
    """Email subject and body per account, step (0 = every step), plan ('' = default) and
    locale ('' = the account's default locale); `html` None: built from the text body."""

    __tablename__ = "email_templates"

    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[int] = mapped_column(Integer, primary_key=True, default=0)
    plan: Mapped[str] = mapped_column(String(100), primary_key=True, default="")
    locale: Mapped[str] = mapped_column(String(35), primary_key=True, default="")
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Customer(Base):
    __tablename__ = "customers"

    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    phone_e164: Mapped[str | None] = mapped_column(String(20), index=True)
    phone_region: Mapped[str | None] = mapped_column(String(2))
    phone_type: Mapped[str | None] = mapped_column(String(32))
    phone_time_zones: Mapped[str | None] = mapped_column(String(400))  # comma-separated IANA
    plan: Mapped[str | None] = mapped_column(String(100))
    locale: Mapped[str | None] = mapped_column(String(35))  # BCP 47, e.g. pt-BR
    source: Mapped[str | None] = mapped_column(String(32))  # import | stripe | case
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # Operator controls (dunning.customers.conversation): reminders paused (until a time, or
    # until resumed), or the customer excluded from dunning (no case runs).
    paused: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    paused_until: Mapped[datetime | None] = mapped_column()
    excluded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class OptOut(Base):
    """Current SMS consent state of a number for an account (absent row: not opted out)."""

    __tablename__ = "opt_outs"

    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    phone_e164: Mapped[str] = mapped_column(String(20), primary_key=True)
    opted_out: Mapped[bool] = mapped_column(Boolean, default=True)
    source: Mapped[str] = mapped_column(String(64))
    keyword: Mapped[str | None] = mapped_column(String(32))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)


class ConsentEvent(Base):
    """Append-only history of opt-outs and opt-ins, with time and source."""

    __tablename__ = "consent_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(128), index=True)
    phone_e164: Mapped[str] = mapped_column(String(20))
    action: Mapped[str] = mapped_column(String(16))  # opt_out | opt_in
    source: Mapped[str] = mapped_column(String(64))
    keyword: Mapped[str | None] = mapped_column(String(32))
    provider_message_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CreditEntry(Base):
    """Append-only credit ledger. The account's balance always equals the sum of `amount`."""

    __tablename__ = "credit_ledger"
    __table_args__ = (
        # A top-up's idempotency key: at most one entry per (account, key); NULL for the rest.
        Index("uq_credit_ledger_idempotency", "account_id", "idempotency_key", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))  # topup | sms_debit | refund | refill
    amount: Mapped[int] = mapped_column(BigInteger)
    balance_after: Mapped[int] = mapped_column(BigInteger)
    workflow_id: Mapped[str | None] = mapped_column(String(300))
    step: Mapped[int | None] = mapped_column(Integer)
    message_id: Mapped[int | None] = mapped_column(Integer)
    note: Mapped[str | None] = mapped_column(String(400))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Message(Base):
    """Every reminder the engine tried to send. Also the idempotency record for sends."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("workflow_id", "run_id", "step", "channel", name="uq_messages_case_step"),
        Index("ix_messages_account_created", "account_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workflow_id: Mapped[str] = mapped_column(String(300))
    run_id: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer)
    channel: Mapped[str] = mapped_column(String(8))
    account_id: Mapped[str] = mapped_column(String(128))
    customer_id: Mapped[str] = mapped_column(String(128))
    # dunning.messages.log.MessageStatus; only that module writes it (see its docstring)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(400))
    provider_id: Mapped[str | None] = mapped_column(String(64), index=True)
    recipient_hint: Mapped[str | None] = mapped_column(String(32))  # masked, never the full value
    credits: Mapped[int] = mapped_column(Integer, default=0)
    segments: Mapped[int] = mapped_column(Integer, default=0)
    encoding: Mapped[str | None] = mapped_column(String(8))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Sent again after a send whose answer was lost (not at the provider, or an email resent
    # under the same Message-ID): bounded, see dunning.messages.log.unclaim.
    resends: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    delivery_status: Mapped[str | None] = mapped_column(String(16))
    delivery_error: Mapped[str | None] = mapped_column(String(16))
    delivery_sequence: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ComplianceReply(Base):
    """What a compliance reply (HELP answer, STOP confirmation) sends: kept with its `messages`
    row so the durable reply workflow (workflows/reply.py) finds it without PII in Temporal."""

    __tablename__ = "compliance_replies"

    message_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    src: Mapped[str] = mapped_column(String(32))
    dst: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text)


class SmsWaiter(Base):
    """A case whose SMS lane is paused for credits; top-ups serve these in `since` order.

    A wake grants credits to the waiters the balance covers (debited at once, in the ledger):
    `credits_granted` > 0 marks a waiter whose credits are set aside and whose next send uses
    them without reserving again; it leaves the queue when it does (or gets them back)."""

    __tablename__ = "sms_waiters"
    # The queue of an account: still waiting (credits_granted = 0) in `since` order, or served.
    __table_args__ = (
        Index("ix_sms_waiters_queue", "account_id", "credits_granted", "since"),
    )

    account_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(300), primary_key=True)
    credits_needed: Mapped[int] = mapped_column(Integer, default=1)
    since: Mapped[datetime] = mapped_column(default=utcnow)
    step: Mapped[int | None] = mapped_column(Integer)
    credits_granted: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    granted_at: Mapped[datetime | None] = mapped_column()


class SendSlot(Base):
    """The provider's send pace, shared by every worker: the earliest time (epoch seconds, on
    the database's clock for PostgreSQL) the next send of `key` may start (see
    dunning.messages.pacing)."""

    __tablename__ = "send_slots"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    next_at: Mapped[float] = mapped_column(Float)


class Case(Base):
    """One dunning case (one workflow), kept for reports and for the CLI."""

    __tablename__ = "cases"

    workflow_id: Mapped[str] = mapped_column(String(300), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(128), index=True)
    customer_id: Mapped[str] = mapped_column(String(128))
    invoice_id: Mapped[str] = mapped_column(String(128))
    amount_due: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    state: Mapped[str] = mapped_column(String(16), default="active")
    failed_at: Mapped[datetime] = mapped_column()
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column()
    emails_sent: Mapped[int] = mapped_column(Integer, default=0)
    sms_sent: Mapped[int] = mapped_column(Integer, default=0)
    credits_spent: Mapped[int] = mapped_column(Integer, default=0)
    recovered_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    last_channel: Mapped[str | None] = mapped_column(String(8))
    # SMS holdout experiment arm: "sms" or "holdout" (email only); None: no experiment ran.
    arm: Mapped[str | None] = mapped_column(String(16))
    # SMS A/B test variant: "A" (the usual template) or "B"; None: no test ran.
    sms_variant: Mapped[str | None] = mapped_column(String(8))


class ShortLink(Base):
    """A tracked billing link: `/l/<token>` redirects to `target`. No PII in the token."""

    __tablename__ = "short_links"
    __table_args__ = (
        UniqueConstraint("workflow_id", "step", "channel", name="uq_short_links_case_step"),
    )

    token: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(128))
    workflow_id: Mapped[str] = mapped_column(String(300))
    step: Mapped[int] = mapped_column(Integer)
    channel: Mapped[str] = mapped_column(String(8))
    target: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LinkClick(Base):
    """One click on a short link."""

    __tablename__ = "link_clicks"
    __table_args__ = (Index("ix_link_clicks_account", "account_id", "workflow_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token: Mapped[str] = mapped_column(String(40))
    account_id: Mapped[str] = mapped_column(String(128))
    workflow_id: Mapped[str] = mapped_column(String(300))
    step: Mapped[int] = mapped_column(Integer)
    channel: Mapped[str] = mapped_column(String(8))
    clicked_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProcessedEvent(Base):
    """Webhook deliveries already handled (idempotency for provider and billing events)."""

    __tablename__ = "processed_events"

    source: Mapped[str] = mapped_column(String(32), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SmsRate(Base):
    """Credits per SMS segment for a destination region; region '*' is the account default."""

    __tablename__ = "sms_rates"

    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    region: Mapped[str] = mapped_column(String(2), primary_key=True)
    credits_per_segment: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Refill(Base):
    """One auto-refill attempt through a payment gateway (at most one in flight per account)."""

    __tablename__ = "refills"
    __table_args__ = (Index("ix_refills_account_status", "account_id", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    amount: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))  # pending | succeeded | failed
    gateway: Mapped[str] = mapped_column(String(16))
    idempotency_key: Mapped[str] = mapped_column(String(100), unique=True)
    gateway_ref: Mapped[str | None] = mapped_column(String(100))
    error: Mapped[str | None] = mapped_column(String(400))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


# --- outbound events (dunning.events) ------------------------------------------------------


class WebhookEndpoint(Base):
    """An account's receiver of outbound events (Standard Webhooks). `event_types` None: all."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    url: Mapped[str] = mapped_column(String(2000))
    secret: Mapped[str] = mapped_column(String(200))  # whsec_<base64>
    event_types: Mapped[list[str] | None] = mapped_column(JSON)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(400))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


# --- the operator console and HTTP API (revision 0006_console) ------------------------------


class ConsoleUser(Base):
    """A person who signs in to the console: one account, one role, an argon2 password hash."""

    __tablename__ = "console_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # stored lower case
    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(16))  # admin | operator | viewer
    password_hash: Mapped[str] = mapped_column(String(200))
    failed_logins: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locked_until: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class OutboxEvent(Base):
    """One event, recorded with the change that caused it. `seq` orders them; `dedupe_key` makes
    recording idempotent (a retried activity records the same event once)."""

    __tablename__ = "outbox_events"
    __table_args__ = (Index("ix_outbox_events_account_seq", "account_id", "seq"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(40), unique=True)
    dedupe_key: Mapped[str | None] = mapped_column(String(400), unique=True)
    account_id: Mapped[str] = mapped_column(String(128))
    case_id: Mapped[str | None] = mapped_column(String(300), index=True)
    type: Mapped[str] = mapped_column(String(40))
    occurred_at: Mapped[datetime] = mapped_column()
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class EventDelivery(Base):
    """One event owed to one endpoint: pending until delivered (or failed/canceled)."""

    __tablename__ = "event_deliveries"
    __table_args__ = (Index("ix_event_deliveries_endpoint_status", "endpoint_id", "status", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_seq: Mapped[int] = mapped_column(
        ForeignKey("outbox_events.seq", ondelete="CASCADE"), index=True
    )
    endpoint_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(400))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column()


class DeliveryAttempt(Base):
    """Every HTTP attempt at a delivery, its answer or error."""

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("event_deliveries.id", ondelete="CASCADE"), index=True
    )
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(400))
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)


class CaseAction(Base):
    """An end-of-dunning action taken through the billing system (exactly once per case)."""

    __tablename__ = "case_actions"
    __table_args__ = (UniqueConstraint("workflow_id", "action", name="uq_case_actions_case"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workflow_id: Mapped[str] = mapped_column(String(300), index=True)
    account_id: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # pending | done | failed
    idempotency_key: Mapped[str] = mapped_column(String(200))
    stripe_ref: Mapped[str | None] = mapped_column(String(100))
    error: Mapped[str | None] = mapped_column(String(400))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ChargeAttempt(Base):
    """A payment of an open invoice asked of Stripe because the customer's card changed; one per
    (invoice, Stripe event), keyed for idempotency."""

    __tablename__ = "charge_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(128), index=True)
    workflow_id: Mapped[str] = mapped_column(String(300), index=True)
    invoice_id: Mapped[str] = mapped_column(String(128))
    trigger_event: Mapped[str] = mapped_column(String(200))
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(16))  # pending | paid | declined | failed
    decline_code: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(String(400))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Campaign(Base):
    """A plan's dunning campaign: its own schedule, grace, SMS steps and end action. A case
    takes its plan's campaign as it is when the case starts (a snapshot in its history)."""

    __tablename__ = "campaigns"

    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    plan: Mapped[str] = mapped_column(String(128), primary_key=True)
    schedule: Mapped[str] = mapped_column(String(400))
    grace_seconds: Mapped[int] = mapped_column(Integer)
    sms_steps: Mapped[list[int] | None] = mapped_column(JSON)  # None: the account's switches
    on_exhausted: Mapped[str | None] = mapped_column(String(24))  # None: the account's
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ConsoleSession(Base):
    """A signed-in browser: the cookie carries the token, the table only its SHA-256."""

    __tablename__ = "console_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("console_users.id", ondelete="CASCADE"), index=True
    )
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()


class ApiKey(Base):
    """A per-account API key. The secret is shown once; only its SHA-256 is kept."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # the key's public prefix
    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    secret_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()


class AuditEntry(Base):
    """Who changed what, when: every change made through the console, the API or `users`."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_account_id_id", "account_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(128))
    actor: Mapped[str] = mapped_column(String(400))  # user:<email> | api-key:<id> | cli
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiIdempotencyKey(Base):
    """The first answer to a request with an `Idempotency-Key`, replayed for repeats."""

    __tablename__ = "api_idempotency_keys"

    account_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    operation: Mapped[str] = mapped_column(String(64))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
