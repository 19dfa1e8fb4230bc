"""Payment gateways for auto-refill: who takes the money for N credits.

`simulated` grants at once (tests, demos, invoiced customers); `stripe` charges the saved payment
method off-session (PaymentIntent, confirm=True, idempotency key = the refill's key) for N x the
credit's display price. A gateway raises `GatewayError` when it refused the charge for good and
`GatewayPending` when the outcome is not final (try again later with the same key).

The entry points build one `Gateways` (`Gateways.from_settings`: DUNNING_STRIPE_API_KEY,
DUNNING_STRIPE_API_URL) and hand it to the balance follow-ups; nothing here reads the
environment.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from dunning.platform.settings import Settings

GATEWAYS = ("simulated", "stripe")
STRIPE_API_URL = "https://api.stripe.com"


@dataclass(frozen=True)
class Charge:
    refill_id: int
    account_id: str
    credits: int
    amount_minor: int  # 0 when the account has no price (simulated gateway only)
    currency: str | None
    customer: str | None
    payment_method: str | None
    idempotency_key: str


class GatewayError(Exception):
    """The gateway refused the charge for good (declined, invalid, not configured)."""


class GatewayPending(Exception):
    """The outcome is unknown or not final yet: try again later with the same key."""


class PaymentGateway(Protocol):
    name: str

    def charge(self, charge: Charge) -> str:
        """Take the payment; return the gateway's reference. Raises GatewayError or
        GatewayPending."""
        ...


class SimulatedGateway:
    """Grants at once. `fail` makes every charge fail with that message (tests, drills);
    `hold` (an Event) makes charges wait for it."""

    name = "simulated"

    def __init__(self, fail: str | None = None, hold: threading.Event | None = None) -> None:
        self.fail = fail
        self.hold = hold
        self.charges: list[Charge] = []
        self._lock = threading.Lock()

    def charge(self, charge: Charge) -> str:
        if self.hold is not None:
            self.hold.wait(30)
        with self._lock:
            self.charges.append(charge)
        if self.fail:
            raise GatewayError(self.fail)
        return f"sim_{charge.idempotency_key}"


class StripeGateway:
    """Off-session PaymentIntent on the saved payment method, with the refill's idempotency
    key (the SDK sends it as the Idempotency-Key header, and reuses it on its own retries)."""

    name = "stripe"

    def __init__(self, api_key: str = "", api_base: str = STRIPE_API_URL,
                 *, max_network_retries: int = 1, timeout: float = 30.0) -> None:
        self.api_key = api_key
        self.api_base = (api_base or STRIPE_API_URL).rstrip("/")
        self.max_network_retries = max_network_retries
        self.timeout = timeout

    def charge(self, charge: Charge) -> str:
        import stripe

        if not self.api_key:
            raise GatewayError("Stripe is not configured: set DUNNING_STRIPE_API_KEY")
        if not charge.amount_minor or not charge.currency:
            raise GatewayError("the account has no credit price: set one with `credits price`")
        if not charge.customer or not charge.payment_method:
            raise GatewayError("the account has no Stripe customer and payment method")
        client = stripe.StripeClient(
            self.api_key,
            base_addresses={"api": self.api_base},
            max_network_retries=self.max_network_retries,
            http_client=stripe.RequestsClient(timeout=self.timeout),
        )
        try:
            intent = client.v1.payment_intents.create(
                params={
                    "amount": charge.amount_minor,
                    "currency": charge.currency.lower(),
                    "customer": charge.customer,
                    "payment_method": charge.payment_method,
                    "off_session": True,
                    "confirm": True,
                    "description": f"{charge.credits} SMS credits (auto-refill)",
                    "metadata": {
                        "dunning_account": charge.account_id,
                        "dunning_refill": str(charge.refill_id),
                        "credits": str(charge.credits),
                    },
                },
                options={"idempotency_key": charge.idempotency_key},
            )
        except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
            raise GatewayPending(f"Stripe unreachable: {_stripe_message(exc)}") from None
        except stripe.StripeError as exc:
            status = getattr(exc, "http_status", None) or 0
            if status >= 500 or status == 409:
                raise GatewayPending(f"Stripe error: {_stripe_message(exc)}") from None
            raise GatewayError(_stripe_message(exc)) from None
        status, intent_id = str(intent.status or ""), str(intent.id or "")
        if status == "succeeded":
            return intent_id
        if status == "processing":
            raise GatewayPending(f"payment {intent_id} still processing")
        raise GatewayError(f"payment {intent_id} not completed (status {status})")


def _stripe_message(exc: Exception) -> str:
    err = getattr(exc, "error", None)
    code = getattr(err, "decline_code", None) or getattr(err, "code", None)
    message = getattr(err, "message", None) or getattr(exc, "user_message", None) or str(exc)
    text = f"{code}: {message}" if code else str(message)
    return " ".join(text.split())[:380]


class Gateways:
    """The gateways of this process, by name (one of GATEWAYS)."""

    def __init__(self, *gateways: PaymentGateway) -> None:
        self._by_name: dict[str, PaymentGateway] = {"simulated": SimulatedGateway(),
                                                     "stripe": StripeGateway()}
        for gateway in gateways:
            self._by_name[gateway.name] = gateway

    @classmethod
    def from_settings(cls, settings: Settings) -> Gateways:
        return cls(StripeGateway(settings.stripe_api_key.get_secret_value(),
                                 settings.stripe_api_url))

    def get(self, name: str) -> PaymentGateway:
        gateway = self._by_name.get(name)
        if gateway is None:
            raise GatewayError(f"unknown payment gateway {name!r}")
        return gateway


__all__ = [
    "GATEWAYS",
    "Charge",
    "GatewayError",
    "GatewayPending",
    "Gateways",
    "PaymentGateway",
    "SimulatedGateway",
    "StripeGateway",
]
