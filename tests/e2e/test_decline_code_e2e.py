"""A decline code chooses the first message: a template stored under `decline:expired_card`
reaches the case that failed for an expired card, the default the others; `{decline_code}` is a
template variable."""

from __future__ import annotations

from temporalio.testing import WorkflowEnvironment

from dunning.accounts.messaging import set_email_template
from dunning.platform.db import Database
from tests.fakes.plivo import FakePlivo
from tests.fakes.smtp import SmtpSink
from tests.helpers import (
    add_customer,
    case_input,
    make_account,
    plain_text,
    real_activities,
    running_worker,
)


async def test_decline_code_selects_the_template(
    temporal_env: WorkflowEnvironment, db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    client = temporal_env.client
    account, queue = f"dc-{uid}", f"dc-q-{uid}"
    make_account(db, account, schedule="0s", grace="1s", sms=False)
    with db.session() as s:
        set_email_template(s, account, "Your card expired",
                           "Please add a new card ({decline_code}): {billing_link}",
                           step=1, plan="decline:expired_card")
        set_email_template(s, account, "Payment failed ({decline_code})",
                           "Please pay: {billing_link}")
    mails = {}
    async with running_worker(client, queue, real_activities(db, plivo_server, smtp_server)):
        for cid, code in (("c1", "expired_card"), ("c2", "insufficient_funds"), ("c3", None)):
            email = f"{cid}.{uid}@example.com"
            add_customer(db, account, cid, phone=None, email=email)
            extra = {"decline_code": code} if code else {}
            handle = await client.start_workflow(
                "DunningWorkflow", case_input(account, f"in_{cid}", cid, **extra),
                id=f"dunning-{account}-in_{cid}", task_queue=queue,
            )
            await handle.result()
            mails[cid] = smtp_server.to(email)
    assert [m["Subject"] for m in mails["c1"]] == ["Your card expired"]
    assert "(expired_card)" in plain_text(mails["c1"][0])
    assert [m["Subject"] for m in mails["c2"]] == ["Payment failed (insufficient_funds)"]
    assert [m["Subject"] for m in mails["c3"]] == ["Payment failed ()"]
