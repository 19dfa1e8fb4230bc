"""Campaigns per plan: the CLI (set, list, show, remove), bad input changing nothing, and the
snapshot a case takes when it starts."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from dunning.cases.campaigns import CampaignInput, set_campaign, snapshot_for
from dunning.platform.db import Database
from dunning.platform.db.models import Campaign
from tests.helpers import add_customer, make_account

Cli = Callable[..., tuple[int, str, str]]


def test_cli_set_show_list_remove(cli: Cli, db: Database, uid: str) -> None:
    account = f"cp-{uid}"
    make_account(db, account)
    code, out, err = cli("campaign", "set", "--account", account, "--plan", "annual",
                         "--schedule", "0d,3d,7d,14d,21d,28d", "--grace", "5d",
                         "--sms-steps", "1,3", "--on-exhausted", "cancel-subscription",
                         "--json")
    assert code == 0, err
    assert json.loads(out) == {
        "account_id": account, "plan": "annual", "schedule": "0d,3d,7d,14d,21d,28d",
        "grace": "5d", "sms_steps": [1, 3], "on_exhausted": "cancel-subscription"}
    code, out, _ = cli("campaign", "set", "--account", account, "--plan", "monthly",
                       "--schedule", "0d,3d,7d,14d", "--json")
    assert json.loads(out)["sms_steps"] == "account"
    code, out, _ = cli("campaign", "list", "--account", account, "--json")
    assert [c["plan"] for c in json.loads(out)["campaigns"]] == ["annual", "monthly"]
    code, out, _ = cli("campaign", "show", "--account", account, "--plan", "annual", "--json")
    assert json.loads(out)["grace"] == "5d"
    code, _, _ = cli("campaign", "remove", "--account", account, "--plan", "annual")
    assert code == 0
    code, _, err = cli("campaign", "show", "--account", account, "--plan", "annual")
    assert code == 1 and "no campaign for plan 'annual'" in err


@pytest.mark.parametrize("args, message", [
    (["--schedule", "0d,banana"], "schedule: 'banana' is not a duration"),
    (["--schedule", "7d,3d"], "offsets must be in increasing order"),
    (["--schedule", "0d,3d", "--sms-steps", "1,3"], "step 3 is past the schedule's 2 steps"),
    (["--schedule", "0d,3d", "--sms-steps", "one"], "sms-steps: 'one' is not a list"),
    (["--schedule", "0d,3d", "--grace", "soon"], "grace: 'soon' is not a duration"),
    (["--schedule", "0d,3d", "--on-exhausted", "explode"], "on-exhausted: 'explode' is not one"),
])
def test_cli_bad_input_changes_nothing(cli: Cli, db: Database, uid: str, args: list[str],
                                       message: str) -> None:
    account = f"cp-{uid}"
    make_account(db, account)
    cli("campaign", "set", "--account", account, "--plan", "gold", "--schedule", "0d,1d")
    code, out, err = cli("campaign", "set", "--account", account, "--plan", "gold", *args)
    assert code == 1 and out == "" and message in err, err
    assert len(err.strip().splitlines()) == 1
    code, out, _ = cli("campaign", "show", "--account", account, "--plan", "gold", "--json")
    assert json.loads(out)["schedule"] == "0d,1d"


def test_cli_unknown_account_or_bad_plan(cli: Cli, db: Database, uid: str) -> None:
    code, _, err = cli("campaign", "set", "--account", f"nope-{uid}", "--plan", "p",
                       "--schedule", "0d")
    assert code == 1 and "unknown account" in err
    make_account(db, f"cp-{uid}")
    code, _, err = cli("campaign", "set", "--account", f"cp-{uid}", "--plan", "a b",
                       "--schedule", "0d")
    assert code == 1 and "plan:" in err
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Campaign)
                        .where(Campaign.account_id == f"cp-{uid}")) == 0


def test_snapshot_by_case_plan_or_the_customers(db: Database, uid: str) -> None:
    account = f"cp-{uid}"
    make_account(db, account)
    add_customer(db, account, "c-annual", plan="annual")
    with db.session() as s:
        set_campaign(s, account, "annual", CampaignInput("0d,7d", "2d", "2",
                                                         "mark-uncollectible"))
    with db.session() as s:
        snap = snapshot_for(s, account, "c-other", "annual")
        assert snap is not None
        assert (snap.offsets, snap.grace_seconds, snap.sms_steps, snap.on_exhausted) == (
            [0, 7 * 86400], 2 * 86400, [2], "mark-uncollectible")
        stored = snapshot_for(s, account, "c-annual", None)  # the customer's stored plan
        assert stored is not None and stored.plan == "annual"
        assert snapshot_for(s, account, "c-other", None) is None
        assert snapshot_for(s, account, "c-other", "monthly") is None
