"""Per-account API keys: `dk_<id>_<secret>`, shown once; only the secret's SHA-256 is kept."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy.orm import Session

from dunning.console import audit
from dunning.console.access import Identity
from dunning.domain.contract import InputError
from dunning.platform.db.models import Account, ApiKey, utcnow

PREFIX = "dk_"
_KEY_RE = re.compile(r"^dk_([a-z0-9]{12})_([A-Za-z0-9_-]{40,64})$")


@dataclass(frozen=True)
class NewKey:
    key_id: str
    account_id: str
    secret: str  # the whole key, shown once


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def create_key(session: Session, account_id: str, name: str | None = None,
               *, actor: str = "cli") -> NewKey:
    if session.get(Account, account_id) is None:
        raise InputError("account", f"unknown account {account_id!r}")
    if name is not None and len(name) > 100:
        raise InputError("name", "must be at most 100 characters")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    session.add(ApiKey(id=key_id, account_id=account_id, secret_hash=_sha256(secret),
                       name=name))
    session.flush()
    audit.record(session, account_id, actor, "api_key.created", key_id=key_id, name=name)
    return NewKey(key_id, account_id, f"{PREFIX}{key_id}_{secret}")


def identity_for_key(session: Session, presented: str) -> Identity | None:
    """The key's account (as an operator), or None for an unknown, wrong or revoked key."""
    match = _KEY_RE.match(presented)
    if match is None:
        return None
    key_id, secret = match.groups()
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.secret_hash, _sha256(secret)):
        return None
    now = utcnow()
    last = row.last_used_at
    if last is None or (now - (last if last.tzinfo else last.replace(tzinfo=now.tzinfo))
                        ).total_seconds() > 60:
        row.last_used_at = now  # at most once a minute: a read stays (almost) a read
    return Identity(row.account_id, "operator", f"api-key:{key_id}")


def list_keys(session: Session, account_id: str) -> list[dict[str, object]]:
    from sqlalchemy import select

    if session.get(Account, account_id) is None:
        raise InputError("account", f"unknown account {account_id!r}")
    rows = session.scalars(select(ApiKey).where(ApiKey.account_id == account_id)
                           .order_by(ApiKey.created_at))
    return [{"key_id": r.id, "name": r.name, "created_at": r.created_at.isoformat(),
             "last_used_at": r.last_used_at.isoformat() if r.last_used_at else None,
             "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None} for r in rows]


def revoke_key(session: Session, account_id: str, key_id: str, *, actor: str = "cli") -> None:
    """The key stops working at once (its next request gets 401)."""
    row = session.get(ApiKey, key_id)
    if row is None or row.account_id != account_id:
        raise InputError("key", f"no API key {key_id!r} for account {account_id!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        audit.record(session, account_id, actor, "api_key.revoked", key_id=key_id)
