"""Currencies: one rule on every path. Any case is accepted, stored upper case, checked against
ISO 4217 with its minor units; `XYZ` is refused naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.service import RPCError, RPCStatusCode

from dunning.accounts import pricing
from dunning.cases.client import CaseRequest, DunningClient
from dunning.domain.contract import parse_case_input
from dunning.domain.locales import format_amount
from dunning.domain.money import MINOR_UNITS, check_currency, currency_decimals
from dunning.errors import InputError
from dunning.platform.settings import Settings
from tests.helpers import case_input


@pytest.mark.parametrize(("given", "stored"), [
    ("usd", "USD"), ("USD", "USD"), (" eur ", "EUR"), ("Jpy", "JPY"), ("kwd", "KWD"),
])
def test_any_case_is_accepted_and_stored_upper_case(given: str, stored: str) -> None:
    assert check_currency("currency", given) == stored


@pytest.mark.parametrize("bad", ["XYZ", "US", "USDD", "12$", "XAU", "XTS", "HRK", "", None, 840])
def test_what_is_not_an_iso_4217_currency_is_refused_naming_the_field(bad: Any) -> None:
    with pytest.raises(InputError) as info:
        check_currency("currency", bad)
    assert info.value.field == "currency"
    assert "ISO 4217" in str(info.value)


def test_minor_units_come_from_iso_4217() -> None:
    assert {c: currency_decimals(c) for c in ("USD", "eur", "JPY", "KRW", "KWD", "BHD", "CLF",
                                               "ISK", "VND", "HUF")} == {
        "USD": 2, "eur": 2, "JPY": 0, "KRW": 0, "KWD": 3, "BHD": 3, "CLF": 4, "ISK": 0,
        "VND": 0, "HUF": 2}
    assert len(MINOR_UNITS) > 150 and all(len(c) == 3 and c.isupper() for c in MINOR_UNITS)
    assert format_amount(1500, "KWD") == "KWD 1.500"
    assert format_amount(4900, "jpy") == "¥4,900"


def test_the_workflow_input_accepts_lower_case_and_refuses_unknown_codes() -> None:
    case = parse_case_input(case_input("acme", "inv1", "c1", currency="usd"))
    assert case.currency == "USD"
    with pytest.raises(InputError) as info:
        parse_case_input(case_input("acme", "inv1", "c1", currency="XYZ"))
    assert info.value.field == "currency" and "'XYZ'" in str(info.value)


def test_cases_started_before_the_patch_replay_with_the_old_rule() -> None:
    # Three capitals passed (even XYZ); lower case did not.
    raw = case_input("acme", "inv1", "c1", currency="XYZ")
    assert parse_case_input(raw, iso_currency=False).currency == "XYZ"
    with pytest.raises(InputError, match="capitals"):
        parse_case_input(case_input("acme", "inv1", "c1", currency="usd"), iso_currency=False)


def test_credit_prices_use_the_same_rule() -> None:
    assert pricing.check_currency("eur") == "EUR"
    assert pricing.parse_price("0.01", "usd") == 1
    assert pricing.parse_price("0.005", "kwd") == 5
    with pytest.raises(InputError, match="currency: 'XYZ' is not an ISO 4217"):
        pricing.check_currency("XYZ")


class RecordingTemporal:
    """The Temporal client at the edge: records what a start would send."""

    def __init__(self) -> None:
        self.started: list[Any] = []

    async def start_workflow(self, workflow: str, arg: Any, **kwargs: Any) -> Any:
        self.started.append(arg)
        return type("Handle", (), {"result_run_id": "run-1"})()

    def get_workflow_handle(self, workflow_id: str) -> Any:
        """No case under any earlier id form: describe() answers NOT_FOUND, as the server
        does."""

        async def describe() -> Any:
            raise RPCError("workflow not found", RPCStatusCode.NOT_FOUND, b"")

        return type("Handle", (), {"describe": staticmethod(describe)})()


async def test_the_client_sends_the_currency_upper_case() -> None:
    temporal = RecordingTemporal()
    client = DunningClient(temporal, Settings())  # type: ignore[arg-type]
    started = await client.start_case(CaseRequest(
        account_id="acme", customer_id="c1", invoice_id="inv1", amount_due=4900,
        currency="usd", billing_link="https://pay.example.com/inv1"))
    assert started.started
    assert temporal.started[0]["currency"] == "USD"
    with pytest.raises(InputError, match="currency"):
        await client.start_case(CaseRequest(
            account_id="acme", customer_id="c1", invoice_id="inv2", amount_due=4900,
            currency="XYZ", billing_link="https://pay.example.com/inv2"))
    assert len(temporal.started) == 1  # nothing went out for the bad one


def test_the_workflow_asks_its_patch_only_when_the_rules_differ() -> None:
    from dunning.domain.contract import currency_rules_agree

    assert currency_rules_agree({"currency": "USD"})  # both rules: USD, no patch marker
    for value in ("usd", "XYZ", "Usd", 840, None):
        assert not currency_rules_agree({"currency": value}), value
    assert not currency_rules_agree(["USD"])
