"""Stricter state quiet hours in the send activity, and the `account show` warning."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select
from temporalio.testing import ActivityEnvironment

from activities import DunningActivities
from dunning.domain.contract import MessageRequest
from dunning.platform.db import Database
from dunning.platform.db.models import Message
from dunning.platform.providers.email import ConsoleEmailProvider
from dunning.platform.providers.sms import ConsoleSmsProvider
from tests.helpers import add_customer, make_account

Run = Callable[..., tuple[int, str, str]]
NY = ZoneInfo("America/New_York")


def _request(account: str, now: datetime) -> MessageRequest:
    return MessageRequest(
        workflow_id=f"dunning:{account}:inv1", account_id=account, customer_id="cus1",
        invoice_id="inv1", step=1, step_count=1, amount_due=4900, currency="USD",
        billing_link="https://pay.example.com/inv1", failed_at=now, now=now,
    )


def _env(uid: str) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, workflow_run_id=f"run-{uid}", workflow_id="wf")
    return env


def test_a_florida_number_at_2030_waits_with_the_window_in_the_reason(
    db: Database, uid: str
) -> None:
    make_account(db, uid, schedule="0s", quiet_hours="08:00-21:00")
    add_customer(db, uid, "cus1", phone="+13055550123", time_zones="America/New_York")
    sms = ConsoleSmsProvider(echo=False)
    acts = DunningActivities(db, sms, ConsoleEmailProvider(echo=False))
    at = datetime(2026, 6, 10, 20, 30, tzinfo=NY)
    held = _env(uid).run(acts.send_sms, _request(uid, at))
    assert held.status == "quiet_hours"
    assert held.retry_at == datetime(2026, 6, 11, 8, 0, tzinfo=NY)
    assert "Florida law allows 08:00-20:00" in held.reason
    assert sms.sent == []
    with db.session() as s:
        assert s.scalars(select(Message).where(Message.account_id == uid)).all() == []
    # The next morning it goes.
    sent = _env(uid).run(acts.send_sms, _request(uid, datetime(2026, 6, 11, 8, 0, tzinfo=NY)))
    assert sent.status == "sent" and len(sms.sent) == 1


def test_a_new_york_number_at_2030_is_sent(db: Database, uid: str) -> None:
    make_account(db, uid, schedule="0s", quiet_hours="08:00-21:00")
    add_customer(db, uid, "cus1", phone="+12125550123", time_zones="America/New_York")
    sms = ConsoleSmsProvider(echo=False)
    acts = DunningActivities(db, sms, ConsoleEmailProvider(echo=False))
    result = _env(uid).run(acts.send_sms, _request(uid, datetime(2026, 6, 10, 20, 30, tzinfo=NY)))
    assert result.status == "sent"


def test_account_show_warns_when_quiet_hours_are_off(cli: Run, db: Database, uid: str) -> None:
    make_account(db, uid, quiet_hours="08:00-21:00")
    code, out, err = cli("account", "show", uid)
    assert code == 0 and "warning" not in err
    code, out, err = cli("account", "update", uid, "--quiet-hours", "off", "--json")
    assert code == 0
    assert json.loads(out)["warnings"] and "quiet hours are off" in json.loads(out)["warnings"][0]
    code, out, err = cli("account", "show", uid)
    assert code == 0 and "warning: quiet hours are off" in err.replace("\n", " ")
