"""The real default schedule (0d,3d,7d,14d plus 7d grace) with time skipping."""

from __future__ import annotations

from datetime import timedelta

from temporalio.testing import WorkflowEnvironment

from dunning.platform.db import Database
from tests.fakes.plivo import FakePlivo
from tests.fakes.smtp import SmtpSink
from tests.helpers import (
    add_customer,
    case_input,
    make_account,
    real_activities,
    running_worker,
)


async def test_default_schedule_runs_its_course_in_simulated_weeks(
    skipping_env: WorkflowEnvironment, sqlite_db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    account = f"ts-{uid}"
    phone = "+14155559" + str(int(uid[:5], 16) % 1000).zfill(3)
    make_account(sqlite_db, account, schedule="0d,3d,7d,14d", grace="7d", balance=10)
    add_customer(sqlite_db, account, "cus1", phone=phone, email=f"{uid}@example.com",
                 time_zones=None)
    acts = real_activities(sqlite_db, plivo_server, smtp_server)
    client = skipping_env.client
    async with running_worker(client, f"ts-{uid}", acts):
        handle = await client.start_workflow(
            "DunningWorkflow", case_input(account, "inv1", "cus1"),
            id=f"dunning-{account}-inv1", task_queue=f"ts-{uid}",
        )
        result = await handle.result()
        desc = await handle.describe()
    assert desc.close_time is not None
    elapsed = desc.close_time - desc.start_time
    assert result == {"outcome": "exhausted", "emails_sent": 4, "sms_sent": 4,
                      "credits_spent": 4}
    assert timedelta(days=21) <= elapsed < timedelta(days=22)
    assert len(plivo_server.accepted(phone.lstrip("+"))) == 4
    assert len(smtp_server.to(f"{uid}@example.com")) == 4


async def test_recovery_on_day_five_stops_the_rest(
    skipping_env: WorkflowEnvironment, sqlite_db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    account = f"ts2-{uid}"
    make_account(sqlite_db, account, schedule="0d,3d,7d,14d", grace="7d", sms=False)
    add_customer(sqlite_db, account, "cus1", email=f"r{uid}@example.com")
    acts = real_activities(sqlite_db, plivo_server, smtp_server)
    client = skipping_env.client
    async with running_worker(client, f"ts2-{uid}", acts):
        handle = await client.start_workflow(
            "DunningWorkflow", case_input(account, "inv1", "cus1"),
            id=f"dunning-{account}-inv1", task_queue=f"ts2-{uid}",
        )
        await skipping_env.sleep(timedelta(days=5))
        await handle.signal("payment_recovered")
        result = await handle.result()
    assert result["outcome"] == "recovered"
    assert result["emails_sent"] == 2
    assert len(smtp_server.to(f"r{uid}@example.com")) == 2
