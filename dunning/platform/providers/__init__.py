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

# Masks live with the other PII rules; re-exported here, where the providers' callers look.
from dunning.domain.pii import mask_email as mask_email
from dunning.domain.pii import mask_phone as mask_phone


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
