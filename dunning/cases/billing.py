"""The billing system's API, through the real `stripe` SDK: what a case asks of Stripe (mark an
invoice uncollectible, cancel or pause the subscription, pay an open invoice). Every write
carries an idempotency key (the SDK sends it as `Idempotency-Key` and reuses it on its own
retries), so a retried activity never acts twice.

Errors: `BillingUnavailable` (network, 429, 5xx, 409: try again later with the same key) and
`BillingRefused` (4xx: Stripe said no; final, with its reason and decline code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class BillingUnavailable(Exception):
    """Stripe could not be reached or answered with a temporary error."""


class BillingRefused(Exception):
    """Stripe refused the request (a final answer)."""

    def __init__(self, message: str, decline_code: str | None = None) -> None:
        super().__init__(message)
        self.decline_code = decline_code


@dataclass(frozen=True)
class Paid:
    invoice_id: str
    status: str  # Stripe's invoice status after the call (paid, open, ...)
    amount_paid: int | None = None


def _message(exc: Exception) -> tuple[str, str | None]:
    err = getattr(exc, "error", None)
    decline = getattr(err, "decline_code", None)
    code = decline or getattr(err, "code", None)
    message = getattr(err, "message", None) or getattr(exc, "user_message", None) or str(exc)
    text = f"{code}: {message}" if code else str(message)
    return " ".join(text.split())[:380], decline


class StripeBilling:
    def __init__(self, api_key: str, api_base: str = "https://api.stripe.com", *,
                 timeout: float = 30.0, max_network_retries: int = 1) -> None:
        self.api_key = api_key
        self.api_base = api_base.rstrip("/")
        self.timeout = timeout
        self.max_network_retries = max_network_retries

    def _client(self) -> Any:
        import stripe

        if not self.api_key:
            raise BillingRefused("Stripe is not configured: set DUNNING_STRIPE_API_KEY")
        return stripe.StripeClient(
            self.api_key,
            base_addresses={"api": self.api_base},
            max_network_retries=self.max_network_retries,
            http_client=stripe.RequestsClient(timeout=self.timeout),
        )

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Call the SDK; the answer as a plain dict."""
        import stripe

        try:
            answer = fn(*args, **kwargs)
            return dict(answer.to_dict()) if hasattr(answer, "to_dict") else dict(answer)
        except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
            raise BillingUnavailable(f"Stripe unreachable: {_message(exc)[0]}") from None
        except stripe.StripeError as exc:
            status = getattr(exc, "http_status", None) or 0
            text, decline = _message(exc)
            if status >= 500 or status == 409:
                raise BillingUnavailable(f"Stripe error: {text}") from None
            raise BillingRefused(text, decline) from None

    def subscription_of(self, invoice_id: str) -> str | None:
        invoice = self._call(self._client().v1.invoices.retrieve, invoice_id)
        parent = invoice.get("parent") or {}
        details = (parent.get("subscription_details") or {}) if parent else {}
        sub = details.get("subscription") or invoice.get("subscription")
        if isinstance(sub, dict):
            sub = sub.get("id")
        return str(sub) if sub else None

    def mark_uncollectible(self, invoice_id: str, key: str) -> str:
        invoice = self._call(self._client().v1.invoices.mark_uncollectible, invoice_id,
                             options={"idempotency_key": key})
        return str(invoice.get("id") or invoice_id)

    def cancel_subscription(self, subscription_id: str, key: str) -> str:
        sub = self._call(self._client().v1.subscriptions.cancel, subscription_id,
                         options={"idempotency_key": key})
        return str(sub.get("id") or subscription_id)

    def pause_collection(self, subscription_id: str, key: str) -> str:
        sub = self._call(self._client().v1.subscriptions.update, subscription_id,
                         params={"pause_collection": {"behavior": "keep_as_draft"}},
                         options={"idempotency_key": key})
        return str(sub.get("id") or subscription_id)

    def pay_invoice(self, invoice_id: str, key: str) -> Paid:
        invoice = self._call(self._client().v1.invoices.pay, invoice_id,
                             options={"idempotency_key": key})
        amount = invoice.get("amount_paid")
        return Paid(str(invoice.get("id") or invoice_id), str(invoice.get("status") or ""),
                    amount if isinstance(amount, int) else None)
