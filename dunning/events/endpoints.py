"""An account's event endpoints: add (a new signing secret, shown once), list, remove, rotate.

The signing secret is stored with the endpoint (the sender needs it to sign) and never listed:
`add` and `rotate-secret` return it once. URLs must be http(s) and carry no credentials.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dunning.accounts.accounts import get_account
from dunning.domain.contract import InputError
from dunning.events.catalog import check_event_types
from dunning.events.signing import new_secret
from dunning.platform.db.models import EventDelivery, WebhookEndpoint, utcnow

MAX_URL = 2000


def check_url(url: str) -> str:
    parsed = urlparse(url or "")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InputError("url", f"{url!r} is not an http(s) URL such as https://example.com/hooks")
    if parsed.username or parsed.password:
        raise InputError("url", "must not carry credentials (user:password@)")
    if len(url) > MAX_URL:
        raise InputError("url", f"at most {MAX_URL} characters")
    return url


@dataclass(frozen=True)
class NewSecret:
    endpoint_id: str
    secret: str


def endpoint_json(ep: WebhookEndpoint) -> dict[str, Any]:
    return {
        "endpoint_id": ep.id,
        "account_id": ep.account_id,
        "url": ep.url,
        "events": ep.event_types or "all",
        "enabled": ep.enabled,
        "disabled_reason": ep.disabled_reason,
        "created_at": ep.created_at.isoformat() if ep.created_at else None,
    }


def add_endpoint(
    session: Session, account_id: str, url: str, events: list[str]
) -> tuple[WebhookEndpoint, NewSecret]:
    get_account(session, account_id)
    types = check_event_types(events)
    ep = WebhookEndpoint(
        id="ep_" + secrets.token_hex(12), account_id=account_id, url=check_url(url),
        secret=new_secret(), event_types=types, enabled=True,
    )
    session.add(ep)
    session.flush()
    return ep, NewSecret(ep.id, ep.secret)


def list_endpoints(session: Session, account_id: str) -> list[WebhookEndpoint]:
    get_account(session, account_id)
    return list(session.scalars(
        select(WebhookEndpoint).where(WebhookEndpoint.account_id == account_id)
        .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    ))


def get_endpoint(
    session: Session, endpoint_id: str, account_id: str | None = None
) -> WebhookEndpoint:
    ep = session.get(WebhookEndpoint, endpoint_id)
    if ep is None or (account_id is not None and ep.account_id != account_id):
        raise InputError("endpoint", f"unknown endpoint {endpoint_id!r}")
    return ep


def remove_endpoint(session: Session, endpoint_id: str, account_id: str | None = None) -> None:
    ep = get_endpoint(session, endpoint_id, account_id)
    session.delete(ep)


def rotate_secret(session: Session, endpoint_id: str, account_id: str | None = None) -> NewSecret:
    ep = get_endpoint(session, endpoint_id, account_id)
    ep.secret = new_secret()
    return NewSecret(ep.id, ep.secret)


def enable_endpoint(session: Session, endpoint_id: str, account_id: str | None = None) -> None:
    """Re-enable an endpoint disabled after sustained failure; its pending deliveries go on."""
    ep = get_endpoint(session, endpoint_id, account_id)
    ep.enabled = True
    ep.disabled_reason = None


def disable_endpoint(session: Session, endpoint_id: str, reason: str) -> bool:
    """Disable after sustained failure; its pending deliveries are marked failed. True if it was
    enabled."""
    ep = session.get(WebhookEndpoint, endpoint_id)
    if ep is None or not ep.enabled:
        return False
    ep.enabled = False
    ep.disabled_reason = reason[:400]
    session.execute(
        update(EventDelivery)
        .where(EventDelivery.endpoint_id == endpoint_id, EventDelivery.status == "pending")
        .values(status="failed", last_error=f"endpoint disabled: {reason}"[:400])
    )
    ep.updated_at = utcnow()
    return True
