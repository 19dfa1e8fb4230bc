"""One conversation per customer, counted at the providers: a customer with three failed
invoices gets one email and one SMS per day across them; the held reminders say why in the
cases' status; the one that goes out can say how many invoices are open. An excluded customer's
case ends at once, and its status and events say why."""

from __future__ import annotations

from sqlalchemy import select
from temporalio.testing import WorkflowEnvironment

from dunning.accounts.messaging import set_email_template
from dunning.customers import conversation
from dunning.platform.db import Database
from dunning.platform.db.models import OutboxEvent
from tests.fakes.plivo import FakePlivo
from tests.fakes.smtp import SmtpSink
from tests.helpers import (
    add_customer,
    case_input,
    make_account,
    plain_text,
    query_status,
    real_activities,
    running_worker,
    wait_for,
)


async def test_three_invoices_one_message_per_channel_per_day(
    temporal_env: WorkflowEnvironment, db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    client = temporal_env.client
    account, queue = f"conv-{uid}", f"conv-q-{uid}"
    make_account(db, account, schedule="2s,1h", grace="1h", balance=50)
    phone = f"+1415556{int(uid[:4], 16) % 10000:04d}"
    email = f"conv.{uid}@example.com"
    add_customer(db, account, "c1", phone=phone, email=email)
    with db.session() as s:
        set_email_template(s, account, "{open_invoices} open invoices",
                           "You owe {total_due} in all: {billing_link}")
    async with running_worker(client, queue, real_activities(db, plivo_server, smtp_server)):
        handles = []
        for i in range(3):
            handles.append(await client.start_workflow(
                "DunningWorkflow", case_input(account, f"in{i}", "c1"),
                id=f"dunning-{account}-in{i}", task_queue=queue,
            ))
            await wait_for(lambda n=i + 1: _registered(db, account) >= n)  # type: ignore[misc]

        async def all_step_1_settled_or_held() -> bool:
            held = sent = 0
            for h in handles:
                for r in (await query_status(h))["reminders"]:
                    if r["step"] != 1:
                        continue
                    held += r["status"] == "pending" and r["reason"].startswith("held: one")
                    sent += r["status"] == "sent"
            return held == 4 and sent == 2

        await wait_for(all_step_1_settled_or_held, timeout=30)
        statuses = [await query_status(h) for h in handles]
        for h in handles:
            await h.signal("cancel", {"reason": "test cleanup"})
            await h.result()
    mails = smtp_server.to(email)
    texts = [r for r in plivo_server.requests if r.dst == phone.lstrip("+")]
    assert len(mails) == 1 and len(texts) == 1  # one per channel across the three cases
    assert mails[0]["Subject"] == "3 open invoices"
    assert "$147.00" in plain_text(mails[0])
    held = [s for s in statuses if "one conversation per customer" in s["waiting_for"]]
    assert len(held) >= 2  # the later cases wait, and say until when


def _registered(db: Database, account: str) -> int:
    from sqlalchemy import func

    from dunning.platform.db.models import Case

    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Case)
                            .where(Case.account_id == account)) or 0)


async def test_excluded_customer_case_ends_at_once_saying_why(
    temporal_env: WorkflowEnvironment, db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    client = temporal_env.client
    account, queue = f"excl-{uid}", f"excl-q-{uid}"
    make_account(db, account, schedule="0s,1h", grace="1h")
    email = f"excl.{uid}@example.com"
    add_customer(db, account, "c1", phone=None, email=email)
    with db.session() as s:
        conversation.exclude(s, account, "c1")
    wf = f"dunning-{account}-inx"
    async with running_worker(client, queue, real_activities(db, plivo_server, smtp_server)):
        handle = await client.start_workflow(
            "DunningWorkflow", case_input(account, "inx", "c1"), id=wf, task_queue=queue,
        )
        result = await handle.result()
        status = await query_status(handle)
    assert result["outcome"] == "canceled" and result["emails_sent"] == 0
    assert all("excluded" in r["reason"] for r in status["reminders"])
    assert smtp_server.to(email) == []
    with db.session() as s:
        types = {t: d for t, d in s.execute(select(OutboxEvent.type, OutboxEvent.data)
                                            .where(OutboxEvent.case_id == wf))}
    assert "excluded" in types["case.canceled"]["reason"]
