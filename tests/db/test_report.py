"""`dunning report`: exact figures from rows inserted directly, on SQLite and PostgreSQL; the
JSON, table and HTML outputs through the command line entry point."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import dunning.cli as cli_module
from dunning.cases.report import build_report, human_duration, parse_since
from dunning.cases.report_html import render_html
from dunning.domain.contract import InputError
from dunning.platform.db import Database
from dunning.platform.db.models import Account, Case, CreditEntry, Message

BASE = datetime(2026, 3, 1, tzinfo=UTC)
Run = Callable[..., tuple[int, str, str]]


def _case(acct: str, n: int, state: str, amount: int, currency: str = "USD", *,
          failed: timedelta = timedelta(0), ended: timedelta | None = None,
          recovered: int = 0, channel: str | None = None) -> Case:
    return Case(
        workflow_id=f"dunning-{acct}-inv{n}", account_id=acct, customer_id=f"c{n}",
        invoice_id=f"inv{n}", amount_due=amount, currency=currency, state=state,
        failed_at=BASE + failed, started_at=BASE + failed,
        ended_at=None if ended is None else BASE + ended, recovered_amount=recovered,
        last_channel=channel,
    )


def _msg(acct: str, wf: str, step: int, channel: str, status: str, credits: int = 0,
         at: timedelta = timedelta(0)) -> Message:
    return Message(workflow_id=wf, run_id="run", step=step, channel=channel, account_id=acct,
                   customer_id="c", status=status, credits=credits, created_at=BASE + at)


def _entry(acct: str, kind: str, amount: int, at: timedelta) -> CreditEntry:
    return CreditEntry(account_id=acct, kind=kind, amount=amount, balance_after=0,
                       created_at=BASE + at)


@pytest.fixture
def seeded(db: Database, uid: str) -> str:
    """An account with cases in every state, reminders, HELP/STOP replies and a ledger; plus a
    second account whose rows must never count."""
    acct, other = f"rep{uid}", f"oth{uid}"
    day = timedelta(days=1)
    with db.session() as s:
        s.add(Account(id=acct, company_name="Acme <Labs> & Co", credit_price_minor=2,
                      credit_currency="USD", credit_balance=94))
        s.add(Account(id=other, company_name="Other"))
        s.flush()
        s.add_all([
            _case(acct, 1, "recovered", 4900, ended=timedelta(hours=2), recovered=4900,
                  channel="email"),
            _case(acct, 2, "recovered", 2500, ended=timedelta(days=1, hours=10),
                  recovered=2000, channel="sms"),
            _case(acct, 3, "recovered", 1000, "EUR", failed=day,
                  ended=timedelta(days=1, hours=4), recovered=1000, channel=None),
            _case(acct, 4, "exhausted", 3000, ended=timedelta(days=14), channel="sms"),
            _case(acct, 5, "canceled", 1500, ended=timedelta(hours=1)),
            _case(acct, 6, "active", 9900),
            _case(acct, 7, "active", 500, "EUR", failed=2 * day),
            _case(other, 1, "recovered", 777, ended=timedelta(hours=1), recovered=777,
                  channel="email"),
        ])
        wf = f"dunning-{acct}-inv1"
        s.add_all([
            _msg(acct, wf, 1, "email", "sent"),
            _msg(acct, wf, 2, "email", "sent"),
            _msg(acct, wf, 3, "email", "sent"),
            _msg(acct, wf, 4, "email", "failed"),
            _msg(acct, wf, 5, "email", "skipped", at=day),
            _msg(acct, wf, 1, "sms", "sent", 2, at=day),
            _msg(acct, wf, 2, "sms", "sent", 2, at=day),
            _msg(acct, wf, 3, "sms", "failed", 1, at=day),
            _msg(acct, wf, 4, "sms", "unknown", 2, at=day),
            _msg(acct, wf, 5, "sms", "skipped", at=day),
            _msg(acct, f"help:{acct}", 0, "sms", "sent", at=day),
            _msg(acct, f"stop:{acct}", 0, "sms", "sent", at=day),
            _msg(other, f"dunning-{other}-inv1", 1, "sms", "sent", 5, at=day),
        ])
        s.add_all([
            _entry(acct, "topup", 100, timedelta(0)),
            _entry(acct, "sms_debit", -2, timedelta(hours=1)),
            _entry(acct, "sms_debit", -2, timedelta(hours=2)),
            _entry(acct, "sms_debit", -1, day),
            _entry(acct, "sms_debit", -2, day + timedelta(hours=1)),
            _entry(acct, "refund", 1, day + timedelta(hours=2)),
            _entry(other, "sms_debit", -5, day),
        ])
    return acct


def _usd_eur(usd: int, eur: int, usd_text: str, eur_text: str) -> dict[str, Any]:
    return {"EUR": {"amount_minor": eur, "formatted": eur_text},
            "USD": {"amount_minor": usd, "formatted": usd_text}}


def test_figures_are_exact(db: Database, seeded: str) -> None:
    now = datetime(2026, 3, 20, 9, 30, tzinfo=UTC)
    with db.session() as s:
        r = build_report(s, seeded, now=now)
    assert r["account_id"] == seeded
    assert r["company_name"] == "Acme <Labs> & Co"
    assert r["since"] is None
    assert r["generated_at"] == "2026-03-20T09:30:00+00:00"
    assert r["cases"] == {
        "total": 7, "active": 2, "ended": 5,
        "by_state": {"active": 2, "recovered": 3, "exhausted": 1, "canceled": 1},
        "amount_due": _usd_eur(21800, 1500, "$218.00", "€15.00"),
        "outstanding": _usd_eur(9900, 500, "$99.00", "€5.00"),
    }
    assert r["recovered"] == {
        "count": 3, "amount": _usd_eur(6900, 1000, "$69.00", "€10.00"),
        "cases_by_currency": {"EUR": 1, "USD": 2},
    }
    assert r["recovery_rate"] == {"of_ended": 0.6, "of_all": 0.4286}
    assert r["recoveries_by_channel"] == {
        "email": {"count": 1, "amount": {"USD": {"amount_minor": 4900, "formatted": "$49.00"}}},
        "sms": {"count": 1, "amount": {"USD": {"amount_minor": 2000, "formatted": "$20.00"}}},
        "none": {"count": 1, "amount": {"EUR": {"amount_minor": 1000, "formatted": "€10.00"}}},
    }
    # 2 h, 1 d 10 h, and 4 h (failed a day later): the median is 4 h
    assert r["median_time_to_recovery"] == {"seconds": 14400.0, "human": "4h", "cases": 3}
    assert r["sms_spend"] == {
        "credits": 6, "debited": 7, "refunded": 1, "balance": 94,
        "price": {"amount_minor": 12, "currency": "USD", "formatted": "$0.12",
                  "credit_price_minor": 2},
    }
    assert r["messages"] == {
        "by_channel": {
            "email": {"sent": 3, "failed": 1, "skipped": 1, "unknown": 0},
            "sms": {"sent": 2, "failed": 1, "skipped": 1, "unknown": 1},
        },
        "sms_credits": 7,
        "compliance_replies": 2,
    }
    assert r["daily"] == {
        "recoveries": [
            {"date": "2026-03-01", "count": 1,
             "amount": {"USD": {"amount_minor": 4900, "formatted": "$49.00"}}},
            {"date": "2026-03-02", "count": 2,
             "amount": _usd_eur(2000, 1000, "$20.00", "€10.00")},
        ],
        "sms_spend": [{"date": "2026-03-01", "credits": 4},
                      {"date": "2026-03-02", "credits": 2}],
    }
    json.dumps(r)  # JSON-ready as it is


def test_since_limits_cases_messages_and_ledger(db: Database, seeded: str) -> None:
    with db.session() as s:
        r = build_report(s, seeded, since=parse_since("2026-03-01T12:00:00Z"))
    assert r["since"] == "2026-03-01T12:00:00+00:00"
    assert r["cases"]["by_state"] == {"active": 1, "recovered": 1, "exhausted": 0,
                                      "canceled": 0}
    assert r["recovered"]["amount"] == {"EUR": {"amount_minor": 1000, "formatted": "€10.00"}}
    assert r["recovery_rate"] == {"of_ended": 1.0, "of_all": 0.5}
    assert r["median_time_to_recovery"]["seconds"] == 14400.0
    assert r["messages"]["by_channel"]["email"] == {"sent": 0, "failed": 0, "skipped": 1,
                                                    "unknown": 0}
    assert r["messages"]["by_channel"]["sms"]["sent"] == 2
    assert r["sms_spend"]["credits"] == 2
    assert r["sms_spend"]["price"]["formatted"] == "$0.04"
    assert r["daily"]["sms_spend"] == [{"date": "2026-03-02", "credits": 2}]


def test_empty_account_without_price(db: Database, uid: str) -> None:
    with db.session() as s:
        s.add(Account(id=f"empty{uid}", company_name="Empty"))
    with db.session() as s:
        r = build_report(s, f"empty{uid}")
    assert r["cases"]["total"] == 0
    assert r["cases"]["by_state"] == {"active": 0, "recovered": 0, "exhausted": 0,
                                      "canceled": 0}
    assert r["recovered"] == {"count": 0, "amount": {}, "cases_by_currency": {}}
    assert r["recovery_rate"] == {"of_ended": None, "of_all": None}
    assert r["median_time_to_recovery"] == {"seconds": None, "human": "-", "cases": 0}
    assert r["sms_spend"]["price"] is None
    assert r["sms_spend"]["credits"] == 0
    assert r["daily"] == {"recoveries": [], "sms_spend": []}
    page = render_html(r)
    assert "No recoveries in this period" in page
    _check_svgs(page, expected=1)  # the (empty) outcomes donut


def test_unknown_account(db: Database, uid: str) -> None:
    with db.session() as s, pytest.raises(InputError, match="unknown account"):
        build_report(s, f"nobody{uid}")


def test_parse_since_and_durations() -> None:
    assert parse_since("2026-03-01") == datetime(2026, 3, 1, tzinfo=UTC)
    assert parse_since("2026-03-01T10:00:00+02:00") == datetime(2026, 3, 1, 8, tzinfo=UTC)
    assert parse_since("2026-03-01T10:00:00") == datetime(2026, 3, 1, 10, tzinfo=UTC)
    with pytest.raises(InputError, match="since"):
        parse_since("last tuesday")
    assert human_duration(30) == "30s"
    assert human_duration(42 * 60) == "42m"
    assert human_duration(5 * 3600 + 12 * 60) == "5h 12m"
    assert human_duration(3 * 86400 + 4 * 3600 + 59) == "3d 4h"
    assert human_duration(2 * 86400) == "2d"


# --- HTML -------------------------------------------------------------------------------------


def _check_svgs(page: str, expected: int) -> list[ET.Element]:
    """Every inline <svg> parses as XML in the SVG namespace; nothing external is loaded."""
    blocks = re.findall(r"<svg\b.*?</svg>", page, flags=re.S)
    assert len(blocks) == expected
    roots = [ET.fromstring(b) for b in blocks]
    assert all(r.tag == "{http://www.w3.org/2000/svg}svg" for r in roots)
    assert all(r.get("viewBox") for r in roots)
    lowered = page.lower()
    for needle in ("<script", "<link", "src=", "href=", "@import", "url("):
        assert needle not in lowered
    return roots


def test_html_has_figures_and_valid_svg(db: Database, seeded: str) -> None:
    with db.session() as s:
        page = render_html(build_report(s, seeded))
    assert page.startswith("<!doctype html>")
    assert "Acme &lt;Labs&gt; &amp; Co" in page and "<Labs>" not in page
    for figure in ("$69.00", "€10.00", "60.0%", "42.9%", "$0.12", "6 credits", "4h",
                   "2 HELP/STOP replies"):
        assert figure in page, figure
    roots = _check_svgs(page, expected=4)  # outcomes, channels, recoveries, SMS spend
    ns = "{http://www.w3.org/2000/svg}"
    titles = [t.text for r in roots for t in r.iter(f"{ns}title")]
    assert "Recovered: 3" in titles and "Exhausted: 1" in titles and "Active: 2" in titles
    assert "Email: 1" in titles and "SMS: 1" in titles and "No reminder: 1" in titles
    assert "2026-03-02: 2 recovered (€10.00 + $20.00)" in titles
    assert "2026-03-01: 4 credits" in titles and "2026-03-02: 2 credits" in titles


# --- the command --------------------------------------------------------------------------------


def test_report_is_a_dunning_command() -> None:
    assert any(c.name == "report" for c in cli_module.app.registered_commands)


def test_cli_json(cli: Run, seeded: str) -> None:
    code, out, err = cli("report", "--account", seeded, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert out.count("\n") == 1
    assert data["cases"]["total"] == 7
    assert data["recovered"]["amount"]["USD"] == {"amount_minor": 6900, "formatted": "$69.00"}
    assert data["recovery_rate"]["of_ended"] == 0.6
    assert data["sms_spend"]["credits"] == 6


def test_cli_table(cli: Run, seeded: str) -> None:
    code, out, err = cli("report", "--account", seeded)
    assert code == 0, err
    flat = " ".join(out.split())
    for figure in ("7 (2 active, 3 recovered, 1 exhausted, 1 canceled)", "€10.00 + $69.00",
                   "60.0% of ended cases", "42.9% of all", "€5.00 + $99.00",
                   "6 credits ($0.12), 1 refunded",
                   "plus 2 HELP/STOP replies (not reminders)"):
        assert figure in flat, figure


def test_cli_html_and_since(cli: Run, seeded: str, tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    code, out, err = cli("report", "--account", seeded, "--html", str(target),
                         "--since", "2026-03-01T12:00:00Z", "--json")
    assert code == 0, err
    assert json.loads(out)["cases"]["total"] == 2
    page = target.read_text(encoding="utf-8")
    assert "since 2026-03-01" in page and "100.0%" in page
    _check_svgs(page, expected=4)


def test_cli_errors(cli: Run, seeded: str, uid: str, tmp_path: Path) -> None:
    code, out, err = cli("report", "--account", f"nobody{uid}", "--json")
    assert (code, out) == (1, "")
    assert "unknown account" in err and "Traceback" not in err
    code, out, err = cli("report", "--account", seeded, "--since", "yesterday")
    assert (code, out) == (1, "")
    assert "since" in err
    code, _, err = cli("report", "--account", seeded, "--html",
                       str(tmp_path / "missing" / "r.html"))
    assert code == 1
    assert "cannot write" in err
