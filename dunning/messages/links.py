"""Tracked billing links: `{billing_link}` as `DUNNING_PUBLIC_URL/l/<token>`.

A token is 22 URL-safe characters: 10 random bytes (the link's id: unguessable, no PII, nothing
derived from the case) and the first 6 bytes of an HMAC-SHA256 of them. The HMAC key is derived
from the payload codec keys (`DUNNING_CODEC_KEYS`, or the generated key under
`DUNNING_DATA_DIR`), so the worker that makes links and the webhook server that serves them agree
without another secret; every configured key verifies, the first signs. The server checks the
signature before it reads the database: a forged or mangled token costs no query.

One link per (case, step, channel), made when the reminder is composed (again on a retry: the
same link); a click records (case, step, channel, time) and redirects (303) to the real link.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Row, Table, literal_column, select
from sqlalchemy.orm import Session

from dunning.platform.db import insert_for
from dunning.platform.db.models import LinkClick, ShortLink, utcnow
from dunning.platform.settings import Settings

ID_BYTES = 10
SIG_BYTES = 6
TOKEN_LENGTH = 22  # base64url of 16 bytes, unpadded
_CONTEXT = b"dunning short links v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        return None


class LinkSigner:
    """Signs new tokens with the first key and verifies with any of them."""

    def __init__(self, secrets_: Sequence[bytes]) -> None:
        if not secrets_:
            raise ValueError("at least one key is needed")
        self._keys = [hmac.new(k, _CONTEXT, hashlib.sha256).digest() for k in secrets_]

    def _sig(self, key: bytes, link_id: bytes) -> bytes:
        return hmac.new(key, link_id, hashlib.sha256).digest()[:SIG_BYTES]

    def new_token(self) -> str:
        link_id = secrets.token_bytes(ID_BYTES)
        return _b64(link_id + self._sig(self._keys[0], link_id))

    def is_valid(self, token: str) -> bool:
        if len(token) != TOKEN_LENGTH:
            return False
        raw = _unb64(token)
        if raw is None or len(raw) != ID_BYTES + SIG_BYTES or _b64(raw) != token:
            return False
        link_id, sig = raw[:ID_BYTES], raw[ID_BYTES:]
        return any(hmac.compare_digest(self._sig(k, link_id), sig) for k in self._keys)


@dataclass(frozen=True)
class LinkTarget:
    token: str
    account_id: str
    workflow_id: str
    step: int
    channel: str
    target: str


def short_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/l/{token}"


def short_link_for(
    session: Session,
    signer: LinkSigner,
    public_url: str,
    *,
    account_id: str,
    workflow_id: str,
    step: int,
    channel: str,
    target: str,
) -> str:
    """The short URL of this reminder's billing link (made on first use: one statement,
    a look-up only when an earlier attempt made it)."""
    token = signer.new_token()
    make_insert = insert_for(session.get_bind().dialect.name)
    made: Row[tuple[int]] | None = session.execute(
        make_insert(cast(Table, ShortLink.__table__)).values(
            token=token, account_id=account_id, workflow_id=workflow_id, step=step,
            channel=channel, target=target, created_at=utcnow(),
        ).on_conflict_do_nothing(index_elements=["workflow_id", "step", "channel"])
        .returning(literal_column("1"))
    ).first()
    if made is None:  # made before (a retry, or a concurrent attempt)
        token = session.scalar(
            select(ShortLink.token).where(
                ShortLink.workflow_id == workflow_id, ShortLink.step == step,
                ShortLink.channel == channel,
            )
        ) or token
    return short_url(public_url, token)


def follow(session: Session, signer: LinkSigner, token: str) -> LinkTarget | None:
    """Record a click on `token` and return where it goes; None for an unknown or forged token
    (a forged one is refused before any query)."""
    if not signer.is_valid(token):
        return None
    link = session.get(ShortLink, token)
    if link is None:
        return None
    session.add(LinkClick(
        token=token, account_id=link.account_id, workflow_id=link.workflow_id, step=link.step,
        channel=link.channel, clicked_at=utcnow(),
    ))
    return LinkTarget(token, link.account_id, link.workflow_id, link.step, link.channel,
                      link.target)


def signer_for_keys(keys: Sequence[bytes]) -> LinkSigner:
    return LinkSigner(list(keys))





def signer_for(settings: Settings) -> LinkSigner:
    """The signer of the configured codec keys (see the module's docstring)."""
    from dunning.platform.codec import keys_for

    return LinkSigner([k.key for k in keys_for(settings)])


__all__ = [
    "TOKEN_LENGTH",
    "LinkSigner",
    "LinkTarget",
    "follow",
    "short_link_for",
    "short_url",
    "signer_for",
    "signer_for_keys",
]
