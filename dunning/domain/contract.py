"""Pure domain types shared by the workflow, the activities and the clients.

Nothing here does I/O or reads a clock: the workflow sandbox imports this module, so it must stay
deterministic. Activity inputs and outputs are dataclasses (Temporal's default JSON converter);
the workflow's own argument, query result and result are plain JSON objects so that any SDK or
the `temporal` CLI can use them.

No `from __future__ import annotations` here: the payload converter resolves these dataclasses'
field types on every conversion, and string annotations would be re-evaluated each time.
"""

import itertools
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from temporalio.common import RetryPolicy, SearchAttributeKey

from dunning.domain.money import check_currency, is_currency
from dunning.domain.outbound import CampaignSnapshot, CaseEvent
from dunning.errors import InputError as InputError  # re-exported (its old home)

WORKFLOW_TYPE = "DunningWorkflow"

# Signals and queries (contract names).
SIGNAL_PAYMENT_RECOVERED = "payment_recovered"
SIGNAL_CREDITS_ADDED = "credits_added"
SIGNAL_CANCEL = "cancel"
QUERY_STATUS = "status"

# Activity names: the workflow refers to activities by name so that it never imports I/O code.
ACT_REGISTER_CASE = "register_case"
ACT_SEND_EMAIL = "send_email"
ACT_SEND_SMS = "send_sms"
ACT_RELEASE_SMS = "release_sms"
ACT_FINISH_CASE = "finish_case"
ACT_SETTLE_MESSAGE = "settle_message"

# Compliance replies (HELP answers, STOP confirmations): one small durable workflow per inbound
# message (id `reply-<inbound MessageUUID>`), so a crash of the webhook server loses none and
# Plivo's retry of the same inbound message starts nothing twice.
REPLY_WORKFLOW_TYPE = "ComplianceReplyWorkflow"
ACT_SEND_REPLY = "send_reply"
REPLY_GIVE_UP = timedelta(hours=1)

# Sends: transient provider failures are retried with backoff for up to a day, then given up.
# (The send activities read them too: the last attempt before the give-up ends the row itself.)
SEND_GIVE_UP = timedelta(hours=24)
SEND_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), backoff_coefficient=2.0,
                         maximum_interval=timedelta(minutes=10))

# Search attributes (contract names). No PII ever goes into one.
SA_ACCOUNT_ID = SearchAttributeKey.for_keyword("DunningAccountId")
SA_CUSTOMER_ID = SearchAttributeKey.for_keyword("DunningCustomerId")
SA_STATE = SearchAttributeKey.for_keyword("DunningState")
SA_SMS_PAUSED = SearchAttributeKey.for_bool("SmsPaused")
SEARCH_ATTRIBUTES: tuple[SearchAttributeKey[Any], ...] = (
    SA_ACCOUNT_ID,
    SA_CUSTOMER_ID,
    SA_STATE,
    SA_SMS_PAUSED,
)

ReminderStatus = Literal["sent", "skipped", "failed", "pending"]
Channel = Literal["email", "sms"]

DEFAULT_SCHEDULE = "0d,3d,7d,14d"
DEFAULT_GRACE = "7d"
DEFAULT_QUIET_HOURS = "08:00-21:00"

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,127}$")
_LEGACY_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")  # before the iso-currency patch
_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def is_loopback_host(host: str | None) -> bool:
    """localhost, 127.0.0.0/8 or ::1 (brackets allowed): traffic that never leaves the machine."""
    import ipaddress

    name = (host or "").strip().strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def sms_task_queue(task_queue: str) -> str:
    """SMS sends run on a queue of their own so one rate limit covers every worker."""
    return f"{task_queue}-sms"


WORKFLOW_ID_PREFIX = "dunning"
WORKFLOW_ID_SEPARATOR = ":"  # ids cannot contain it (check_id), so the split is unambiguous


def workflow_id_for(account_id: str, invoice_id: str) -> str:
    """`dunning:<account>:<invoice>`: unambiguous, since no id may contain `:`."""
    return WORKFLOW_ID_SEPARATOR.join((WORKFLOW_ID_PREFIX, account_id, invoice_id))


def legacy_workflow_id_for(account_id: str, invoice_id: str) -> str:
    """The earlier form `dunning-<account>-<invoice>`, ambiguous across accounts (`acme` +
    `corp-inv1` and `acme-corp` + `inv1` are the same id): only for finding old cases, and only
    together with a check of the case's account (its `DunningAccountId`)."""
    return f"dunning-{account_id}-{invoice_id}"


