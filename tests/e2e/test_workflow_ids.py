"""Workflow ids are unambiguous across accounts (`dunning:<account>:<invoice>`), cases started
under the earlier `dunning-<account>-<invoice>` form are still found (by their own account only),
and a case ignores a signal that names another account."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from dunning.cases.client import CaseNotFound, CaseRequest, DunningClient
from dunning.domain.contract import (
    InputError,
    check_id,
    legacy_workflow_id_for,
    parse_workflow_id,
    workflow_id_for,
)
from dunning.platform.db import Database
from dunning.platform.settings import Settings
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


def test_colliding_tenants_get_different_ids() -> None:
    old = legacy_workflow_id_for
    assert old("acme", "corp-inv1") == old("acme-corp", "inv1")
    assert workflow_id_for("acme", "corp-inv1") == "dunning:acme:corp-inv1"
    assert workflow_id_for("acme-corp", "inv1") == "dunning:acme-corp:inv1"
    assert parse_workflow_id("dunning:acme-corp:inv1") == ("acme-corp", "inv1")
    assert parse_workflow_id("dunning-acme-corp-inv1") is None
    with pytest.raises(InputError, match="letters, digits"):
        check_id("invoice_id", "x:inv1")


def _request(account: str, invoice: str) -> CaseRequest:
    return CaseRequest(account_id=account, customer_id="cus1", invoice_id=invoice,
                       amount_due=4900, currency="USD",
                       billing_link=f"https://pay.example.com/{invoice}")


async def test_colliding_tenants_are_separate_cases_and_legacy_ids_are_found(
    temporal_env: WorkflowEnvironment, sqlite_db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    acme, acme_corp, queue = f"a{uid}", f"a{uid}-corp", f"ids-{uid}"
    for account in (acme, acme_corp):
        make_account(sqlite_db, account, schedule="0s,1h", grace="1h", sms=False)
        add_customer(sqlite_db, account, "cus1", phone=None, email=f"{account}@example.com")
    client = temporal_env.client
    dunning = DunningClient(client, Settings(task_queue=queue), sqlite_db)
    async with running_worker(client, queue, real_activities(sqlite_db, plivo_server,
                                                             smtp_server)):
        # acme's case as an earlier engine started it: under the ambiguous id.
        legacy_id = legacy_workflow_id_for(acme, "corp-inv1")
        old = await client.start_workflow(
            "DunningWorkflow", case_input(acme, "corp-inv1", "cus1"), id=legacy_id,
            task_queue=queue,
        )
        await wait_for(lambda: _state(old, "active"))

        # acme-corp's inv1 is another case, although its old id was the same.
        started = await dunning.start_case(_request(acme_corp, "inv1"))
        assert started.started and started.workflow_id == f"dunning:{acme_corp}:inv1"
        # acme's invoice is found under its old id: no second case.
        again = await dunning.start_case(_request(acme, "corp-inv1"))
        assert not again.started and again.workflow_id == legacy_id
        assert (await dunning.status(acme, "corp-inv1"))["workflow_id"] == legacy_id
        with pytest.raises(CaseNotFound):  # the legacy id is acme's, not acme-corp's
            await dunning._signal(acme_corp, "corp-inv1", "cancel", {"account_id": acme_corp})

        # A signal naming another account is ignored by the case.
        new = client.get_workflow_handle(started.workflow_id)
        await new.signal("cancel", {"account_id": acme, "reason": "forged"})
        await new.signal("payment_recovered", {"account_id": acme})
        assert (await query_status(new))["state"] == "active"

        # Canceling acme-corp's inv1 ends acme-corp's case and leaves acme's running.
        assert await dunning.cancel(acme_corp, "inv1", "test") == started.workflow_id
        assert (await new.result())["outcome"] == "canceled"
        assert (await query_status(old))["state"] == "active"

        # acme's own commands reach its legacy case.
        assert await dunning.recover(acme, "corp-inv1") == legacy_id
        assert (await old.result())["outcome"] == "recovered"


async def _state(handle: WorkflowHandle[Any, Any], state: str) -> bool:
    return bool((await query_status(handle))["state"] == state)


async def test_an_amount_beyond_the_bound_fails_the_case_with_invalid_input(
    temporal_env: WorkflowEnvironment, sqlite_db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    from temporalio.client import WorkflowFailureError
    from temporalio.exceptions import ApplicationError

    account, queue = f"big-{uid}", f"big-{uid}"
    make_account(sqlite_db, account, sms=False)
    client = temporal_env.client
    async with running_worker(client, queue, real_activities(sqlite_db, plivo_server,
                                                             smtp_server)):
        handle = await client.start_workflow(
            "DunningWorkflow", case_input(account, "inv1", "cus1", amount_due=10**30),
            id=workflow_id_for(account, "inv1"), task_queue=queue,
        )
        with pytest.raises(WorkflowFailureError) as err:
            await handle.result()
    cause = err.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidInput"
    assert "amount_due" in str(cause)
