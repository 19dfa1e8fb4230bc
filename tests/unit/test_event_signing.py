"""Standard Webhooks signatures: ours verify with the reference `standardwebhooks` package."""

from __future__ import annotations

import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from dunning.domain.contract import InputError
from dunning.domain.outbound import scrub
from dunning.events import signing
from dunning.events.catalog import EVENT_TYPES, check_event_types


def test_signature_verifies_with_the_reference_package() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_") and len(signing.secret_bytes(secret)) == 32
    body = '{"type":"case.started","timestamp":"2026-11-29T08:00:00Z","data":{"case_id":"x"}}'
    headers = signing.headers(secret, "msg_1", int(time.time()), body)
    assert Webhook(secret).verify(body, headers)["type"] == "case.started"


def test_wrong_secret_or_changed_body_fails() -> None:
    secret, other = signing.new_secret(), signing.new_secret()
    body = '{"type":"case.started"}'
    headers = signing.headers(secret, "msg_1", int(time.time()), body)
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace("started", "canceled"), headers)


def test_same_bytes_as_reference_signer() -> None:
    from datetime import UTC, datetime

    secret = signing.new_secret()
    ts = 1_700_000_000
    assert signing.sign(secret, "msg_x", ts, "{}") == Webhook(secret).sign(
        "msg_x", datetime.fromtimestamp(ts, UTC), "{}"
    )


def test_event_type_lists() -> None:
    assert check_event_types([]) is None
    assert check_event_types(["case.started,case.exhausted", "case.started"]) == [
        "case.exhausted", "case.started"]
    with pytest.raises(InputError, match=r"unknown event type 'case\.nope'"):
        check_event_types(["case.nope"])
    assert len(EVENT_TYPES) == 14


def test_scrub_removes_contact_details() -> None:
    text = "provider said: +1 415 555 0101 is invalid; mail jo@example.com"
    cleaned = scrub(text)
    assert "415" not in cleaned and "example.com" not in cleaned
    assert "[number]" in cleaned and "[email]" in cleaned
