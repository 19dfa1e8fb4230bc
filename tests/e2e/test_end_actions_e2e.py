"""A case runs out: the account's end-of-dunning action reaches a loopback Stripe through the
real SDK exactly once (one idempotency key, also across a Stripe 500), and it shows in the
case's status and in the `case.exhausted` event."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select
from temporalio.testing import WorkflowEnvironment

from dunning.cases.end_actions import idempotency_key
from dunning.platform.db import Database
from dunning.platform.db.models import Account, OutboxEvent
from tests.fakes.plivo import FakePlivo
from tests.fakes.smtp import SmtpSink
from tests.fakes.stripe_api import FakeStripeApi, server_error
from tests.helpers import case_input, make_account, query_status, real_activities, running_worker


@pytest.fixture
def stripe_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStripeApi]:
    fake = FakeStripeApi()
    monkeypatch.setenv("DUNNING_STRIPE_API_KEY", "sk_test_dunning")
    monkeypatch.setenv("DUNNING_STRIPE_API_URL", fake.url)
    yield fake
    fake.stop()


async def test_exhausted_case_cancels_the_subscription_once(
    temporal_env: WorkflowEnvironment, db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, stripe_api: FakeStripeApi, uid: str,
) -> None:
    client = temporal_env.client
    account, queue = f"end-{uid}", f"end-q-{uid}"
    make_account(db, account, schedule="0s,1s", grace="1s", sms=False)
    with db.session() as s:
        acct = s.get(Account, account)
        assert acct is not None
        acct.on_exhausted = "cancel-subscription"
    stripe_api.subscriptions["in_end"] = "sub_end"
    stripe_api.script.append(server_error())  # Stripe fails once: retried with the same key
    wf = f"dunning-{account}-in_end"
    async with running_worker(client, queue, real_activities(db, plivo_server, smtp_server)):
        handle = await client.start_workflow(
            "DunningWorkflow", case_input(account, "in_end", "c1"), id=wf, task_queue=queue,
        )
        result = await handle.result()
        status = await query_status(handle)
    assert result["outcome"] == "exhausted"
    assert status["end_action"] == {"action": "cancel-subscription", "status": "done",
                                    "stripe_ref": "sub_end", "error": None}
    writes = [r for r in stripe_api.requests if r.method != "GET"]
    assert [(r.method, r.path) for r in writes] == [("DELETE", "/v1/subscriptions/sub_end")] * 2
    assert {r.idempotency_key for r in writes} == {idempotency_key(wf, "cancel-subscription")}
    assert len(stripe_api.effects) == 1  # exactly once at Stripe
    with db.session() as s:
        (data,) = s.scalars(select(OutboxEvent.data).where(
            OutboxEvent.case_id == wf, OutboxEvent.type == "case.exhausted")).all()
    assert data["end_action"]["action"] == "cancel-subscription"
    assert data["end_action"]["status"] == "done"


async def test_recovered_case_takes_no_action(
    temporal_env: WorkflowEnvironment, db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, stripe_api: FakeStripeApi, uid: str,
) -> None:
    client = temporal_env.client
    account, queue = f"end-{uid}", f"end-q-{uid}"
    make_account(db, account, schedule="0s,30s", grace="1s", sms=False)
    with db.session() as s:
        acct = s.get(Account, account)
        assert acct is not None
        acct.on_exhausted = "mark-uncollectible"
    async with running_worker(client, queue, real_activities(db, plivo_server, smtp_server)):
        handle = await client.start_workflow(
            "DunningWorkflow", case_input(account, "in_ok", "c1"),
            id=f"dunning-{account}-in_ok", task_queue=queue,
        )
        await handle.signal("payment_recovered")
        assert (await handle.result())["outcome"] == "recovered"
        assert "end_action" not in await query_status(handle)
    assert stripe_api.requests == []
