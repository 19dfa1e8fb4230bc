"""A provider outage longer than the give-up, under time skipping: Plivo answers 503 and SMTP
451 for 30 hours. After the 24 h give-up every reminder row of the step is final (`failed` with
the provider's last reason) on both channels, the SMS credits are back, the case's status and
the database agree, and once the providers return the next due step goes out normally."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from temporalio.testing import WorkflowEnvironment

from dunning.credits import ledger
from dunning.platform.db import Database
from dunning.platform.db.models import Message
from tests.fakes.plivo import FakePlivo
from tests.fakes.smtp import SmtpSink
from tests.helpers import add_customer, case_input, make_account, real_activities, running_worker


async def test_a_day_long_outage_ends_cleanly_and_the_next_step_goes_out(
    skipping_env: WorkflowEnvironment, sqlite_db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    db = sqlite_db
    account = f"lo-{uid}"
    phone = "+14155558" + str(int(uid[:5], 16) % 1000).zfill(3)
    email = f"lo{uid}@example.com"
    make_account(db, account, schedule="0d,2d", grace="1d", balance=10)
    add_customer(db, account, "cus1", phone=phone, email=email, time_zones=None)
    acts = real_activities(db, plivo_server, smtp_server)
    client = skipping_env.client
    plivo_server.reset()
    smtp_server.reset()
    plivo_server.down = smtp_server.down = True
    try:
        async with running_worker(client, f"lo-{uid}", acts):
            handle = await client.start_workflow(
                "DunningWorkflow", case_input(account, "inv1", "cus1"),
                id=f"dunning-{account}-inv1", task_queue=f"lo-{uid}",
            )
            await skipping_env.sleep(timedelta(hours=30))
            with db.session() as s:
                rows = s.scalars(select(Message).where(Message.account_id == account)).all()
                assert ledger.balance_of(s, account) == 10  # the given-up SMS refunded
            assert {(r.step, r.channel, r.status) for r in rows} == {
                (1, "sms", "failed"), (1, "email", "failed")}
            assert all(r.reason and r.reason.startswith("provider kept failing: ")
                       for r in rows)
            status = await handle.query("status")
            step1 = {r["channel"]: r for r in status["reminders"] if r["step"] == 1}
            db_reasons = {r.channel: r.reason for r in rows}
            assert {c: r["status"] for c, r in step1.items()} == {"sms": "failed",
                                                                  "email": "failed"}
            for channel, reminder in step1.items():  # the case and the log say the same
                assert reminder["reason"] == db_reasons[channel]
            plivo_server.down = smtp_server.down = False
            result = await handle.result()
        assert result["emails_sent"] == 1 and result["sms_sent"] == 1
        assert len(plivo_server.accepted(phone.lstrip("+"))) == 1
        assert len(smtp_server.to(email)) == 1
    finally:
        plivo_server.reset()
        smtp_server.reset()
    with db.session() as s:
        rows = s.scalars(select(Message).where(Message.account_id == account)).all()
        assert {(r.step, r.channel): r.status for r in rows} == {
            (1, "sms"): "failed", (1, "email"): "failed", (2, "sms"): "sent",
            (2, "email"): "sent"}
        assert ledger.balance_of(s, account) == 9 == ledger.ledger_sum(s, account)
