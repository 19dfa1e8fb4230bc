"""`DunningClient.top_up(..., idempotency_key=K)` against a real Temporal server: a retried
top-up credits once and says it was a duplicate."""

from __future__ import annotations

from temporalio.testing import WorkflowEnvironment

from dunning.cases.client import DunningClient
from dunning.credits import ledger
from dunning.platform.db import Database
from dunning.platform.settings import Settings
from tests.helpers import make_account


async def test_client_top_up_with_a_key_credits_once(
    temporal_env: WorkflowEnvironment, sqlite_db: Database, uid: str
) -> None:
    account = f"tk-{uid}"
    make_account(sqlite_db, account, balance=0)
    dunning = DunningClient(temporal_env.client, Settings(task_queue=f"tk-{uid}"), sqlite_db)
    first = await dunning.top_up(account, 1000, idempotency_key="billing-run-7")
    retry = await dunning.top_up(account, 1000, idempotency_key="billing-run-7")
    assert (first.balance, first.duplicate) == (1000, False)
    assert (retry.balance, retry.duplicate, retry.woken) == (1000, True, 0)
    plain = await dunning.top_up(account, 5)
    assert plain.balance == 1005 and not plain.duplicate
    with sqlite_db.session() as s:
        assert ledger.balance_of(s, account) == 1005