def parse_workflow_id(workflow_id: str) -> tuple[str, str] | None:
    """(account, invoice) of a `dunning:<account>:<invoice>` id; None for any other id (the
    legacy form cannot be split reliably)."""
    parts = workflow_id.split(WORKFLOW_ID_SEPARATOR)
    if len(parts) != 3 or parts[0] != WORKFLOW_ID_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


_EMAIL_ID_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
_ID_SEPARATORS_RE = re.compile(r"[\s_.()+\-]")
_PHONE_ID_RE = re.compile(r"^\d{10,15}$")


def personal_data_in_id(value: str) -> str | None:
    """'an email address' or 'a phone number' when the id is one, else None. Ids travel
    unencrypted (workflow ids, search attributes, the UI's list, email Message-IDs, logs), so
    they must be the billing system's own ids, never contact details. A phone number here is an
    id of 10 to 15 digits, separators aside (`14155550123`, `+1 415-555-0123`,
    `07700900123`)."""
    if _EMAIL_ID_RE.match(value):
        return "an email address"
    if _PHONE_ID_RE.match(_ID_SEPARATORS_RE.sub("", value)):
        return "a phone number"
    return None


def check_id(field_name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InputError(field_name, "required, a non-empty string")
    pii = personal_data_in_id(value)
    if pii is not None:
        raise InputError(
            field_name,
            f"looks like {pii}; ids are not encrypted (workflow ids, search attributes, logs) "
            "and must not hold personal data: use the billing system's id",
        )
    if not _ID_RE.match(value):
        raise InputError(
            field_name,
            "may hold only letters, digits and _ . @ - (at most 128 characters)",
        )
    return value


# --- durations and schedules ---------------------------------------------------------------


def parse_duration(text: str, field_name: str = "duration") -> int:
    """`<int><s|m|h|d>` -> seconds."""
    m = _DURATION_RE.match(text or "")
    if not m:
        raise InputError(field_name, f"{text!r} is not a duration like 30s, 15m, 12h or 3d")
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def format_duration(seconds: int) -> str:
    if seconds == 0:
        return "0d"
    for unit in ("d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_schedule(text: str) -> list[int]:
    """`0d,3d,7d,14d` -> offsets in seconds, strictly increasing."""
    parts = [p for p in (text or "").split(",") if p.strip()]
    if not parts:
        raise InputError("schedule", "needs at least one offset, e.g. 0d,3d,7d,14d")
    offsets = [parse_duration(p, "schedule") for p in parts]
    for a, b in itertools.pairwise(offsets):
        if b < a:
            raise InputError("schedule", "offsets must be in increasing order")
    if len(offsets) > 50:
        raise InputError("schedule", "at most 50 reminder steps")
    return offsets


def format_schedule(offsets: list[int]) -> str:
    return ",".join(format_duration(o) for o in offsets)


_QUIET_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


def parse_quiet_hours(text: str) -> str:
    """`HH:MM-HH:MM` (the window in which SMS may be sent) or `off`."""
    value = (text or "").strip().lower()
    if value == "off":
        return "off"
    if not _QUIET_RE.match(value):
        raise InputError("quiet-hours", f"{text!r} is not HH:MM-HH:MM (e.g. 08:00-21:00) or off")
    start, end = value.split("-")
    if start == end:
        raise InputError("quiet-hours", "the sending window must not be empty")
    return value


# --- the workflow argument -----------------------------------------------------------------


@dataclass(frozen=True)
class CaseInput:
    """One failed invoice: the workflow's argument, parsed. The client's `CaseRequest` is this
    same type; `as_input()` gives the JSON object the workflow takes."""

    account_id: str
    customer_id: str
    invoice_id: str
    amount_due: int
    currency: str
    billing_link: str
    failed_at: datetime | None = None
    customer_email: str | None = None
    customer_name: str | None = None
    plan: str | None = None
    decline_code: str | None = None  # Stripe's last_payment_error.decline_code, lower case

    def as_input(self) -> dict[str, Any]:
        """The workflow's JSON argument (fields left out when None; `failed_at` as RFC 3339)."""
        data = {k: v for k, v in asdict(self).items() if v is not None}
        if self.failed_at is not None:
            data["failed_at"] = self.failed_at.isoformat()
        return data


MAX_AMOUNT_DUE = 10**12  # minor units: 10 billion in a two-decimal currency
_REQUIRED = ("account_id", "customer_id", "invoice_id", "amount_due", "currency", "billing_link")
_OPTIONAL = ("failed_at", "customer_email", "customer_name", "plan", "decline_code")
_DECLINE_RE = re.compile(r"^[a-z0-9_]{1,64}$")
# An email address as every input path checks it (case input, accounts, customers): the one rule.
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def check_billing_link(link: object) -> str:
    """An absolute URL the customer pays at: `https`, or `http` to a loopback host only (a
    local test), never anything a network in between could read or rewrite."""
    if (
        not isinstance(link, str)
        or not re.match(r"^https?://[^\s/$.?#][^\s]*$", link)
        or len(link) > 2000
    ):
        raise InputError("billing_link", "must be an https URL")
    host = billing_link_host(link)
    if host is None:
        raise InputError("billing_link", "must be an https URL with a host")
    if link[:5].lower() != "https" and not is_loopback_host(host):
        raise InputError(
            "billing_link", "must be https (plain http only for 127.0.0.1, localhost or ::1)"
        )
    return link


def billing_link_host(link: str) -> str | None:
    from urllib.parse import urlsplit

    try:
        host = urlsplit(link).hostname
    except ValueError:
        return None
    return host.lower().rstrip(".") if host else None


_LABEL = r"[a-z0-9]([a-z0-9\-]{0,61}[a-z0-9])?"
_HOST_RE = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")


def parse_link_hosts(text: str) -> list[str]:
    """`pay.acme.com,*.acme.com` -> hosts a billing link may point at (`*.` for any
    subdomain); '' or `any` -> [] (no restriction)."""
    value = (text or "").strip().lower()
    if value in ("", "any"):
        return []
    hosts = [h.strip().rstrip(".") for h in value.split(",") if h.strip()]
    for host in hosts:
        if not _HOST_RE.match(host) or len(host) > 253:
            raise InputError("billing-link-hosts", f"{host!r} is not a host name like "
                             "pay.example.com or *.example.com")
    if len(hosts) > 20:
        raise InputError("billing-link-hosts", "at most 20 hosts")
    return hosts


def is_link_host_allowed(link: str, hosts: list[str]) -> bool:
    """True when there is no restriction, or the link's host is one of `hosts` (`*.d` covers
    every subdomain of d)."""
    if not hosts:
        return True
    host = billing_link_host(link)
    if host is None:
        return False
    return any(
        host == allowed or (allowed.startswith("*.") and host.endswith(allowed[1:]))
        for allowed in hosts
    )


def parse_rfc3339(field_name: str, value: object) -> datetime:
    if not isinstance(value, str):
        raise InputError(field_name, "must be an RFC 3339 timestamp string")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(
            field_name, f"{value!r} is not an RFC 3339 timestamp like 2026-01-31T09:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        raise InputError(field_name, "needs a time zone offset, e.g. Z or +02:00")
    return parsed


def currency_rules_agree(raw: object) -> bool:
    """Whether the input's currency fares the same under both rules (three capitals before the
    `iso-currency` patch, ISO 4217 in any case after it): an upper-case ISO 4217 code. Only
    when they disagree does the workflow need to ask `workflow.patched` which rule applies, so
    the common case records no patch marker."""
    value = raw.get("currency") if isinstance(raw, dict) else None
    return (isinstance(value, str) and _LEGACY_CURRENCY_RE.match(value) is not None
            and is_currency(value))


def parse_case_input(raw: object, *, iso_currency: bool = True) -> CaseInput:
    """Validate the workflow's JSON argument; InputError names the first bad field.

    The currency is accepted in any case, returned upper case and must be an ISO 4217 code
    (`dunning.domain.money.check_currency`). `iso_currency=False` is the rule cases started
    before the `iso-currency` patch were checked with (three capitals), for their replay."""
    if not isinstance(raw, dict):
        raise InputError("input", "must be one JSON object")
    missing = [k for k in _REQUIRED if raw.get(k) in (None, "")]
    if missing:
        raise InputError(missing[0], "is required")
    unknown = sorted(set(raw) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise InputError(unknown[0], "is not a known field")
    account_id = check_id("account_id", raw["account_id"])
    customer_id = check_id("customer_id", raw["customer_id"])
    invoice_id = check_id("invoice_id", raw["invoice_id"])
    amount = raw["amount_due"]
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InputError("amount_due", "must be an integer number of minor units (e.g. 4900)")
    if amount <= 0:
        raise InputError("amount_due", "must be greater than zero")
    if amount > MAX_AMOUNT_DUE:
        raise InputError("amount_due", f"must be at most {MAX_AMOUNT_DUE} minor units")
    currency = raw["currency"]
    if iso_currency:
        currency = check_currency("currency", currency)
    elif not isinstance(currency, str) or not _LEGACY_CURRENCY_RE.match(currency):
        raise InputError("currency", "must be an ISO 4217 code in capitals, e.g. USD")
    link = check_billing_link(raw["billing_link"])
    failed_at = parse_rfc3339("failed_at", raw["failed_at"]) if raw.get("failed_at") else None
    email = raw.get("customer_email") or None
    if email is not None and (not isinstance(email, str) or not EMAIL_RE.match(email)):
        raise InputError("customer_email", "is not an email address")
    name = raw.get("customer_name") or None
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise InputError("customer_name", "must be a string of at most 200 characters")
    plan = raw.get("plan") or None
    if plan is not None and (not isinstance(plan, str) or len(plan) > 100):
        raise InputError("plan", "must be a string of at most 100 characters")
    decline = raw.get("decline_code") or None
    if decline is not None:
        decline = check_decline_code(decline)
    return CaseInput(
        account_id=account_id,
        customer_id=customer_id,
        invoice_id=invoice_id,
        amount_due=amount,
        currency=currency,
        billing_link=link,
        failed_at=failed_at,
        customer_email=email,
        customer_name=name,
        plan=plan,
        decline_code=decline,
    )


def check_decline_code(value: object) -> str:
    """A Stripe decline code (`insufficient_funds`, `expired_card`, ...), lower case."""
    if not isinstance(value, str) or not _DECLINE_RE.match(value.strip().lower()):
        raise InputError("decline_code", "must be a decline code such as insufficient_funds "
                                         "(letters, digits and _, at most 64)")
    return value.strip().lower()


# --- activity inputs and outputs ----------------------------------------------------------


@dataclass
class RegisterCaseRequest:
    workflow_id: str
    account_id: str
    customer_id: str
    invoice_id: str
    amount_due: int
    currency: str
    failed_at: datetime
    customer_email: str | None = None
    customer_name: str | None = None
    plan: str | None = None
    billing_link: str | None = None  # checked against the account's --billing-link-hosts
    # Patch `batched-bookkeeping`: also take the campaign snapshot (CasePlan.campaign), in the
    # same local activity and transaction.
    with_campaign: bool = False


@dataclass
class CasePlan:
    """What the workflow needs to know up front: the schedule. Everything else is read when due."""

    offsets: list[int]
    grace_seconds: int
    error: str | None = None  # e.g. unknown account: fails the workflow without retries
    arm: str | None = None  # SMS holdout experiment: "sms" | "holdout"; None: no experiment
    sms_variant: str | None = None  # SMS template A/B test: "A" | "B"; None: no test
    campaign: CampaignSnapshot | None = None  # asked with RegisterCaseRequest.with_campaign


@dataclass
class MessageRequest:
    """One reminder on one channel. Contact details are looked up by the activity, never passed."""

    workflow_id: str
    account_id: str
    customer_id: str
    invoice_id: str
    step: int  # 1-based
    step_count: int
    amount_due: int
    currency: str
    billing_link: str
    failed_at: datetime
    now: datetime  # workflow time when the step is handled (quiet hours, days overdue)
    plan: str | None = None
    decline_code: str | None = None  # template variable and selector


MessageOutcome = Literal["sent", "skipped", "failed", "no_credits", "quiet_hours"]


@dataclass
class MessageResult:
    status: MessageOutcome
    reason: str = ""
    credits: int = 0
    retry_at: datetime | None = None  # quiet hours: when the window opens


@dataclass
class ReleaseRequest:
    workflow_id: str
    step: int
    reason: str


@dataclass
class ReplyRequest:
    """A compliance reply to send: its `messages` row (what and to whom is in the database)."""

    message_id: int


def reply_workflow_id(inbound_uuid: str) -> str:
    return f"reply-{inbound_uuid}"


@dataclass
class SettleRequest:
    """A send interrupted by the end of the case: what the message log says happened."""

    workflow_id: str
    step: int
    channel: str
    reason: str


@dataclass
class FinishCaseRequest:
    workflow_id: str
    account_id: str
    outcome: str
    emails_sent: int
    sms_sent: int
    credits_spent: int
    ended_at: datetime
    recovered_amount: int = 0
    last_channel: str | None = None
    # The case's last events (patch `batched-bookkeeping`): recorded with the case's end, in its
    # transaction, after every event the flusher recorded before them.
    events: list[CaseEvent] = field(default_factory=list)


@dataclass
class Reminder:
    step: int
    channel: Channel
    status: ReminderStatus
    reason: str = ""
    due_at: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "channel": self.channel,
            "status": self.status,
            "reason": self.reason,
            "due_at": self.due_at,
        }
