"""DunningWorkflow end to end: a real dev server, real databases, Plivo's SDK against a loopback
server, a real SMTP server. Schedules are seconds long so the suite stays quick."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.events import EventActivities
from dunning.credits import ledger
from dunning.platform.db import Database
from dunning.platform.db.models import Case, CreditEntry, Message, OptOut
from dunning.platform.settings import Settings
from starter import DunningClient
from tests.fakes.plivo import FakePlivo, Scripted
from tests.fakes.smtp import SmtpSink
from tests.helpers import (
    add_customer,
    case_input,
    make_account,
    query_status,
    real_activities,
    running_worker,
    sms_paused,
    wait_for,
)

PHONE = "+14155552671"


@pytest.fixture
def stack(temporal_env: WorkflowEnvironment, db: Database, plivo_server: FakePlivo,
          smtp_server: SmtpSink, uid: str):
    """Everything a case needs, isolated by a unique account, task queue and phone number."""
    return {
        "env": temporal_env, "db": db, "plivo": plivo_server, "smtp": smtp_server,
        "account": f"acct-{uid}", "queue": f"q-{uid}", "uid": uid,
    }


def _phone(uid: str) -> str:
    return "+1415555" + str(int(uid, 16) % 10000).zfill(4)


async def _start(stack, invoice: str, customer: str, **extra):
    client = stack["env"].client
    return await client.start_workflow(
        "DunningWorkflow",
        case_input(stack["account"], invoice, customer, **extra),
        id=f"dunning-{stack['account']}-{invoice}",
        task_queue=stack["queue"],
    )


def _settings(stack) -> Settings:
    return Settings(task_queue=stack["queue"], database_url=stack["db"].url)


async def test_full_schedule_sends_every_step_on_both_channels(stack):
    db, plivo, smtp = stack["db"], stack["plivo"], stack["smtp"]
    phone = _phone(stack["uid"])
    make_account(db, stack["account"], balance=10)
    add_customer(db, stack["account"], "cus1", phone=phone, email=f"{stack['uid']}@example.com")
    acts = real_activities(db, plivo, smtp)
    async with running_worker(stack["env"].client, stack["queue"], acts):
        handle = await _start(stack, "inv1", "cus1")
        result = await handle.result()
    assert result == {"outcome": "exhausted", "emails_sent": 3, "sms_sent": 3,
                      "credits_spent": 3}
    texts = [m.text for m in plivo.accepted(phone.lstrip("+"))]
    assert len(texts) == 3
    assert all(t.endswith("Reply STOP to unsubscribe.") for t in texts)
    assert all("https://pay.example.com/inv1" in t and "$49.00" in t for t in texts)
    assert all(m.url and "/webhooks/plivo/status?ref=" in m.url
               for m in plivo.accepted(phone.lstrip("+")))
    mails = smtp.to(f"{stack['uid']}@example.com")
    assert len(mails) == 3
    assert len({m["Message-ID"] for m in mails}) == 3
    with db.session() as s:
        assert ledger.balance_of(s, stack["account"]) == 7
        assert ledger.ledger_sum(s, stack["account"]) == 7
        rows = s.scalars(select(Message).where(Message.account_id == stack["account"])).all()
        assert sorted((r.step, r.channel, r.status) for r in rows) == [
            (1, "email", "sent"), (1, "sms", "sent"), (2, "email", "sent"), (2, "sms", "sent"),
            (3, "email", "sent"), (3, "sms", "sent"),
        ]
        assert all(r.provider_id for r in rows)


async def test_pause_for_credits_email_goes_on_and_topup_resumes_latest_only(stack):
    db, plivo, smtp = stack["db"], stack["plivo"], stack["smtp"]
    phone = _phone(stack["uid"])
    make_account(db, stack["account"], schedule="0s,1s,2s,30s", grace="1s", balance=1)
    add_customer(db, stack["account"], "cus1", phone=phone, email=f"{stack['uid']}@example.com")
    acts = real_activities(db, plivo, smtp)
    client = stack["env"].client
    async with running_worker(client, stack["queue"], acts):
        handle = await _start(stack, "inv1", "cus1")

        async def paused_with_emails() -> bool:
            st = await query_status(handle)
            return st["sms_paused"] and len(smtp.to(f"{stack['uid']}@example.com")) >= 3

        await wait_for(paused_with_emails, timeout=20)
        st = await query_status(handle)
        assert st["state"] == "active"
        sms = {r["step"]: r for r in st["reminders"] if r["channel"] == "sms"}
        assert sms[1]["status"] == "sent"
        # Step 2's SMS was overtaken by step 3 while paused: recorded, not sent later.
        assert sms[2]["status"] == "skipped" and "later reminder" in sms[2]["reason"]
        assert sms[3]["status"] == "pending"
        assert len(plivo.accepted(phone.lstrip("+"))) == 1
        # Operators find it through the search attribute.
        query = f"DunningAccountId = '{stack['account']}' AND SmsPaused = true"
        await wait_for(lambda: _count(client, query), timeout=10)

        dunning = DunningClient(client, _settings(stack), db)
        top = await dunning.top_up(stack["account"], 5)
        assert top.balance == 5 and top.woken == 1
        await wait_for(lambda: len(plivo.accepted(phone.lstrip("+"))) == 2, timeout=10)
        st = await query_status(handle)
        assert not st["sms_paused"]
        sms = {r["step"]: r for r in st["reminders"] if r["channel"] == "sms"}
        assert sms[3]["status"] == "sent"
        await handle.signal("payment_recovered")
        result = await handle.result()
    assert result["outcome"] == "recovered"
    assert result["sms_sent"] == 2 and result["emails_sent"] == 3
    with db.session() as s:
        assert ledger.balance_of(s, stack["account"]) == 4
        assert ledger.ledger_sum(s, stack["account"]) == 4
        assert ledger.waiters(s, stack["account"]) == []


async def _count(client, query: str) -> bool:
    return (await client.count_workflows(query)).count > 0


async def test_recovery_mid_schedule_stops_everything(stack):
    db, plivo, smtp = stack["db"], stack["plivo"], stack["smtp"]
    phone = _phone(stack["uid"])
    make_account(db, stack["account"], schedule="0s,4s,8s", grace="1s")
    add_customer(db, stack["account"], "cus1", phone=phone, email=f"{stack['uid']}@example.com")
    acts = real_activities(db, plivo, smtp)
    async with running_worker(stack["env"].client, stack["queue"], acts):
        handle = await _start(stack, "inv1", "cus1")
        await wait_for(lambda: len(plivo.accepted(phone.lstrip("+"))) == 1)
        await wait_for(lambda: len(smtp.to(f"{stack['uid']}@example.com")) == 1)
        await handle.signal("payment_recovered", {"amount": 4900})
        result = await handle.result()
        st = await query_status(handle)
    assert result == {"outcome": "recovered", "emails_sent": 1, "sms_sent": 1,
                      "credits_spent": 1}
    assert st["state"] == "recovered"
    later = [r for r in st["reminders"] if r["step"] > 1]
    assert later and all(r["status"] == "skipped" and "recovered" in r["reason"] for r in later)
    assert len(plivo.accepted(phone.lstrip("+"))) == 1
    assert len(smtp.to(f"{stack['uid']}@example.com")) == 1


async def test_cancel_with_reason(stack):
    db = stack["db"]
    make_account(db, stack["account"], schedule="0s,20s", sms=False)
    add_customer(db, stack["account"], "cus1", email=f"{stack['uid']}@example.com")
    acts = real_activities(db, stack["plivo"], stack["smtp"])
    async with running_worker(stack["env"].client, stack["queue"], acts):
        handle = await _start(stack, "inv1", "cus1")
        await wait_for(lambda: len(stack["smtp"].to(f"{stack['uid']}@example.com")) == 1)
        await handle.signal("cancel", {"reason": "invoice voided"})
        result = await handle.result()
        st = await query_status(handle)
    assert result["outcome"] == "canceled"
    assert st["state"] == "canceled"
    sms1 = next(r for r in st["reminders"] if r["step"] == 1 and r["channel"] == "sms")
    assert sms1["status"] == "skipped" and sms1["reason"] == "SMS is off for this account"
    step2 = [r for r in st["reminders"] if r["step"] == 2]
    assert all("canceled: invoice voided" in r["reason"] for r in step2)


async def test_late_start_sends_only_the_latest_due_step(stack):
    db, plivo = stack["db"], stack["plivo"]
    phone = _phone(stack["uid"])
    make_account(db, stack["account"], schedule="0d,3d,7d,14d", grace="7d")
    add_customer(db, stack["account"], "cus1", phone=phone, email=f"{stack['uid']}@example.com",
                 time_zones=None)
    acts = real_activities(db, plivo, stack["smtp"])
    failed_at = (datetime.now(UTC) - timedelta(days=8)).isoformat()
    async with running_worker(stack["env"].client, stack["queue"], acts):
        handle = await _start(stack, "inv1", "cus1", failed_at=failed_at)
        await wait_for(lambda: len(stack["smtp"].to(f"{stack['uid']}@example.com")) == 1)
        await wait_for(lambda: len(plivo.accepted(phone.lstrip("+"))) == 1)

        async def step3_recorded() -> bool:  # the provider saw it; now the case records it
            reminders = (await query_status(handle))["reminders"]
            return all(r["status"] == "sent" for r in reminders if r["step"] == 3)

        await wait_for(step3_recorded)
        st = await query_status(handle)
        await handle.signal("cancel")
        await handle.result()
    by = {(r["step"], r["channel"]): r for r in st["reminders"]}
    for step in (1, 2):
        for ch in ("email", "sms"):
            assert by[(step, ch)]["status"] == "skipped"
            assert "later reminder" in by[(step, ch)]["reason"]
    assert by[(3, "email")]["status"] == "sent" and by[(3, "sms")]["status"] == "sent"
    assert by[(4, "email")]["status"] == "pending"
    assert st["next_reminder_at"] == by[(4, "email")]["due_at"]
    texts = [m.text for m in plivo.accepted(phone.lstrip("+"))]
    assert "8 days" not in texts[0]  # the default SMS template has no days_overdue


async def test_a_lower_case_currency_is_accepted_and_stored_upper_case(stack):
    """`"currency": "eur"` (as Stripe sends it) through any Temporal client starts the case."""
    make_account(stack["db"], stack["account"], schedule="0s,30s")
    raw = case_input(stack["account"], "inv1", "cus1", currency="eur")
    acts = real_activities(stack["db"], stack["plivo"], stack["smtp"])
    async with running_worker(stack["env"].client, stack["queue"], acts):
        handle = await stack["env"].client.start_workflow(
            "DunningWorkflow", raw, id=f"dunning-{stack['account']}-inv1",
            task_queue=stack["queue"],
        )

        def registered() -> bool:
            with stack["db"].session() as s:
                return s.get(Case, f"dunning-{stack['account']}-inv1") is not None

        await wait_for(registered, timeout=15)
        await handle.signal("cancel", {"reason": "test over"})
        result = await handle.result()
    assert result["outcome"] == "canceled"
    with stack["db"].session() as s:
        case = s.get(Case, f"dunning-{stack['account']}-inv1")
        assert case is not None and case.currency == "EUR"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"billing_link": None}, "billing_link"),
        ({"amount_due": "49.00"}, "amount_due"),
        ({"amount_due": -5}, "amount_due"),
        ({"currency": "XYZ"}, "currency"),
        ({"failed_at": "yesterday"}, "failed_at"),
        ({"customer_email": "not-an-email"}, "customer_email"),
        ({"surprise": 1}, "surprise"),
    ],
)
async def test_bad_input_fails_at_once_naming_the_field(stack, change, field):
    make_account(stack["db"], stack["account"])
    raw = case_input(stack["account"], "inv1", "cus1")
    for k, v in change.items():
        if v is None:
            raw.pop(k)
        else:
            raw[k] = v
    acts = real_activities(stack["db"], stack["plivo"], stack["smtp"])
    async with running_worker(stack["env"].client, stack["queue"], acts):
        handle = await stack["env"].client.start_workflow(
            "DunningWorkflow", raw, id=f"dunning-{stack['account']}-inv1",
            task_queue=stack["queue"],
        )
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
    cause = info.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.non_retryable
    assert cause.type == "InvalidInput"
    assert field in cause.message


async def test_unknown_account_fails_without_retry(stack):
    acts = real_activities(stack["db"], stack["plivo"], stack["smtp"])
    async with running_worker(stack["env"].client, stack["queue"], acts):
        handle = await _start(stack, "inv1", "cus1")
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
    assert "account_id" in str(info.value.cause)


async def test_transient_provider_failure_is_retried_once_delivered(stack):
    db, plivo = stack["db"], stack["plivo"]
    phone = _phone(stack["uid"])
    make_account(db, stack["account"], schedule="0s", grace="0s")
    add_customer(db, stack["account"], "cus1", phone=phone)
    plivo.push(Scripted(status=500), Scripted(status=503))
    acts = real_activities(db, plivo, stack["smtp"])
    async with running_worker(stack["env"].client, stack["queue"], acts):
        result = await (await _start(stack, "inv1", "cus1")).result()
    got = [r for r in plivo.requests if r.dst == phone.lstrip("+")]
    assert [r.accepted for r in got] == [False, False, True]
    assert result["sms_sent"] == 1 and result["credits_spent"] == 1
    with db.session() as s:
        assert ledger.balance_of(s, stack["account"]) == 99
        debits = s.scalars(select(CreditEntry).where(
            CreditEntry.account_id == stack["account"], CreditEntry.kind == "sms_debit")).all()
        assert len(debits) == 1  # the retries reused one reservation


async def test_permanent_provider_failure_is_recorded_and_refunded(stack):
    db, plivo = stack["db"], stack["plivo"]
    phone = _phone(stack["uid"])
    make_account(db, stack["account"], schedule="0s", grace="0s")
    add_customer(db, stack["account"], "cus1", phone=phone)
    plivo.push(Scripted(status=400, body={"error": "invalid dst number"}))
    acts = real_activities(db, plivo, stack["smtp"])
    async with running_worker(stack["env"].client, stack["queue"], acts):
        handle = await _start(stack, "inv1", "cus1")
        result = await handle.result()
        st = await query_status(handle)
    assert result["sms_sent"] == 0 and result["credits_spent"] == 0
    sms = next(r for r in st["reminders"] if r["channel"] == "sms")
    assert sms["status"] == "failed" and "invalid dst number" in sms["reason"]
    assert len([r for r in plivo.requests if r.dst == phone.lstrip("+")]) == 1
    with db.session() as s:
        assert ledger.balance_of(s, stack["account"]) == 100
        kinds = [e.kind for e in s.scalars(select(CreditEntry).where(
            CreditEntry.account_id == stack["account"]).order_by(CreditEntry.id))]
        assert kinds == ["topup", "sms_debit", "refund"]


async def test_opted_out_and_missing_phone_are_skipped_with_reasons(stack):
    db, plivo = stack["db"], stack["plivo"]
    phone = _phone(stack["uid"])
    make_account(db, stack["account"], schedule="0s", grace="0s")
    add_customer(db, stack["account"], "cus1", phone=phone)
    add_customer(db, stack["account"], "cus2", phone=None)
    with db.session() as s:
        s.add(OptOut(account_id=stack["account"], phone_e164=phone, opted_out=True,
                     source="test", keyword="STOP"))
    acts = real_activities(db, plivo, stack["smtp"])
    async with running_worker(stack["env"].client, stack["queue"], acts):
        h1 = await _start(stack, "inv1", "cus1")
        h2 = await _start(stack, "inv2", "cus2")
        r1, r2 = await h1.result(), await h2.result()
        s1, s2 = await query_status(h1), await query_status(h2)
    assert r1["sms_sent"] == 0 and r1["emails_sent"] == 1
    assert r2["sms_sent"] == 0 and r2["emails_sent"] == 1
    assert next(r for r in s1["reminders"] if r["channel"] == "sms")["reason"] == (
        "the number opted out (STOP)")
    assert next(r for r in s2["reminders"] if r["channel"] == "sms")["reason"] == (
        "no valid phone number for this customer")
    assert plivo.accepted(phone.lstrip("+")) == []


async def test_recovery_withdraws_a_send_still_queued_behind_the_sms_rate_limit(stack):
    """No SMS worker polls (as when the rate-limited queue is backed up): the step's SMS is
    queued. Recovery ends the case at once, and the queued send never reaches the provider."""
    from concurrent.futures import ThreadPoolExecutor

    from temporalio.worker import Worker

    from workflows import DunningWorkflow

    db, plivo = stack["db"], stack["plivo"]
    phone = _phone(stack["uid"])
    make_account(db, stack["account"], schedule="0s,30s", grace="1s")
    add_customer(db, stack["account"], "cus1", phone=phone, email=f"{stack['uid']}@example.com")
    acts = real_activities(db, plivo, stack["smtp"])
    with ThreadPoolExecutor(max_workers=4) as ex:
        worker = Worker(stack["env"].client, task_queue=stack["queue"],
                        workflows=[DunningWorkflow],
                        activities=[*acts.all(), *EventActivities(db).all()],
                        activity_executor=ex)
        async with worker:
            handle = await _start(stack, "inv1", "cus1")
            await wait_for(lambda: len(stack["smtp"].to(f"{stack['uid']}@example.com")) == 1)
            await handle.signal("payment_recovered")
            result = await asyncio.wait_for(handle.result(), timeout=15)
            st = await query_status(handle)
    assert result["outcome"] == "recovered" and result["sms_sent"] == 0
    sms1 = next(r for r in st["reminders"] if r["step"] == 1 and r["channel"] == "sms")
    assert sms1["status"] == "skipped"
    assert sms1["reason"] == "case recovered before it was sent"
    assert plivo.accepted(phone.lstrip("+")) == []
    with db.session() as s:
        assert ledger.balance_of(s, stack["account"]) == 100


async def test_a_woken_case_is_not_shown_paused_while_its_send_waits_its_turn(stack):
    """The wake sets the case's credits aside and signals it: from then on it is not paused
    (SmsPaused false, for operators and the paused gauge), even though its send still waits
    behind the SMS queue (here: no SMS worker polls it, as with a backed-up rate limit)."""
    from concurrent.futures import ThreadPoolExecutor

    from worker import build_workers

    db, plivo, smtp = stack["db"], stack["plivo"], stack["smtp"]
    phone = _phone(stack["uid"])
    make_account(db, stack["account"], schedule="0s,60s", grace="1s", balance=0)
    add_customer(db, stack["account"], "cus1", phone=phone, email=f"{stack['uid']}@example.com")
    acts = real_activities(db, plivo, smtp)
    client = stack["env"].client
    settings = Settings(task_queue=stack["queue"], sms_rate_limit=0, activity_workers=4)
    query = f"DunningAccountId = '{stack['account']}' AND SmsPaused = true"
    with ThreadPoolExecutor(max_workers=4) as ex:
        cases, sms = build_workers(client, settings, acts, ex)
        async with cases:
            async with sms:
                handle = await _start(stack, "inv1", "cus1")
                await wait_for(lambda: sms_paused(handle), timeout=20)
                await wait_for(lambda: _count(client, query), timeout=10)
            # The SMS worker is gone: a send scheduled from now on stays queued.
            top = await DunningClient(client, _settings(stack), db).top_up(stack["account"], 3)
            assert top.woken == 1
            await wait_for(lambda: _not(sms_paused(handle)), timeout=10)
            await wait_for(lambda: _not(_count(client, query)), timeout=10)
            st = await query_status(handle)
            sms1 = next(r for r in st["reminders"] if r["step"] == 1 and r["channel"] == "sms")
            assert sms1["status"] == "pending"  # not sent: still queued
            assert plivo.accepted(phone.lstrip("+")) == []
            with db.session() as s:  # served: its credit is set aside for it
                assert ledger.balance_of(s, stack["account"]) == 2
                assert ledger.granted_count(s, stack["account"]) == 1
            await handle.signal("payment_recovered")
            result = await asyncio.wait_for(handle.result(), timeout=15)
    assert result["outcome"] == "recovered" and result["sms_sent"] == 0
    with db.session() as s:  # the queued send was withdrawn and the grant went back
        assert ledger.balance_of(s, stack["account"]) == 3
        assert ledger.ledger_sum(s, stack["account"]) == 3
        assert ledger.waiters(s, stack["account"]) == []


async def _not(value) -> bool:
    return not await value
