"""The event outbox: an event is recorded in the transaction of the change that caused it, with
one pending delivery per enabled endpoint of the account subscribed to its type. Delivery is
Temporal's job (workflows/events.py), which drains an endpoint's pending deliveries in order.

Payloads carry ids and amounts, never phone numbers, email addresses or names.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dunning.domain.contract import InputError
from dunning.domain.outbound import CaseEvent
from dunning.events.catalog import EVENT_TYPES, is_subscribed
from dunning.platform.db import insert_for
from dunning.platform.db.models import (
    Case,
    DeliveryAttempt,
    EventDelivery,
    OutboxEvent,
    WebhookEndpoint,
    utcnow,
)


def _event_id(dedupe_key: str | None) -> str:
    """`msg_` + 24 hex: derived from the dedupe key when there is one (a retried recording keeps
    its id), random otherwise."""
    if dedupe_key is None:
        return "msg_" + secrets.token_hex(12)
    return "msg_" + hashlib.sha256(dedupe_key.encode()).hexdigest()[:24]


def body(event: OutboxEvent) -> dict[str, Any]:
    """The JSON body sent to endpoints: {"type", "timestamp", "data"}."""
    return {
        "type": event.type,
        "timestamp": event.occurred_at.isoformat().replace("+00:00", "Z"),
        "data": event.data,
    }


def record(
    session: Session,
    account_id: str,
    event_type: str,
    data: dict[str, Any],
    *,
    case_id: str | None = None,
    occurred_at: datetime | None = None,
    dedupe_key: str | None = None,
) -> OutboxEvent | None:
    """Record an event and its deliveries in the caller's transaction. With a `dedupe_key`
    already recorded, nothing is added and None is returned."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    if dedupe_key is not None and session.scalar(
        select(OutboxEvent.seq).where(OutboxEvent.dedupe_key == dedupe_key)
    ) is not None:
        return None
    payload = {"account_id": account_id, **({"case_id": case_id} if case_id else {}), **data}
    event = OutboxEvent(
        event_id=_event_id(dedupe_key), dedupe_key=dedupe_key, account_id=account_id,
        case_id=case_id, type=event_type, occurred_at=occurred_at or utcnow(), data=payload,
    )
    try:
        with session.begin_nested():
            session.add(event)
            session.flush()
    except IntegrityError:  # a concurrent recording of the same key won
        return None
    endpoints = session.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.event_types).where(
            WebhookEndpoint.account_id == account_id, WebhookEndpoint.enabled.is_(True)
        )
    ).all()
    for endpoint_id, types in endpoints:
        if is_subscribed(types, event_type):
            session.add(EventDelivery(event_seq=event.seq, endpoint_id=endpoint_id,
                                      status="pending", attempts=0))
    session.flush()
    return event


_EVENTS = cast(Table, OutboxEvent.__table__)
_DELIVERIES = cast(Table, EventDelivery.__table__)
_ACCOUNT_ENDPOINTS = select(WebhookEndpoint.id, WebhookEndpoint.event_types).where(
    WebhookEndpoint.account_id == bindparam("e_account"), WebhookEndpoint.enabled.is_(True)
)


def record_case_events(
    session: Session,
    account_id: str,
    case_id: str,
    events: Sequence[tuple[str, str, datetime, dict[str, Any]]],
) -> int:
    """A case's events (dedupe key, type, occurred_at, data), in order, in the caller's
    transaction; each key once. The hot path of `record` for a batch: ONE multi-row statement
    for the events (each inserted unless its key is recorded; a concurrent recording of the
    same key is a no-op, not an error; rows take their sequence numbers in the batch's order)
    and one look-up of the account's endpoints. Returns how many were new."""
    if not events:
        return 0
    type_of: dict[str, str] = {}
    for key, event_type, _at, _data in events:
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}")
        type_of[key] = event_type
    make_insert = insert_for(session.get_bind().dialect.name)
    stmt = (make_insert(_EVENTS).values([{
        "event_id": _event_id(key), "dedupe_key": key, "account_id": account_id,
        "case_id": case_id, "type": event_type, "occurred_at": occurred_at,
        "data": {"account_id": account_id, "case_id": case_id, **data},
    } for key, event_type, occurred_at, data in events])
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(_EVENTS.c.seq, _EVENTS.c.dedupe_key))
    conn = session.connection()
    endpoints = conn.execute(_ACCOUNT_ENDPOINTS, {"e_account": account_id}).all()
    new = sorted(conn.execute(stmt).all())  # keys recorded before (a retried batch) are absent
    recorded = len(new)
    deliveries: list[dict[str, Any]] = [
        {"event_seq": seq, "endpoint_id": endpoint_id, "status": "pending", "attempts": 0}
        for seq, key in new
        for endpoint_id, subscribed in endpoints if is_subscribed(subscribed, type_of[key])
    ]
    if deliveries:
        conn.execute(insert(_DELIVERIES), deliveries)
    return recorded


