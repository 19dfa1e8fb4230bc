"""Personal data stays out of ids and logs: ids that are email addresses or phone numbers are
refused, every log field is redacted the same way (national formats too), the console backends
print masked text."""

from __future__ import annotations

import logging

import pytest

from dunning.customers import consent
from dunning.domain import pii
from dunning.domain.contract import InputError, check_id, parse_case_input
from dunning.domain.pii import redact
from dunning.platform import logs, providers
from dunning.platform.providers.email import ConsoleEmailProvider, OutgoingEmail
from dunning.platform.providers.sms import ConsoleSmsProvider, OutgoingSms


@pytest.mark.parametrize("value", [
    "jane.doe@example.com", "a+b@mail.example.org", "14155550123", "+14155550123",
    "4155550123", "415-555-0123", "07700900123", "1.415.555.0123",
])
def test_ids_that_are_contact_details_are_refused(value: str) -> None:
    with pytest.raises(InputError, match="personal data") as err:
        check_id("customer_id", value)
    assert err.value.field == "customer_id"


@pytest.mark.parametrize("value", [
    "cus_123", "inv-2026-0001", "20240131", "in_1NXyz4155550123", "acme@prod", "12345",
])
def test_ordinary_ids_pass(value: str) -> None:
    assert check_id("invoice_id", value) == value


def test_the_workflow_argument_refuses_an_email_as_customer_id() -> None:
    raw = {"account_id": "acme", "customer_id": "jane@example.com", "invoice_id": "inv1",
           "amount_due": 100, "currency": "USD", "billing_link": "https://pay.example.com/x"}
    with pytest.raises(InputError, match="customer_id: looks like an email address"):
        parse_case_input(raw)


@pytest.mark.parametrize(("text", "hidden"), [
    ("call (415) 555-0123 now", "555-0123"),
    ("415-555-0123", "555-0123"),
    ("415.555.0123", "555.0123"),
    ("07700 900123", "900123"),
    ("020 7946 0958", "7946"),
    ("+44 7700 900123", "7700 9001"),
])
def test_national_formats_are_masked(text: str, hidden: str) -> None:
    masked = redact(text)
    assert hidden not in masked and masked[-2:] == text[-2:]


@pytest.mark.parametrize("text", [
    "failed at 2026-11-29 08:12:28", "127.0.0.1:8000", "4 emails, 4 SMS, 4 credits",
    "case dunning:acme:inv1", "amount 4900 USD", "version 1.35.0", "took 12.5 s",
])
def test_ordinary_numbers_are_kept(text: str) -> None:
    assert redact(text) == text


def test_every_log_field_is_redacted_including_temporal_case_fields() -> None:
    record = logging.LogRecord("dunning.x", logging.INFO, __file__, 1, "reminder for %s",
                               ("(415) 555-0123",), None)
    # What Temporal's workflow logger attaches: the workflow id becomes `case`.
    record.temporal_workflow = {"workflow_id": "dunning-acme-14155550123",
                                "activity_type": "send to jane@example.com"}
    record.note = "customer 07700 900123, jane@example.com"
    fields = logs.fields_of(record)
    text = logs.KeyValueFormatter().format(record) + logs.JsonFormatter().format(record)
    for secret in ("14155550123", "555-0123", "900123", "jane@", "jane.doe"):
        assert secret not in text
    assert fields["case"] == "dunning-acme-+1******0123"
    assert fields["msg"] == "reminder for (***) ***-**23"


def test_console_backends_print_masked(capsys: pytest.CaptureFixture[str]) -> None:
    sms = ConsoleSmsProvider()
    sms.send(OutgoingSms(src="+14155550100", dst="+14155552671",
                         text="Jane, pay at https://pay.example.com/tok_secret123 or call "
                              "415-555-0199"))
    out = capsys.readouterr().out
    assert "4155552671" not in out and "tok_secret123" not in out and "555-0199" not in out
    assert "https://pay.example.com/" in out
    assert sms.sent[0].text.endswith("415-555-0199")  # what is recorded is untouched
    ConsoleEmailProvider().send(OutgoingEmail(
        sender="billing@acme.test", to="jane@example.com", subject="Reminder for jane@example.com",
        body="x"))
    out = capsys.readouterr().out
    assert "jane@" not in out


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
