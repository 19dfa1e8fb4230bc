"""Smaller holes: bounded amounts, one-line email headers, capped import reports, rate-limited
refusal warnings."""

from __future__ import annotations

import pytest

from dunning.customers.importer import MAX_KEPT_ERRORS, ImportReport, RowError
from dunning.domain.contract import MAX_AMOUNT_DUE, InputError, parse_case_input
from dunning.platform.providers.email import OutgoingEmail, build_message
from dunning.webhooks.app import LogRateLimit


def _raw(**kw: object) -> dict[str, object]:
    data: dict[str, object] = {
        "account_id": "acme", "customer_id": "c1", "invoice_id": "i1", "amount_due": 4900,
        "currency": "USD", "billing_link": "https://pay.example.com/i1"}
    data.update(kw)
    return data


def test_amount_due_is_bounded() -> None:
    assert parse_case_input(_raw(amount_due=MAX_AMOUNT_DUE)).amount_due == 10**12
    for amount in (MAX_AMOUNT_DUE + 1, 10**30):
        with pytest.raises(InputError, match="amount_due: must be at most") as err:
            parse_case_input(_raw(amount_due=amount))
        assert err.value.field == "amount_due"


def test_line_breaks_never_reach_an_email_header() -> None:
    msg = build_message(OutgoingEmail(
        sender="Acme\r\n <billing@acme.test>", to="jane@example.com",
        subject="Payment reminder for Jane\r\nBcc: victim@example.com\nX-Evil: 1", body="Pay."))
    assert msg["Subject"] == "Payment reminder for Jane Bcc: victim@example.com X-Evil: 1"
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    raw = msg.as_bytes()
    assert b"\nBcc:" not in raw and b"\nX-Evil:" not in raw


def test_rejected_rows_keep_capped_cells_and_a_capped_list() -> None:
    huge = "9" * 1_000_000
    err = RowError(7, "c" * 10_000, huge, f"{huge!r} is not a phone number")
    assert len(err.phone) < 100 and "1,000,000 characters" in err.phone
    assert len(err.customer_id) < 100 and len(err.reason) < 400
    report = ImportReport()
    report.add_errors([RowError(i, f"c{i}", "x", "bad") for i in range(MAX_KEPT_ERRORS + 5)])
    report.add_errors([RowError(0, "late", "x", "bad")])
    data = report.as_json()
    assert data["rejected"] == MAX_KEPT_ERRORS + 6
    assert len(data["errors"]) == MAX_KEPT_ERRORS and data["errors_omitted"] == 6
    assert "errors_omitted" not in ImportReport().as_json()


def test_log_rate_limit_counts_what_it_suppresses() -> None:
    now = [0.0]
    limit = LogRateLimit(per_minute=3, clock=lambda: now[0])
    assert [limit.allow() for _ in range(5)] == [
        (True, 0), (True, 0), (True, 0), (False, 0), (False, 0)]
    now[0] += 20.0  # one token back (3 a minute)
    assert limit.allow() == (True, 2)
    assert limit.allow() == (False, 0)
