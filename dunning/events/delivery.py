"""Posting an endpoint's pending deliveries, oldest first, logging every attempt.

`Deliverer.drain` posts up to `batch` pending deliveries of one endpoint in delivery order and
stops at the first failure (raising `DeliveryFailed`): a later event is never delivered before
an earlier one, so the order per case holds (per endpoint, in fact). Temporal retries the drain
with backoff (workflows/events.py). Delivery is at least once: a worker killed after the
receiver answered but before the delivery was marked posts it again, with the same
`webhook-id`, which receivers use to drop duplicates (Standard Webhooks).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dunning.events.outbox import body
from dunning.events.signing import headers
from dunning.platform.db import Database
from dunning.platform.db.models import (
    DeliveryAttempt,
    EventDelivery,
    OutboxEvent,
    WebhookEndpoint,
    utcnow,
)

USER_AGENT = "dunning-engine-webhooks/1"


class DeliveryFailed(Exception):
    """The receiver did not take a delivery (no answer, or not 2xx)."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a 3xx is an answer, not a success


_OPENER = urllib.request.build_opener(_NoRedirect)


@dataclass(frozen=True)
class Answer:
    status_code: int | None
    error: str | None


def post(url: str, data: bytes, hdrs: dict[str, str], timeout: float) -> Answer:
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={**hdrs, "user-agent": USER_AGENT})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            code = int(response.status)
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, f"HTTP {exc.code}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Answer(None, f"{type(exc).__name__}: {reason}"[:400])
    if 200 <= code < 300:
        return Answer(code, None)
    return Answer(code, f"HTTP {code}")


@dataclass(frozen=True)
class _Item:
    delivery_id: int
    event_id: str
    body: str


@dataclass(frozen=True)
class DrainResult:
    delivered: int
    more: bool  # pending deliveries remain (the batch was full)
    enabled: bool  # False: the endpoint is gone or disabled, nothing was posted


class Deliverer:
    def __init__(self, db: Database, *, timeout: float = 10.0,
                 poster: Callable[[str, bytes, dict[str, str], float], Answer] = post) -> None:
        self.db = db
        self.timeout = timeout
        self.poster = poster

    def _next(self, s: Session, endpoint_id: str, batch: int) -> list[_Item]:
        rows = s.execute(
            select(EventDelivery.id, OutboxEvent)
            .join(OutboxEvent, OutboxEvent.seq == EventDelivery.event_seq)
            .where(EventDelivery.endpoint_id == endpoint_id, EventDelivery.status == "pending")
            .order_by(EventDelivery.id)
            .limit(batch)
        ).all()
        return [
            _Item(int(d), ev.event_id, json.dumps(body(ev), separators=(",", ":"),
                                                  ensure_ascii=False))
            for d, ev in rows
        ]

    def drain(self, endpoint_id: str, *, batch: int = 100,
              on_progress: Callable[[], None] | None = None) -> DrainResult:
        with self.db.session() as s:
            ep = s.get(WebhookEndpoint, endpoint_id)
            if ep is None or not ep.enabled:
                return DrainResult(0, False, False)
            url, secret = ep.url, ep.secret
            items = self._next(s, endpoint_id, batch + 1)
        more = len(items) > batch
        delivered = 0
        for item in items[:batch]:
            started = time.monotonic()
            hdrs = headers(secret, item.event_id, int(time.time()), item.body)
            answer = self.poster(url, item.body.encode(), hdrs, self.timeout)
            elapsed = int((time.monotonic() - started) * 1000)
            with self.db.session() as s:
                s.add(DeliveryAttempt(delivery_id=item.delivery_id, attempted_at=utcnow(),
                                      status_code=answer.status_code, error=answer.error,
                                      duration_ms=elapsed))
                values: dict[str, object] = {"attempts": EventDelivery.attempts + 1}
                if answer.error is None:
                    values.update(status="delivered", delivered_at=utcnow(), last_error=None)
                else:
                    values["last_error"] = answer.error
                s.execute(update(EventDelivery)
                          .where(EventDelivery.id == item.delivery_id,
                                 EventDelivery.status == "pending")
                          .values(**values))
            if answer.error is not None:
                raise DeliveryFailed(f"{item.event_id} to {endpoint_id}: {answer.error}")
            delivered += 1
            if on_progress is not None:
                on_progress()
        return DrainResult(delivered, more, True)
