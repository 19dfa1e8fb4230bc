"""Idempotency records for webhooks, kept in `processed_events`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dunning.platform.db.models import ProcessedEvent

NONCE_SOURCE = "plivo-nonce"
NONCE_REQUEST_SOURCE = "plivo-nonce-req"


def claim_event(session: Session, source: str, event_id: str) -> bool:
    """Record the event; False when it was recorded before (a repeated delivery).

    Runs in a savepoint so a concurrent duplicate does not spoil the caller's transaction.
    """
    key = (source[:32], event_id[:200])
    if session.get(ProcessedEvent, key) is not None:
        return False
    try:
        with session.begin_nested():
            session.add(ProcessedEvent(source=key[0], event_id=key[1]))
    except IntegrityError:
        return False
    return True


def request_fingerprint(url: str, params: Sequence[tuple[str, str]]) -> str:
    """A digest of what a request said, independent of parameter order."""
    data = json.dumps([url, sorted(params)], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def remember_nonce(session: Session, scheme: str, nonce: str, fingerprint: str) -> bool:
    """Bind a signature nonce to the request it came with.

    True for a new nonce or an exact repeat of its request (a provider retry); False when the
    nonce was used before for a different request, which a V2 signature (URL and nonce only)
    cannot tell apart from a forgery.
    """
    nonce_id = f"{scheme}:{nonce}"
    binding = hashlib.sha256(f"{nonce_id}|{fingerprint}".encode()).hexdigest()
    if claim_event(session, NONCE_SOURCE, nonce_id):
        claim_event(session, NONCE_REQUEST_SOURCE, binding)
        return True
    return session.get(ProcessedEvent, (NONCE_REQUEST_SOURCE, binding)) is not None
