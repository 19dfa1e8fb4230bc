"""Billing links: https except to loopback hosts (one rule, in parse_case_input), and an
account's `--billing-link-hosts` enforced when a case registers."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from dunning.accounts.accounts import AccountOptions, update_account
from dunning.domain.contract import (
    InputError,
    is_link_host_allowed,
    parse_case_input,
    parse_link_hosts,
    workflow_id_for,
)
from dunning.platform.db import Database
from tests.fakes.plivo import FakePlivo
from tests.fakes.smtp import SmtpSink
from tests.helpers import (
    add_customer,
    case_input,
    make_account,
    query_status,
    real_activities,
    running_worker,
    wait_for,
)


@pytest.mark.parametrize("link", [
    "https://pay.example.com/i1", "http://127.0.0.1:8000/pay", "http://localhost/pay",
    "http://[::1]:8080/pay",
])
def test_accepted_links(link: str) -> None:
    assert parse_case_input(case_input("a", "i1", "c1", billing_link=link)).billing_link == link


@pytest.mark.parametrize(("link", "why"), [
    ("http://pay.example.com/i1", "must be https"),
    ("http://127.0.0.1.evil.example/x", "must be https"),
    ("ftp://pay.example.com/x", "https URL"),
    ("javascript:alert(1)", "https URL"),
    ("https://", "https URL"),
])
def test_refused_links(link: str, why: str) -> None:
    with pytest.raises(InputError, match=why) as err:
        parse_case_input(case_input("a", "i1", "c1", billing_link=link))
    assert err.value.field == "billing_link"


def test_link_hosts() -> None:
    hosts = parse_link_hosts(" Pay.Acme.com, *.acme.io ")
    assert hosts == ["pay.acme.com", "*.acme.io"]
    assert is_link_host_allowed("https://pay.acme.com/x", hosts)
    assert is_link_host_allowed("https://eu.acme.io/x", hosts)
    assert not is_link_host_allowed("https://acme.io.evil.example/x", hosts)
    assert not is_link_host_allowed("https://evilacme.io/x", hosts)
    assert not is_link_host_allowed("https://pay.acme.com.evil.example/x", hosts)
    assert is_link_host_allowed("https://anything.example/x", parse_link_hosts("any"))
    with pytest.raises(InputError, match="billing-link-hosts"):
        parse_link_hosts("pay.acme.com/path")


async def test_a_foreign_host_fails_the_case_at_registration(
    temporal_env: WorkflowEnvironment, sqlite_db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    account, queue = f"bl-{uid}", f"bl-{uid}"
    make_account(sqlite_db, account, schedule="0s,1h", grace="1h", sms=False)
    add_customer(sqlite_db, account, "cus1", phone=None, email=f"{uid}@example.com")
    with sqlite_db.session() as s:
        update_account(s, account, AccountOptions(billing_link_hosts="pay.acme.test"))
    client = temporal_env.client
    async with running_worker(client, queue, real_activities(sqlite_db, plivo_server,
                                                             smtp_server)):
        foreign = await client.start_workflow(
            "DunningWorkflow",
            case_input(account, "inv1", "cus1", billing_link="https://evil.example/pay"),
            id=workflow_id_for(account, "inv1"), task_queue=queue)
        with pytest.raises(WorkflowFailureError) as err:
            await foreign.result()
        cause = err.value.cause
        assert isinstance(cause, ApplicationError) and cause.type == "InvalidInput"
        assert "billing_link" in str(cause) and "evil.example" in str(cause)
        own = await client.start_workflow(
            "DunningWorkflow",
            case_input(account, "inv2", "cus1", billing_link="https://pay.acme.test/inv2"),
            id=workflow_id_for(account, "inv2"), task_queue=queue)

        async def email_sent() -> bool:
            st = await query_status(own)
            return any(r["channel"] == "email" and r["status"] == "sent"
                       for r in st["reminders"])

        await wait_for(email_sent, timeout=20)
        await own.signal("cancel", {"account_id": account})
        assert (await own.result())["outcome"] == "canceled"
    assert len(smtp_server.to(f"{uid}@example.com")) == 1


def test_cli_account_billing_link_hosts(cli: Callable[..., tuple[int, str, str]],
                                        uid: str) -> None:
    code, out, err = cli("account", "create", f"h-{uid}", "--company-name", "Acme",
                         "--billing-link-hosts", "pay.acme.test,*.acme.io", "--json")
    assert code == 0, err
    assert json.loads(out)["billing_link_hosts"] == ["pay.acme.test", "*.acme.io"]
    code, out, err = cli("start", "--account", f"h-{uid}", "--customer", "c1", "--invoice",
                         "i1", "--amount", "100", "--currency", "USD", "--billing-link",
                         "https://evil.example/x")
    assert code == 1 and "billing_link" in err and "Traceback" not in err
    code, out, err = cli("account", "update", f"h-{uid}", "--billing-link-hosts", "any",
                         "--json")
    assert code == 0 and json.loads(out)["billing_link_hosts"] == []
    code, _, err = cli("account", "update", f"h-{uid}", "--billing-link-hosts", "a b")
    assert code == 1 and "billing-link-hosts" in err
