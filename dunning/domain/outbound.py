"""Names and DTOs of outbound-event delivery, shared by workflows and activities. Pure (the
workflow sandbox imports it); no `from __future__ import annotations` (see contract.py)."""

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

EVENTS_WORKFLOW_TYPE = "EventDeliveryWorkflow"
SIGNAL_EVENTS_PENDING = "events_pending"

ACT_RECORD_EVENTS = "record_events"
ACT_DRAIN_ENDPOINT = "drain_endpoint"
ACT_DISABLE_ENDPOINT = "disable_endpoint"


def delivery_workflow_id(endpoint_id: str) -> str:
    return f"events:{endpoint_id}"


@dataclass
class DeliveryInput:
    endpoint_id: str
    give_up_seconds: int = 3 * 86400  # sustained failure this long disables the endpoint
    max_backoff_seconds: int = 3600
    idle_seconds: int = 300  # the workflow ends after this long with nothing to deliver


@dataclass
class DrainRequest:
    endpoint_id: str


@dataclass
class DrainResult:
    delivered: int
    more: bool
    enabled: bool


@dataclass
class DisableRequest:
    endpoint_id: str
    reason: str


@dataclass
class CaseEvent:
    """One event a case emits; `key` is unique within the case run (idempotent recording)."""

    key: str
    type: str
    occurred_at: datetime
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecordEventsRequest:
    workflow_id: str
    run_id: str
    account_id: str
    events: list[CaseEvent]


_EMAIL_RE = re.compile(r"[^\s@<>()\"']+@[^\s@<>()\"']+")
_PHONE_RE = re.compile(r"\+?\d[\d\s().\-]{6,}\d")


def scrub(text: str, limit: int = 200) -> str:
    """A reason as it may appear in an event: no email address or phone number, bounded."""
    return _PHONE_RE.sub("[number]", _EMAIL_RE.sub("[email]", text or ""))[:limit]


# --- end-of-dunning actions (dunning.cases.end_actions) -------------------------------------

ACT_END_ACTION = "end_action"


@dataclass
class EndActionRequest:
    workflow_id: str
    account_id: str
    invoice_id: str
    action: str | None = None  # None: the account's setting when the case ends


@dataclass
class EndActionResult:
    action: str
    status: str  # none | done | failed
    stripe_ref: str | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"action": self.action, "status": self.status, "stripe_ref": self.stripe_ref,
                "error": self.error}


# --- campaigns (dunning.cases.campaigns) --------------------------------------------------------

ACT_CAMPAIGN_FOR_CASE = "campaign_for_case"


@dataclass
class CampaignRequest:
    account_id: str
    customer_id: str
    plan: str | None


@dataclass
class CampaignSnapshot:
    """The plan's campaign when the case started; `found` False: the account's schedule."""

    found: bool
    plan: str = ""
    offsets: list[int] = field(default_factory=list)
    grace_seconds: int = 0
    sms_steps: list[int] | None = None  # None: the account's switches
    on_exhausted: str | None = None  # None: the account's setting when the case ends
    excluded: bool = False  # the operator excluded the customer: the case ends at once

    def as_json(self) -> dict[str, Any]:
        return {"plan": self.plan, "offsets": self.offsets, "grace_seconds": self.grace_seconds,
                "sms_steps": self.sms_steps, "on_exhausted": self.on_exhausted}
