"""Charge as soon as the card is fixed: a new default payment method reported by Stripe pays each
open invoice of the customer's active cases through the real `stripe` SDK (a loopback Stripe),
with an idempotency key; a payment recovers the case, a decline is recorded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from dunning.cases.card_update import idempotency_key
from dunning.platform.db import Database
from dunning.platform.db.models import Account, ChargeAttempt
from dunning.platform.providers.sms import ConsoleSmsProvider
from dunning.webhooks import create_app
from starter import DunningClient
from tests.e2e.test_stripe_events import (
    case_row,
    event,
    invoice,
    make_poster,
    new_secret,
    settings,
    stripe_customer,
)
from tests.fakes.plivo import FakePlivo
from tests.fakes.smtp import SmtpSink
from tests.fakes.stripe_api import FakeStripeApi, decline, server_error
from tests.helpers import make_account, real_activities, running_worker, wait_for


@pytest.fixture
def stripe_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStripeApi]:
    fake = FakeStripeApi()
    monkeypatch.setenv("DUNNING_STRIPE_API_KEY", "sk_test_dunning")
    monkeypatch.setenv("DUNNING_STRIPE_API_URL", fake.url)
    yield fake
    fake.stop()


def _card_changed(cus: str) -> dict[str, object]:
    return event("customer.updated",
                 stripe_customer(cus, None, invoice_settings={"default_payment_method": "pm_new"}),
                 previous={"invoice_settings": {"default_payment_method": "pm_old"}})


async def test_new_card_pays_open_invoices_once(
    temporal_env: WorkflowEnvironment, sqlite_db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, stripe_api: FakeStripeApi, uid: str,
) -> None:
    db = sqlite_db
    account, secret, queue = f"card-{uid}", new_secret(), f"card-q-{uid}"
    make_account(db, account, schedule="0s,1h", grace="1h", sms=False)
    with db.session() as s:
        acct = s.get(Account, account)
        assert acct is not None
        acct.stripe_webhook_secret = secret
    dunning = DunningClient(temporal_env.client, settings(task_queue=queue), db)
    app = create_app(settings(task_queue=queue), db, ConsoleSmsProvider(), dunning)
    http, post = make_poster(app, account, secret)
    ids = {i: f"dunning:{account}:{i}" for i in ("in_a", "in_b", "in_c")}
    async with http, running_worker(temporal_env.client, queue,
                                    real_activities(db, plivo_server, smtp_server)):
        for inv, cus in (("in_a", "cus_1"), ("in_b", "cus_1"), ("in_c", "cus_2")):
            r = await post(event("invoice.payment_failed", invoice(inv, cus)))
            assert r.json()["case"] == "started"
        await wait_for(lambda: all(case_row(db, w) is not None for w in ids.values()))
        # A customer update that does not touch the card pays nothing.
        r = await post(event("customer.updated", stripe_customer("cus_1", None),
                             previous={"name": "Old Name"}))
        assert r.status_code == 200 and "charges" not in r.json()
        assert stripe_api.requests == []
        # Stripe is down: 503, Stripe retries the event, the same keys pay once.
        changed = _card_changed("cus_1")
        stripe_api.script.extend([server_error(), server_error()])  # the SDK retries once
        r = await post(changed)
        assert r.status_code == 503
        assert r.json() == {"error": "billing service unavailable, retry later"}
        # The retry: in_a is declined, in_b is paid.
        stripe_api.script.extend([decline(), (200, {"amount_paid": 4900})])
        r = await post(changed)
        assert r.status_code == 200, r.text
        charges = r.json()["charges"]
        assert [(c["invoice_id"], c["status"]) for c in charges] == [
            ("in_a", "declined"), ("in_b", "paid")]
        assert charges[0]["decline_code"] == "insufficient_funds"
        assert charges[1]["case"] == "signalled"
        result = await temporal_env.client.get_workflow_handle(ids["in_b"]).result()
        assert result["outcome"] == "recovered"
        # The declined case goes on; the other customer's case was not touched.
        for inv in ("in_a", "in_c"):
            handle = temporal_env.client.get_workflow_handle(ids[inv])
            assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        # Stripe's view: every pay call keyed by (invoice, event); one payment took effect.
        pays = [r for r in stripe_api.requests if r.path.endswith("/pay")]
        assert [r.path for r in pays] == ["/v1/invoices/in_a/pay"] * 3 + [
            "/v1/invoices/in_b/pay"]
        assert {r.path: r.idempotency_key for r in pays} == {
            f"/v1/invoices/{i}/pay": idempotency_key(i, str(changed["id"]))
            for i in ("in_a", "in_b")}
        assert [r.path for r in stripe_api.effects] == ["/v1/invoices/in_b/pay"]
        # The same event once more: a duplicate, no call.
        before = len(stripe_api.requests)
        assert (await post(changed)).json()["status"] == "duplicate"
        assert len(stripe_api.requests) == before
        # Off for the account: a new card pays nothing.
        with db.session() as s:
            acct = s.get(Account, account)
            assert acct is not None
            acct.charge_on_card_update = False
        pm = {"id": "pm_2", "object": "payment_method", "customer": "cus_1"}
        r = await post(event("payment_method.attached", pm))
        assert r.json()["charges"] == [] and len(stripe_api.requests) == before
        for inv in ("in_a", "in_c"):
            await temporal_env.client.get_workflow_handle(ids[inv]).signal(
                "cancel", {"reason": "test cleanup"})
    with db.session() as s:
        rows = s.scalars(select(ChargeAttempt).where(ChargeAttempt.account_id == account)
                         .order_by(ChargeAttempt.invoice_id)).all()
        assert [(c.invoice_id, c.status, c.decline_code) for c in rows] == [
            ("in_a", "declined", "insufficient_funds"), ("in_b", "paid", None)]
