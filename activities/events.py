"""Activities of outbound events: recording a case's events (a local activity of
DunningWorkflow) and delivering an endpoint's events (EventDeliveryWorkflow). Thin: the logic
lives in dunning.events."""

from __future__ import annotations

import logging
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from dunning.cases.billing import BillingUnavailable, StripeBilling
from dunning.cases.campaigns import case_snapshot
from dunning.cases.end_actions import EndActions
from dunning.domain.outbound import (
    ACT_CAMPAIGN_FOR_CASE,
    ACT_DISABLE_ENDPOINT,
    ACT_DRAIN_ENDPOINT,
    ACT_END_ACTION,
    ACT_RECORD_EVENTS,
    CampaignRequest,
    CampaignSnapshot,
    DisableRequest,
    DrainRequest,
    DrainResult,
    EndActionRequest,
    EndActionResult,
    RecordEventsRequest,
)
from dunning.events import endpoints, outbox
from dunning.events.delivery import Deliverer, DeliveryFailed
from dunning.platform.db import Database

log = logging.getLogger("dunning.events")


class EventActivities:
    """Outbound events and what a case asks of the billing system (Stripe)."""

    def __init__(self, db: Database, *, timeout: float = 10.0,
                 billing: StripeBilling | None = None) -> None:
        self.db = db
        self.deliverer = Deliverer(db, timeout=timeout)
        self.end_actions = EndActions(db, billing or StripeBilling(""))

    def all(self) -> list[Any]:
        return [self.record_events, self.drain_endpoint, self.disable_endpoint, self.end_action,
                self.campaign_for_case]

    @activity.defn(name=ACT_CAMPAIGN_FOR_CASE)
    def campaign_for_case(self, req: CampaignRequest) -> CampaignSnapshot:
        """The plan's campaign now, and whether the customer is excluded (a local activity
        right after the case registers)."""
        with self.db.session() as s:
            return case_snapshot(s, req.account_id, req.customer_id, req.plan)

    @activity.defn(name=ACT_END_ACTION)
    def end_action(self, req: EndActionRequest) -> EndActionResult:
        try:
            out = self.end_actions.take(req.workflow_id, req.account_id, req.invoice_id,
                                        req.action)
        except BillingUnavailable as exc:
            raise ApplicationError(str(exc), type="BillingUnavailable") from None
        if out.status != "none":
            log.info("end-of-dunning action %s: %s", out.action, out.status,
                     extra={"case": req.workflow_id})
        return EndActionResult(out.action, out.status, out.stripe_ref, out.error)

    @activity.defn(name=ACT_RECORD_EVENTS)
    def record_events(self, req: RecordEventsRequest) -> int:
        """Record a case's events, in order; each once (keyed by case run and event key)."""
        with self.db.session() as s:
            return outbox.record_case_events(s, req.account_id, req.workflow_id,
                                             outbox.case_event_rows(req.workflow_id, req.run_id,
                                                                    req.events))

    @activity.defn(name=ACT_DRAIN_ENDPOINT)
    def drain_endpoint(self, req: DrainRequest) -> DrainResult:
        try:
            result = self.deliverer.drain(req.endpoint_id, on_progress=activity.heartbeat)
        except DeliveryFailed as exc:
            log.warning("event delivery failed, retrying with backoff",
                        extra={"endpoint": req.endpoint_id, "attempt": activity.info().attempt})
            raise ApplicationError(str(exc), type="DeliveryFailed") from None
        return DrainResult(result.delivered, result.more, result.enabled)

    @activity.defn(name=ACT_DISABLE_ENDPOINT)
    def disable_endpoint(self, req: DisableRequest) -> bool:
        with self.db.session() as s:
            disabled = endpoints.disable_endpoint(s, req.endpoint_id, req.reason)
        if disabled:
            log.warning("endpoint disabled after sustained failure",
                        extra={"endpoint": req.endpoint_id})
        return disabled
