"""The audit log: who changed what, when. Written in the same transaction as the change."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dunning.platform.db.models import AuditEntry


def record(session: Session, account_id: str, actor: str, action: str,
           **detail: Any) -> None:
    """Append one entry. `detail` must hold no phone number or customer email."""
    session.add(AuditEntry(account_id=account_id, actor=actor, action=action,
                           detail={k: v for k, v in detail.items() if v is not None}))


def recent(session: Session, account_id: str, limit: int = 50) -> list[AuditEntry]:
    return list(session.scalars(
        select(AuditEntry).where(AuditEntry.account_id == account_id)
        .order_by(AuditEntry.id.desc()).limit(limit)
    ))
