"""End-of-dunning actions through the real `stripe` SDK against a loopback Stripe: once per case
with an idempotency key, retried safely, refused answers recorded; the account setting's CLI."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import select

from dunning.cases.billing import BillingUnavailable, StripeBilling
from dunning.cases.end_actions import EndActions, idempotency_key
from dunning.platform.db import Database
from dunning.platform.db.models import Account, CaseAction
from tests.fakes.stripe_api import FakeStripeApi, server_error
from tests.helpers import make_account

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def stripe_api() -> Iterator[FakeStripeApi]:
    fake = FakeStripeApi()
    yield fake
    fake.stop()


def _actions(db: Database, fake: FakeStripeApi) -> EndActions:
    return EndActions(db, StripeBilling("sk_test_dunning", fake.url, max_network_retries=0))


def _set(db: Database, account: str, action: str) -> None:
    with db.session() as s:
        acct = s.get(Account, account)
        assert acct is not None
        acct.on_exhausted = action


def test_mark_uncollectible_once_with_the_key(db: Database, uid: str,
                                              stripe_api: FakeStripeApi) -> None:
    account, wf = f"ea-{uid}", f"dunning:ea-{uid}:in_1"
    make_account(db, account)
    _set(db, account, "mark-uncollectible")
    actions = _actions(db, stripe_api)
    first = actions.take(wf, account, "in_1")
    again = actions.take(wf, account, "in_1")  # a retried activity: recorded, not called
    assert (first.action, first.status, first.stripe_ref) == ("mark-uncollectible", "done",
                                                              "in_1")
    assert again == first
    (req,) = stripe_api.requests
    assert (req.method, req.path) == ("POST", "/v1/invoices/in_1/mark_uncollectible")
    assert req.idempotency_key == idempotency_key(wf, "mark-uncollectible")


@pytest.mark.parametrize("action, method, path, form", [
    ("cancel-subscription", "DELETE", "/v1/subscriptions/sub_9", {}),
    ("pause-collection", "POST", "/v1/subscriptions/sub_9",
     {"pause_collection[behavior]": "keep_as_draft"}),
])
def test_subscription_actions(db: Database, uid: str, stripe_api: FakeStripeApi, action: str,
                              method: str, path: str, form: dict[str, str]) -> None:
    account, wf = f"ea-{uid}", f"dunning:ea-{uid}:in_2"
    make_account(db, account)
    _set(db, account, action)
    stripe_api.subscriptions["in_2"] = "sub_9"
    out = _actions(db, stripe_api).take(wf, account, "in_2")
    assert (out.status, out.stripe_ref) == ("done", "sub_9")
    (effect,) = stripe_api.effects
    assert (effect.method, effect.path) == (method, path)
    assert effect.idempotency_key == idempotency_key(wf, action)
    assert all(effect.form.get(k) == v for k, v in form.items())


def test_stripe_down_keeps_it_pending_then_the_same_key_acts_once(
    db: Database, uid: str, stripe_api: FakeStripeApi
) -> None:
    account, wf = f"ea-{uid}", f"dunning:ea-{uid}:in_3"
    make_account(db, account)
    _set(db, account, "mark-uncollectible")
    stripe_api.script.append(server_error())
    actions = _actions(db, stripe_api)
    with pytest.raises(BillingUnavailable):
        actions.take(wf, account, "in_3")
    with db.session() as s:
        row = s.scalar(select(CaseAction).where(CaseAction.workflow_id == wf))
        assert row is not None and row.status == "pending"
    assert actions.take(wf, account, "in_3").status == "done"
    keys = {r.idempotency_key for r in stripe_api.requests}
    assert len(stripe_api.requests) == 2 and keys == {idempotency_key(wf, "mark-uncollectible")}
    assert len(stripe_api.effects) == 1


def test_refused_is_recorded_and_final(db: Database, uid: str,
                                       stripe_api: FakeStripeApi) -> None:
    account, wf = f"ea-{uid}", f"dunning:ea-{uid}:in_4"
    make_account(db, account)
    _set(db, account, "cancel-subscription")  # the invoice has no subscription
    out = _actions(db, stripe_api).take(wf, account, "in_4")
    assert out.status == "failed" and "has no subscription" in (out.error or "")
    assert _actions(db, stripe_api).take(wf, account, "in_4") == out
    assert stripe_api.effects == []


def test_none_calls_nothing(db: Database, uid: str, stripe_api: FakeStripeApi) -> None:
    account = f"ea-{uid}"
    make_account(db, account)
    out = _actions(db, stripe_api).take(f"dunning:{account}:in_5", account, "in_5")
    assert (out.action, out.status) == ("none", "none") and stripe_api.requests == []


def test_cli_on_exhausted_and_card_update_switch(cli: Cli, db: Database, uid: str) -> None:
    account = f"ea-{uid}"
    make_account(db, account)
    code, out, err = cli("account", "show", account, "--json")
    assert code == 0, err
    assert json.loads(out)["on_exhausted"] == "none"
    assert json.loads(out)["charge_on_card_update"] is True
    code, out, err = cli("account", "update", account, "--on-exhausted", "pause-collection",
                         "--charge-on-card-update", "off", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert (data["on_exhausted"], data["charge_on_card_update"]) == ("pause-collection", False)
    before = json.loads(cli("account", "show", account, "--json")[1])["schedule"]
    code, out, err = cli("account", "update", account, "--schedule", "0d,1d",
                         "--on-exhausted", "delete-everything")
    assert code == 1 and out == ""
    assert "on-exhausted: 'delete-everything' is not one of none, cancel-subscription" in err
    with db.session() as s:
        acct = s.get(Account, account)
        assert acct is not None
        assert (acct.on_exhausted, acct.schedule) == ("pause-collection", before)
    code, _, err = cli("account", "update", account, "--charge-on-card-update", "maybe")
    assert code == 1 and "charge-on-card-update: 'maybe' is not on or off" in err


def test_report_counts_end_actions(cli: Cli, db: Database, uid: str,
                                   stripe_api: FakeStripeApi) -> None:
    account = f"ea-{uid}"
    make_account(db, account)
    _set(db, account, "mark-uncollectible")
    actions = _actions(db, stripe_api)
    for i in range(3):
        actions.take(f"dunning:{account}:in_r{i}", account, f"in_r{i}")
    code, out, err = cli("report", "--account", account, "--json")
    assert code == 0, err
    assert json.loads(out)["end_actions"] == {"mark-uncollectible": {"done": 3}}
    code, out, _ = cli("report", "--account", account)
    assert "on exhausted: mark-uncollectible" in out and "3 done" in out
