"""A typed async client for billing systems: start, recover, cancel, status, top up.

    async with await DunningClient.connect() as dunning:
        await dunning.start_case(CaseRequest(account_id="acme", customer_id="cus_1", ...))
        await dunning.recover("acme", "inv_1")
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from temporalio.client import Client, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from dunning.domain.contract import (
    QUERY_STATUS,
    SA_ACCOUNT_ID,
    SA_CUSTOMER_ID,
    SA_SMS_PAUSED,
    SA_STATE,
    SIGNAL_CANCEL,
    SIGNAL_PAYMENT_RECOVERED,
    WORKFLOW_TYPE,
    CaseInput,
    legacy_workflow_id_for,
    parse_case_input,
    workflow_id_for,
)
from dunning.platform.settings import Settings, get_settings
from dunning.platform.temporal import connect

if TYPE_CHECKING:  # the database (SQLAlchemy) is loaded only by top_up / wake_paused
    from dunning.credits.followups import BalanceFollowups
    from dunning.platform.db import Database

# The case fields exist once: a request to start a case is the workflow's own input type.
CaseRequest = CaseInput


class CaseNotFound(LookupError):
    """No dunning case exists for that account and invoice."""


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
    duplicate: bool = False  # the idempotency key was used before: nothing changed


class DunningClient:
    """`db` and `followups` (balance notices and auto-refills a top-up's grants start) are
    built from `settings` on first use unless given; top-ups and wakes need them, starting and
    signalling cases does not."""

    def __init__(
        self, client: Client, settings: Settings, db: Database | None = None,
        followups: BalanceFollowups | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self._db = db
        self._followups = followups
        self._own_followups = False

    @classmethod
    async def connect(
        cls, settings: Settings | None = None, db: Database | None = None,
        followups: BalanceFollowups | None = None,
    ) -> DunningClient:
        cfg = settings or get_settings()
        return cls(await connect(cfg), cfg, db, followups)

    async def __aenter__(self) -> DunningClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._own_followups and self._followups is not None:
            await asyncio.to_thread(self._followups.close)

    @property
    def db(self) -> Database:
        if self._db is None:
            from dunning.platform.db import Database

            self._db = Database(self.settings.effective_database_url, pool_size=2)
        return self._db

    @property
    def followups(self) -> BalanceFollowups:
        if self._followups is None:
            from dunning.credits.followups import BalanceFollowups
            from dunning.credits.wake import LoopWaker

            self._followups = BalanceFollowups.from_settings(
                self.settings, self.db, waker=LoopWaker(self.client)
            )
            self._own_followups = True
        return self._followups

    def handle(self, account_id: str, invoice_id: str) -> WorkflowHandle[Any, Any]:
        """The handle of a case under the current id form (`dunning:<account>:<invoice>`);
        `find` also finds cases started under the earlier form."""
        return self.client.get_workflow_handle(workflow_id_for(account_id, invoice_id))

    async def find(self, account_id: str, invoice_id: str) -> WorkflowHandle[Any, Any]:
        """The case of this account's invoice: the current id, else a case started under the
        earlier `dunning-<account>-<invoice>` form that belongs to this account (that form is
        ambiguous across accounts, so its `DunningAccountId` must match). CaseNotFound if none."""
        handle = self.handle(account_id, invoice_id)
        try:
            await handle.describe()
            return handle
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
        legacy = await self._legacy(account_id, invoice_id)
        if legacy is None:
            raise CaseNotFound(f"no case for invoice {invoice_id!r} of {account_id!r}")
        return legacy

    async def _legacy(self, account_id: str, invoice_id: str) -> WorkflowHandle[Any, Any] | None:
        """A case started under the earlier id form, if it is this account's."""
        handle = self.client.get_workflow_handle(legacy_workflow_id_for(account_id, invoice_id))
        try:
            desc = await handle.describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        if desc.typed_search_attributes.get(SA_ACCOUNT_ID) != account_id:
            return None  # another account's case that happens to share the ambiguous id
        return handle

    async def start_case(self, request: CaseRequest) -> StartResult:
        """Start the case for a failed invoice; starting the same invoice again is a no-op
        (also when its case was started under the earlier id form)."""
        # The same validation as the workflow (fail here, early); what is sent is the parsed
        # input, so values such as the currency go out normalised (`usd` -> `USD`).
        raw = parse_case_input(request.as_input()).as_input()
        wf_id = workflow_id_for(request.account_id, request.invoice_id)
        legacy = await self._legacy(request.account_id, request.invoice_id)
        if legacy is not None:
            return StartResult(legacy.id, False)
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

    async def recover(self, account_id: str, invoice_id: str, amount: int | None = None) -> str:
        """Signal `payment_recovered`; returns the case's workflow id."""
        payload: dict[str, Any] = {"account_id": account_id}
        if amount is not None:
            payload["amount"] = amount
        return await self._signal(account_id, invoice_id, SIGNAL_PAYMENT_RECOVERED, payload)

    async def cancel(self, account_id: str, invoice_id: str, reason: str | None = None) -> str:
        """Signal `cancel`; returns the case's workflow id."""
        return await self._signal(
            account_id, invoice_id, SIGNAL_CANCEL,
            {"account_id": account_id, "reason": reason or ""},
        )

    async def status(self, account_id: str, invoice_id: str) -> dict[str, Any]:
        handle = await self.find(account_id, invoice_id)
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

    async def _signal(self, account_id: str, invoice_id: str, name: str, payload: Any) -> str:
        """Signal the case (current id first, then the earlier form); the payload names the
        account, and a case ignores a signal meant for another account."""
        handle = self.handle(account_id, invoice_id)
        try:
            await handle.signal(name, payload)
            return handle.id
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
        legacy = await self._legacy(account_id, invoice_id)
        if legacy is not None:
            try:
                await legacy.signal(name, payload)
                return legacy.id
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    raise
        raise CaseNotFound(f"no running case for invoice {invoice_id!r} of {account_id!r}")

    async def top_up(
        self, account_id: str, amount: int, *, idempotency_key: str | None = None
    ) -> TopUpResult:
        """Add credits, then wake the paused cases they cover, oldest first
        (dunning.credits.wake). With `idempotency_key`, a retry with the same key (after a
        timeout, say) credits nothing more and returns the first balance, `duplicate` True."""
        from dunning.credits import wake

        done = await wake.top_up(self.client, self.db, account_id, amount,
                                 idempotency_key=idempotency_key, followups=self.followups)
        return TopUpResult(account_id, done.balance, done.woken, done.duplicate)

    async def wake_paused(
        self, account_id: str, concurrency: int | None = None
    ) -> int:
        """Signal `credits_added` to the waiting cases the balance covers, first come first
        served; the rest stay paused (no stampede). Returns how many were woken."""
        from dunning.credits import wake

        result = await wake.wake_paused(
            self.client, self.db, account_id,
            concurrency=wake.DEFAULT_CONCURRENCY if concurrency is None else concurrency,
            followups=self.followups,
        )
        return result.woken
