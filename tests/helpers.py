"""Shared test helpers: accounts and customers straight in the database, a worker in-process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from activities import DunningActivities
from dunning.accounts.accounts import AccountOptions, create_account
from dunning.credits import ledger
from dunning.credits.followups import BalanceFollowups
from dunning.platform.db import Database
from dunning.platform.db.models import Account, Customer
from dunning.platform.providers.email import SmtpEmailProvider
from dunning.platform.providers.sms import PlivoSmsProvider
from dunning.platform.settings import Settings
from tests.fakes.plivo import FakePlivo
from tests.fakes.smtp import SmtpSink
from worker import build_workers, running

SENDER = "+14155550100"


def make_account(
    db: Database,
    account_id: str,
    *,
    schedule: str = "0s,2s,4s",
    grace: str = "1s",
    sms: bool = True,
    balance: int = 100,
    quiet_hours: str = "off",
    support_contact: str | None = "help@acme.test",
) -> None:
    with db.session() as s:
        create_account(
            s,
            account_id,
            AccountOptions(
                company_name="Acme Cloud", sms_sender=SENDER, email_from="billing@acme.test",
                schedule=schedule, grace=grace, quiet_hours=quiet_hours,
                support_contact=support_contact,
            ),
        )
        acct = s.get(Account, account_id)
        assert acct is not None
        acct.sms_enabled = sms
        if balance:
            ledger.top_up(s, account_id, balance)


def add_customer(
    db: Database,
    account_id: str,
    customer_id: str,
    *,
    phone: str | None = "+14155552671",
    email: str | None = None,
    name: str | None = "Jane Doe",
    plan: str | None = None,
    time_zones: str | None = "America/Los_Angeles",
) -> None:
    with db.session() as s:
        s.add(
            Customer(
                account_id=account_id, customer_id=customer_id, name=name,
                email=email or f"{customer_id}@example.com", phone_e164=phone,
                phone_region="US" if phone else None, phone_type="FIXED_LINE_OR_MOBILE",
                phone_time_zones=time_zones, plan=plan, source="test",
            )
        )


def case_input(account_id: str, invoice_id: str, customer_id: str, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "account_id": account_id,
        "customer_id": customer_id,
        "invoice_id": invoice_id,
        "amount_due": 4900,
        "currency": "USD",
        "billing_link": f"https://pay.example.com/{invoice_id}",
    }
    data.update(extra)
    return data


def real_activities(
    db: Database, plivo: FakePlivo, smtp: SmtpSink, followups: BalanceFollowups | None = None
) -> DunningActivities:
    return DunningActivities(
        db,
        PlivoSmsProvider(plivo.auth_id, plivo.auth_token, plivo.url, timeout=5),
        SmtpEmailProvider("127.0.0.1", smtp.port),
        public_url="http://127.0.0.1:8000",
        followups=followups,
    )


@asynccontextmanager
async def running_worker(
    client: Client, task_queue: str, acts: DunningActivities
) -> AsyncIterator[Worker]:
    settings = Settings(task_queue=task_queue, sms_rate_limit=0, activity_workers=16)
    with ThreadPoolExecutor(max_workers=16) as ex:
        workers = build_workers(client, settings, acts, ex)
        async with running(workers):
            yield workers[0]


async def wait_for(
    predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1
) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


async def query_status(handle: WorkflowHandle[Any, Any]) -> dict[str, Any]:
    result: dict[str, Any] = await handle.query("status")
    return result


async def sms_paused(handle: WorkflowHandle[Any, Any]) -> bool:
    """The case's own view: is its SMS lane paused for credits?"""
    return bool((await query_status(handle))["sms_paused"])


def plain_text(mail: Any) -> str:
    """The plain-text part of an email the SMTP sink received (emails are multipart: plain
    text + HTML), parsed with the standard library's parser."""
    from email import policy
    from email.parser import BytesParser

    parsed = BytesParser(policy=policy.default).parsebytes(mail.as_bytes())
    part = parsed.get_body(("plain",))
    assert part is not None, "no text/plain part"
    return str(part.get_content())