def case_event_rows(
    workflow_id: str, run_id: str, events: Sequence[CaseEvent],
) -> list[tuple[str, str, datetime, dict[str, Any]]]:
    """A case's events as `record_case_events` takes them: keyed by case run and event key."""
    return [(f"{workflow_id}:{run_id}:{ev.key}", ev.type, ev.occurred_at, ev.data)
            for ev in events]


def event_json(session: Session, event: OutboxEvent) -> dict[str, Any]:
    rows = session.execute(
        select(EventDelivery).where(EventDelivery.event_seq == event.seq)
        .order_by(EventDelivery.id)
    ).scalars().all()
    deliveries = []
    for d in rows:
        attempts = session.execute(
            select(DeliveryAttempt).where(DeliveryAttempt.delivery_id == d.id)
            .order_by(DeliveryAttempt.id)
        ).scalars().all()
        deliveries.append({
            "endpoint_id": d.endpoint_id,
            "status": d.status,
            "attempts": [
                {"at": a.attempted_at.isoformat(), "status_code": a.status_code,
                 "error": a.error, "duration_ms": a.duration_ms}
                for a in attempts
            ],
            "delivered_at": d.delivered_at.isoformat() if d.delivered_at else None,
            "last_error": d.last_error,
        })
    return {
        "event_id": event.event_id,
        "type": event.type,
        "case_id": event.case_id,
        "timestamp": body(event)["timestamp"],
        "data": event.data,
        "deliveries": deliveries,
    }


def list_events(
    session: Session, account_id: str, case_id: str | None = None, limit: int = 200
) -> list[OutboxEvent]:
    """The account's newest events, oldest first; `case_id` is a case's workflow id or its
    invoice id."""
    query = select(OutboxEvent).where(OutboxEvent.account_id == account_id)
    if case_id is not None:
        by_invoice = select(Case.workflow_id).where(
            Case.account_id == account_id, Case.invoice_id == case_id
        )
        query = query.where(or_(OutboxEvent.case_id == case_id,
                                OutboxEvent.case_id.in_(by_invoice)))
    newest = session.execute(query.order_by(OutboxEvent.seq.desc()).limit(limit)).scalars().all()
    return list(reversed(newest))


def redeliver(session: Session, event_id: str) -> list[str]:
    """A new pending delivery of the event to each of its account's enabled, subscribed
    endpoints (after whatever they have pending). Returns the endpoint ids."""
    event = session.scalar(select(OutboxEvent).where(OutboxEvent.event_id == event_id))
    if event is None:
        raise InputError("event", f"unknown event {event_id!r}")
    endpoints = session.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.event_types).where(
            WebhookEndpoint.account_id == event.account_id, WebhookEndpoint.enabled.is_(True)
        )
    ).all()
    chosen = [ep for ep, types in endpoints if is_subscribed(types, event.type)]
    if not chosen:
        raise InputError("event", "no enabled endpoint of the account subscribes to "
                                  f"{event.type!r}")
    for endpoint_id in chosen:
        session.add(EventDelivery(event_seq=event.seq, endpoint_id=endpoint_id,
                                  status="pending", attempts=0))
    session.flush()
    return chosen


def pending_heads(session: Session) -> dict[str, int]:
    """endpoint id -> the newest pending delivery id, for endpoints with pending deliveries."""
    rows = session.execute(
        select(EventDelivery.endpoint_id, func.max(EventDelivery.id))
        .where(EventDelivery.status == "pending")
        .group_by(EventDelivery.endpoint_id)
    ).all()
    return {endpoint_id: int(top) for endpoint_id, top in rows}
