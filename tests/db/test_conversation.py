"""One conversation per customer (the daily limit across a customer's cases), operator pause and
exclusion, and the `{open_invoices}` / `{total_due}` template variables."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from dunning.customers import conversation
from dunning.domain.templates import TemplateContext
from dunning.platform.db import Database
from dunning.platform.db.models import Account, Case, Customer, Message
from tests.helpers import add_customer, make_account

Cli = Callable[..., tuple[int, str, str]]
NOW = datetime.now(UTC)


def _sent(db: Database, account: str, customer: str, workflow: str, channel: str,
          at: datetime, status: str = "sent") -> None:
    with db.session() as s:
        s.add(Message(workflow_id=f"{account}:{workflow}", run_id="r", step=1, channel=channel,
                      account_id=account, customer_id=customer, status=status, created_at=at,
                      updated_at=at))


def _hold(db: Database, account: str, customer: str, channel: str, workflow: str
          ) -> conversation.Hold | None:
    with db.session() as s:
        return conversation.hold_for(s, account, customer, channel, f"{account}:{workflow}",
                                     NOW)


def test_daily_limit_across_cases_per_channel(db: Database, uid: str) -> None:
    account = f"cv-{uid}"
    make_account(db, account)
    add_customer(db, account, "c1")
    sent_at = NOW - timedelta(hours=3)
    _sent(db, account, "c1", "wf-a", "email", sent_at)
    held = _hold(db, account, "c1", "email", "wf-b")
    assert held is not None and "one conversation per customer" in held.reason
    assert abs((held.until - (sent_at + timedelta(hours=24))).total_seconds()) < 1
    assert _hold(db, account, "c1", "email", "wf-a") is None  # its own case: never held
    assert _hold(db, account, "c1", "sms", "wf-b") is None  # the other channel is free
    _sent(db, account, "c2", "wf-c", "email", sent_at)  # another customer: no effect
    assert _hold(db, account, "c3", "email", "wf-b") is None
    _sent(db, account, "c4", "wf-x", "email", NOW - timedelta(hours=25))  # older than a day
    assert _hold(db, account, "c4", "email", "wf-y") is None
    _sent(db, account, "c5", "wf-z", "email", NOW - timedelta(hours=1), status="skipped")
    assert _hold(db, account, "c5", "email", "wf-y") is None  # skipped: nothing went out
    with db.session() as s:
        acct = s.get(Account, account)
        assert acct is not None
        acct.daily_message_limit = 2
    assert _hold(db, account, "c1", "email", "wf-b") is None  # 1 of 2
    with db.session() as s:
        s.get(Account, account).daily_message_limit = 0  # type: ignore[union-attr]
    _sent(db, account, "c1", "wf-d", "email", NOW)
    assert _hold(db, account, "c1", "email", "wf-b") is None  # no limit


def test_operator_pause_until_and_indefinite(db: Database, uid: str) -> None:
    account = f"cv-{uid}"
    make_account(db, account)
    add_customer(db, account, "c1")
    until = NOW + timedelta(days=2)
    with db.session() as s:
        conversation.pause(s, account, "c1", until, NOW)
    held = _hold(db, account, "c1", "sms", "wf")
    assert held is not None and held.until == until and "paused" in held.reason
    with db.session() as s:
        conversation.pause(s, account, "c1", None, NOW)
    held = _hold(db, account, "c1", "email", "wf")
    assert held is not None and held.until == NOW + conversation.PAUSE_RECHECK
    with db.session() as s:
        conversation.resume(s, account, "c1")
    assert _hold(db, account, "c1", "email", "wf") is None


def test_open_invoices_and_total_due(db: Database, uid: str) -> None:
    account = f"cv-{uid}"
    make_account(db, account)
    with db.session() as s:
        for inv, amount, cur, state in (("i1", 4900, "USD", "active"),
                                        ("i2", 1000, "USD", "active"),
                                        ("i3", 500, "EUR", "active"),
                                        ("i4", 9999, "USD", "recovered")):
            s.add(Case(workflow_id=f"{account}-{inv}", account_id=account, customer_id="c1",
                       invoice_id=inv, amount_due=amount, currency=cur, state=state,
                       failed_at=NOW))
    ctx = TemplateContext("Acme", "https://x", "Jo", "$49.00", "i1", 0, "help")
    with db.session() as s:
        assert conversation.open_cases(s, account, "c1") == (3, "€5.00 + $59.00")
        filled = conversation.with_open_cases(s, ctx, ("You owe {total_due} on "
                                                       "{open_invoices} invoices",),
                                              account, "c1")
        untouched = conversation.with_open_cases(s, ctx, ("{amount}",), account, "c1")
    assert filled.values()["open_invoices"] == "3"
    assert filled.values()["total_due"] == "€5.00 + $59.00"
    assert untouched.values()["open_invoices"] == "1"
    assert untouched.values()["total_due"] == "$49.00"


def test_cli_pause_resume_exclude(cli: Cli, db: Database, uid: str) -> None:
    account = f"cv-{uid}"
    make_account(db, account)
    add_customer(db, account, "c1")
    code, out, err = cli("customer", "pause", "--account", account, "--customer", "c1",
                         "--until", "2099-01-01", "--json")
    assert code == 0, err
    assert json.loads(out)["paused_until"].startswith("2099-01-01T00:00:00")
    code, out, _ = cli("customer", "exclude", "--account", account, "--customer", "c1",
                       "--json")
    assert json.loads(out)["excluded"] is True
    code, out, _ = cli("customer", "resume", "--account", account, "--customer", "c1",
                       "--json")
    assert json.loads(out) == {"account_id": account, "customer_id": "c1", "paused": False,
                               "paused_until": None, "excluded": False}
    for args, message in (
        (["pause", "--until", "yesterday"], "until: 'yesterday' is not a date"),
        (["pause", "--until", "2001-01-01"], "is not in the future"),
    ):
        code, out, err = cli("customer", *args, "--account", account, "--customer", "c1")
        assert code == 1 and message in err and out == ""
    code, _, err = cli("customer", "pause", "--account", account, "--customer", "nobody")
    assert code == 1 and "unknown customer 'nobody'" in err
    with db.session() as s:
        row = s.get(Customer, (account, "c1"))
        assert row is not None and not row.paused and not row.excluded
    code, _, err = cli("account", "update", account, "--daily-message-limit", "500")
    assert code == 1 and "daily-message-limit: must be 0" in err
    code, out, _ = cli("account", "update", account, "--daily-message-limit", "2", "--json")
    assert json.loads(out)["daily_message_limit"] == 2
