"""The optional `decline_code` case field: checked, normalised, read from Stripe's invoice."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dunning.domain.contract import InputError, parse_case_input
from dunning.webhooks.stripe import StripeEvent, StripeEvents
from tests.helpers import case_input


def test_decline_code_is_optional_and_normalised() -> None:
    assert parse_case_input(case_input("a", "i", "c")).decline_code is None
    case = parse_case_input(case_input("a", "i", "c", decline_code="Expired_Card"))
    assert case.decline_code == "expired_card"


@pytest.mark.parametrize("bad", ["card declined", "x" * 65, 42, "tr\u00e8s"])
def test_bad_decline_code_names_the_field(bad: object) -> None:
    with pytest.raises(InputError) as err:
        parse_case_input(case_input("a", "i", "c", decline_code=bad))
    assert err.value.field == "decline_code"


def test_stripe_invoice_decline_code_reaches_the_case() -> None:
    events = StripeEvents.__new__(StripeEvents)
    inv = {"id": "in_1", "customer": "cus_1", "status": "open", "amount_due": 4900,
           "currency": "usd", "hosted_invoice_url": "https://pay.example/in_1",
           "payment_intent": {"id": "pi_1",
                              "last_payment_error": {"decline_code": "expired_card"}}}
    event = StripeEvent("evt_1", "invoice.payment_failed", datetime.now(UTC), inv)
    request = events.case_request("acme", event)
    assert not isinstance(request, str) and request.decline_code == "expired_card"
    inv["payment_intent"] = {"id": "pi_1", "last_payment_error": {"decline_code": "no good!"}}
    request = events.case_request("acme", event)
    assert not isinstance(request, str) and request.decline_code is None
