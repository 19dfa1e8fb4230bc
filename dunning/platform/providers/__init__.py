"""Provider interfaces: every message leaves the engine through one of these.

Errors are classified so that activities can decide what to do:
- `TransientProviderError`: the provider did not take the message (5xx, 429, connection refused);
  safe to try again later.
- `PermanentProviderError`: the provider refused the message (4xx, invalid number, auth); never
  retried, recorded as failed with the provider's reason.
- `AmbiguousProviderError`: the request may or may not have been taken (a read timeout after the
  request was sent). Never retried: resending could deliver a duplicate.
"""

from __future__ import annotations


class ProviderError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransientProviderError(ProviderError):
    pass


class PermanentProviderError(ProviderError):
    pass


class AmbiguousProviderError(ProviderError):
    pass


def mask_phone(e164: str | None) -> str:
    """+14155550123 -> +1******0123: enough for an operator, never the whole number."""
    if not e164:
        return ""
    if len(e164) <= 6:
        return "*" * len(e164)
    return e164[:2] + "*" * (len(e164) - 6) + e164[-4:]


def mask_email(addr: str | None) -> str:
    if not addr or "@" not in addr:
        return ""
    local, domain = addr.split("@", 1)
    return f"{local[:1]}***@{domain}"
