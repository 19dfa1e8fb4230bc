"""Personal data on the database side: SQL errors never carry their parameters; ids that are
contact details are refused by the import and by `dunning start`, with a clear line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from dunning.accounts.accounts import AccountOptions, create_account
from dunning.platform.db import Database
from dunning.platform.db.models import Customer

Run = Callable[..., tuple[int, str, str]]


def test_sql_errors_hide_their_parameters(db: Database, uid: str) -> None:
    with db.session() as s:
        create_account(s, uid, AccountOptions(company_name="Co"))
    row = dict(account_id=uid, customer_id="c1", email="jane.secret@example.com",
               phone_e164="+14155550177", source="test")
    with db.session() as s:
        s.add(Customer(**row))
    with pytest.raises(IntegrityError) as err, db.session() as s:
        s.add(Customer(**row))
    text = str(err.value)
    assert "jane.secret" not in text and "4155550177" not in text
    assert "hidden due to hide_parameters" in text


def test_import_refuses_ids_that_are_contact_details(cli: Run, db: Database, uid: str,
                                                    tmp_path: Path) -> None:
    with db.session() as s:
        create_account(s, uid, AccountOptions(company_name="Co"))
    path = tmp_path / "c.csv"
    path.write_text("customer_id,phone\njane@example.com,+14155552671\n"
                    "14155552672,+14155552672\ncus_3,+14155552673\n")
    code, out, err = cli("phones", "import", str(path), "--account", uid, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["imported"] == 1 and data["rejected"] == 2
    reasons = [e["reason"] for e in data["errors"]]
    assert "looks like an email address" in reasons[0]
    assert "looks like a phone number" in reasons[1]
    assert [e["customer_id"] for e in data["errors"]] == ["j***@example.com", "+1******2672"]


def test_start_refuses_an_email_as_customer_id(cli: Run, db: Database, uid: str) -> None:
    with db.session() as s:
        create_account(s, uid, AccountOptions(company_name="Co"))
    code, out, err = cli("start", "--account", uid, "--customer", "jane@example.com",
                         "--invoice", "inv1", "--amount", "100", "--currency", "USD",
                         "--billing-link", "https://pay.example.com/x")
    assert code == 1 and out == ""
    assert "customer_id: looks like an email address" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("account", "create", "14155550123", "--company-name", "X")
    assert code == 1 and "looks like a phone number" in err
