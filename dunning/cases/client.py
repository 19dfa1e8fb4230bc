"""A typed async client for billing systems: start, recover, cancel, status, top up.

    async with await DunningClient.connect() as dunning:
        await dunning.start_case(CaseRequest(account_id="acme", customer_id="cus_1", ...))
        await dunning.recover("acme", "inv_1")
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from dunning.credits import wake
from dunning.domain.contract import (
    QUERY_STATUS,
    SA_ACCOUNT_ID,
    SA_CUSTOMER_ID,
    SA_SMS_PAUSED,
    SA_STATE,
    SIGNAL_CANCEL,
    SIGNAL_PAYMENT_RECOVERED,
    WORKFLOW_TYPE,
    parse_case_input,
    workflow_id_for,
)
from dunning.platform.db import Database
from dunning.platform.settings import Settings, get_settings
from dunning.platform.temporal import connect


class CaseNotFound(LookupError):
    """No dunning case exists for that account and invoice."""


@dataclass
class CaseRequest:
    account_id: str
    customer_id: str
    invoice_id: str
    amount_due: int
    currency: str
    billing_link: str
    failed_at: datetime | None = None
    customer_email: str | None = None
    customer_name: str | None = None
    plan: str | None = None
    decline_code: str | None = None

    def as_input(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if v is not None}
        if self.failed_at is not None:
            data["failed_at"] = self.failed_at.isoformat()
        return data


@dataclass
class StartResult:
    workflow_id: str
    started: bool  # False: a case for this invoice already exists; nothing new was started
    run_id: str | None = None


@dataclass
class TopUpResult:
    account_id: str
    balance: int
    woken: int


class DunningClient:
    def __init__(self, client: Client, settings: Settings, db: Database | None = None) -> None:
        self.client = client
        self.settings = settings
        self._db = db

    @classmethod
    async def connect(
        cls, settings: Settings | None = None, db: Database | None = None
    ) -> DunningClient:
        cfg = settings or get_settings()
        return cls(await connect(cfg), cfg, db)

    async def __aenter__(self) -> DunningClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.settings.effective_database_url, pool_size=2)
        return self._db

    def handle(self, account_id: str, invoice_id: str) -> WorkflowHandle[Any, Any]:
        return self.client.get_workflow_handle(workflow_id_for(account_id, invoice_id))

    async def start_case(self, request: CaseRequest) -> StartResult:
        """Start the case for a failed invoice; starting the same invoice again is a no-op."""
        raw = request.as_input()
        parse_case_input(raw)  # the same validation as the workflow: fail here, early
        wf_id = workflow_id_for(request.account_id, request.invoice_id)
        try:
            handle = await self.client.start_workflow(
                WORKFLOW_TYPE,
                raw,
                id=wf_id,
                task_queue=self.settings.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=TypedSearchAttributes([
                    SearchAttributePair(SA_ACCOUNT_ID, request.account_id),
                    SearchAttributePair(SA_CUSTOMER_ID, request.customer_id),
                    SearchAttributePair(SA_STATE, "active"),
                    SearchAttributePair(SA_SMS_PAUSED, False),
                ]),
                static_summary=(
                    f"Dunning invoice {request.invoice_id} of customer {request.customer_id}"
                ),
            )
        except WorkflowAlreadyStartedError:
            return StartResult(wf_id, False)
        return StartResult(wf_id, True, handle.result_run_id)

    async def recover(self, account_id: str, invoice_id: str, amount: int | None = None) -> None:
        payload = {"amount": amount} if amount is not None else {}
        await self._signal(account_id, invoice_id, SIGNAL_PAYMENT_RECOVERED, payload)

    async def cancel(self, account_id: str, invoice_id: str, reason: str | None = None) -> None:
        await self._signal(account_id, invoice_id, SIGNAL_CANCEL, {"reason": reason or ""})

    async def status(self, account_id: str, invoice_id: str) -> dict[str, Any]:
        handle = self.handle(account_id, invoice_id)
        try:
            result: dict[str, Any] = await handle.query(QUERY_STATUS)
            desc = await handle.describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise CaseNotFound(
                    f"no case for invoice {invoice_id!r} of {account_id!r}"
                ) from None
            raise
        result["workflow_id"] = handle.id
        result["run_status"] = desc.status.name if desc.status else None
        return result

    async def _signal(self, account_id: str, invoice_id: str, name: str, payload: Any) -> None:
        try:
            await self.handle(account_id, invoice_id).signal(name, payload)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise CaseNotFound(
                    f"no running case for invoice {invoice_id!r} of {account_id!r}"
                ) from None
            raise

    async def top_up(self, account_id: str, amount: int) -> TopUpResult:
        """Add credits, then wake the paused cases they cover, oldest first
        (dunning.credits.wake)."""
        done = await wake.top_up(self.client, self.db, account_id, amount)
        return TopUpResult(account_id, done.balance, done.woken)

    async def wake_paused(
        self, account_id: str, concurrency: int = wake.DEFAULT_CONCURRENCY
    ) -> int:
        """Signal `credits_added` to the waiting cases the balance covers, first come first
        served; the rest stay paused (no stampede). Returns how many were woken."""
        result = await wake.wake_paused(self.client, self.db, account_id, concurrency=concurrency)
        return result.woken
