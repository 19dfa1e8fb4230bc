"""A plan's campaign drives its cases' timing, SMS steps and end action; a case keeps the
campaign it started with when the campaign changes; other plans keep the account's schedule."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from temporalio.testing import WorkflowEnvironment

from dunning.cases.campaigns import CampaignInput, set_campaign
from dunning.platform.db import Database
from dunning.platform.temporal import temporal_binary
from tests.fakes.plivo import FakePlivo
from tests.fakes.smtp import SmtpSink
from tests.fakes.stripe_api import FakeStripeApi
from tests.helpers import (
    add_customer,
    case_input,
    make_account,
    query_status,
    real_activities,
    running_worker,
    wait_for,
)


@pytest.fixture
def stripe_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStripeApi]:
    fake = FakeStripeApi()
    monkeypatch.setenv("DUNNING_STRIPE_API_KEY", "sk_test_dunning")
    monkeypatch.setenv("DUNNING_STRIPE_API_URL", fake.url)
    yield fake
    fake.stop()


async def test_plan_campaign_drives_timing_and_is_a_snapshot(
    temporal_env: WorkflowEnvironment, sqlite_db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, stripe_api: FakeStripeApi, uid: str,
) -> None:
    db, client = sqlite_db, temporal_env.client
    account, queue = f"camp-{uid}", f"camp-q-{uid}"
    make_account(db, account, schedule="0s,1h", grace="1h", balance=50)
    phone = f"+1415555{int(uid[:4], 16) % 10000:04d}"
    add_customer(db, account, "c1", phone=phone, email=f"c1.{uid}@example.com")
    add_customer(db, account, "c2", phone=None, email=f"c2.{uid}@example.com")
    with db.session() as s:
        set_campaign(s, account, "annual", CampaignInput("0s,2s,4s", "1s", "1",
                                                         "mark-uncollectible"))
    async with running_worker(client, queue, real_activities(db, plivo_server, smtp_server)):
        annual = await client.start_workflow(
            "DunningWorkflow", case_input(account, "in_y", "c1", plan="annual"),
            id=f"dunning-{account}-in_y", task_queue=queue,
        )
        monthly = await client.start_workflow(
            "DunningWorkflow", case_input(account, "in_m", "c2", plan="monthly"),
            id=f"dunning-{account}-in_m", task_queue=queue,
        )

        async def first_email_sent() -> bool:
            st = await query_status(annual)
            return any(r["status"] == "sent" and r["channel"] == "email"
                       for r in st["reminders"])

        await wait_for(first_email_sent, timeout=20)
        # The campaign changes under the running case: it keeps the one it started with.
        with db.session() as s:
            set_campaign(s, account, "annual", CampaignInput("0s,1h", "1h", "none", "none"))
        result = await asyncio.wait_for(annual.result(), 30)
        status = await query_status(annual)
        monthly_status = await query_status(monthly)
        await monthly.signal("cancel", {"reason": "test cleanup"})
        await monthly.result()
    assert result["outcome"] == "exhausted"
    assert status["campaign"]["plan"] == "annual"
    steps = {(r["step"], r["channel"]): r for r in status["reminders"]}
    assert sorted({s for s, _ in steps}) == [1, 2, 3]  # the campaign's three steps
    assert all(steps[(i, "email")]["status"] == "sent" for i in (1, 2, 3))
    assert steps[(1, "sms")]["status"] == "sent"  # SMS on step 1 only
    for i in (2, 3):
        assert steps[(i, "sms")]["status"] == "skipped"
        assert "off for step" in steps[(i, "sms")]["reason"]
    assert sum(1 for r in plivo_server.requests if r.dst == phone.lstrip("+")) == 1
    # The campaign's end action, as it was at the start (not the later "none").
    assert status["end_action"]["action"] == "mark-uncollectible"
    assert [r.path for r in stripe_api.effects] == ["/v1/invoices/in_y/mark_uncollectible"]
    # A plan without a campaign follows the account's schedule (2 steps, the second in 1h).
    assert "campaign" not in monthly_status
    assert sorted({r["step"] for r in monthly_status["reminders"]}) == [1, 2]


async def test_deliberate_reschedule_by_reset(
    temporal_env: WorkflowEnvironment, sqlite_db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    """README's recipe: `temporal workflow reset --type FirstWorkflowTask` runs the case again
    from its start under the campaign as it is now; overtaken steps are skipped."""
    db, client = sqlite_db, temporal_env.client
    account, queue = f"resch-{uid}", f"resch-q-{uid}"
    make_account(db, account, sms=False)
    add_customer(db, account, "c1", phone=None, email=f"r.{uid}@example.com")
    with db.session() as s:
        set_campaign(s, account, "gold", CampaignInput("0s,1h", "1h"))
    wf = f"dunning-{account}-in_r"
    failed_at = datetime.now(UTC).isoformat()
    async with running_worker(client, queue, real_activities(db, plivo_server, smtp_server)):
        handle = await client.start_workflow(
            "DunningWorkflow", case_input(account, "in_r", "c1", plan="gold",
                                          failed_at=failed_at),
            id=wf, task_queue=queue,
        )
        await wait_for(lambda: smtp_server.to(f"r.{uid}@example.com"), timeout=20)
        with db.session() as s:
            set_campaign(s, account, "gold", CampaignInput("0s,3s,8s", "1s"))
        assert (await query_status(handle))["campaign"]["offsets"] == [0, 3600]  # unchanged
        started = datetime.fromisoformat(failed_at)
        # Step 2 of the new campaign is due by now, step 3 not yet.
        await asyncio.sleep(max(0.0, 3.5 - (datetime.now(UTC) - started).total_seconds()))
        proc = await asyncio.create_subprocess_exec(
            temporal_binary(), "workflow", "reset", "--address",
            client.service_client.config.target_host, "--workflow-id", wf,
            "--type", "FirstWorkflowTask", "--reason", "rescheduled",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        assert proc.returncode == 0, err
        latest = client.get_workflow_handle(wf)
        result = await asyncio.wait_for(latest.result(), 30)
        status = await query_status(latest)
    assert result["outcome"] == "exhausted"
    assert status["campaign"]["offsets"] == [0, 3, 8]
    email = {r["step"]: r for r in status["reminders"] if r["channel"] == "email"}
    assert email[1]["status"] == "skipped" and "later reminder" in email[1]["reason"]
    assert email[2]["status"] == "sent" and email[3]["status"] == "sent"
    assert len(smtp_server.to(f"r.{uid}@example.com")) == 3  # step 1 once, then 2 and 3
