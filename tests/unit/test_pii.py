"""PII masking lives in one module (dunning.domain.pii); the old import paths are the same
functions."""

from __future__ import annotations

from dunning.customers import consent
from dunning.domain import pii
from dunning.platform import logs, providers


def test_masks() -> None:
    assert pii.mask_phone("+14155550123") == "+1******0123"
    assert pii.mask_phone("") == "" and pii.mask_phone("+1234") == "*****"
    assert pii.mask_email("ada@example.com") == "a***@example.com"
    assert pii.mask_email("not an address") == ""


def test_redact_masks_numbers_and_addresses_in_free_text() -> None:
    text = "to +14155550123 (14155550124) or ada@example.com, order 42"
    assert pii.redact(text) == "to +1******0123 (+1******0124) or a***@example.com, order 42"
    assert pii.redact_numbers("call me at +1 415-555-0123, ok 42") == "call me at [number], ok 42"


def test_one_implementation_behind_every_old_path() -> None:
    assert providers.mask_phone is pii.mask_phone and providers.mask_email is pii.mask_email
    assert logs.redact is pii.redact
    assert consent.redact_numbers is pii.redact_numbers
