"""The billing systems' client: light to import, and one set of case fields."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import starter
from dunning.domain.contract import CaseInput, parse_case_input


def test_import_starter_loads_no_database_code() -> None:
    code = (
        "import json, sys, starter; "
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('sqlalchemy', 'phonenumbers', 'activities', 'worker'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_case_request_is_the_workflow_input() -> None:
    assert starter.CaseRequest is CaseInput
    request = starter.CaseRequest(
        account_id="acme", customer_id="cus_1", invoice_id="inv_1", amount_due=4900,
        currency="USD", billing_link="https://pay.example/i/1",
        failed_at=datetime(2026, 1, 31, 9, tzinfo=UTC), plan="pro",
    )
    raw = request.as_input()
    assert raw == {
        "account_id": "acme", "customer_id": "cus_1", "invoice_id": "inv_1",
        "amount_due": 4900, "currency": "USD", "billing_link": "https://pay.example/i/1",
        "failed_at": "2026-01-31T09:00:00+00:00", "plan": "pro",
    }
    assert parse_case_input(raw) == request


def test_starter_keeps_its_public_names() -> None:
    for name in ("CaseNotFound", "CaseRequest", "DunningClient", "StartResult", "TopUpResult"):
        assert hasattr(starter, name)
    from starter.client import DunningClient

    assert DunningClient is starter.DunningClient
