"""What an SMS costs in credits: segments x the rate for the destination country."""

from __future__ import annotations

from sqlalchemy.orm import Session

DEFAULT_RATE = 1


def rate_for(session: Session, account_id: str, region: str | None) -> int:
    """Credits per segment for a destination region (ISO 3166 alpha-2)."""
    return DEFAULT_RATE


def sms_cost(session: Session, account_id: str, region: str | None, segments: int) -> int:
    return segments * rate_for(session, account_id, region)
