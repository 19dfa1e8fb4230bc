"""Which Stripe events mean "the card was fixed"."""

from __future__ import annotations

from dunning.cases.card_update import card_fixed_customer, idempotency_key


def test_customer_updated_with_a_changed_default_payment_method() -> None:
    obj = {"id": "cus_1", "invoice_settings": {"default_payment_method": "pm_new"}}
    prev = {"invoice_settings": {"default_payment_method": "pm_old"}}
    assert card_fixed_customer("customer.updated", obj, prev) == "cus_1"
    first = {"invoice_settings": {"default_payment_method": None}}  # the first card
    assert card_fixed_customer("customer.updated", obj, first) == "cus_1"


def test_not_a_card_change() -> None:
    obj = {"id": "cus_1", "invoice_settings": {"default_payment_method": "pm_new"}}
    assert card_fixed_customer("customer.updated", obj, {"name": "x"}) is None
    assert card_fixed_customer("customer.updated", obj, {"invoice_settings": {}}) is None
    removed = {"id": "cus_1", "invoice_settings": {"default_payment_method": None}}
    prev = {"invoice_settings": {"default_payment_method": "pm_old"}}
    assert card_fixed_customer("customer.updated", removed, prev) is None
    assert card_fixed_customer("invoice.paid", obj, prev) is None


def test_payment_method_attached() -> None:
    pm = {"id": "pm_1", "customer": {"id": "cus_2"}}
    assert card_fixed_customer("payment_method.attached", pm, {}) == "cus_2"
    assert card_fixed_customer("payment_method.attached", {"id": "pm_1"}, {}) is None


def test_keys_per_invoice_and_event() -> None:
    assert idempotency_key("in_1", "evt_1") == idempotency_key("in_1", "evt_1")
    assert len({idempotency_key("in_1", "evt_1"), idempotency_key("in_2", "evt_1"),
                idempotency_key("in_1", "evt_2")}) == 3
