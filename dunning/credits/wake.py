"""Waking the cases paused for credits: after a top-up, a refill, or on demand.

The waiters table (`sms_waiters`, see `dunning.credits`) is the queue and the source of truth.
A wake first serves the queue in the database, in ONE transaction (`ledger.grant`): under the
account row's lock it debits, first come first served, the credits of every waiter the balance
covers (one ledger entry each) and marks them granted; the rest stay paused, so a small top-up
causes no stampede of reservations bound to fail. Then it signals `credits_added` to each
granted case; the case's send finds its credits set aside and goes out at the provider's pace.
So resuming 10,000 cases costs one transaction plus 10,000 signals, and no case re-checks the
queue.

Signals go out concurrently, with a bound (`concurrency`), straight to each workflow id: this is
the fast path (hundreds of signals per second on one dev server), unlike a server-side batch
operation. A waiter whose workflow no longer runs (NOT_FOUND) leaves the queue, its grant is
refunded and goes to the next waiters, in further passes. A grant not used a minute after it was
made (a lost signal) is signalled again by the next wake; the case also re-checks by itself
periodically, so no wake-up is ever lost. Cases the queue does not know but visibility shows
paused (SmsPaused = true) get what the queue leaves over: a safety net only.

Wakers (the `Waker` protocol of `dunning.credits.followups`) let code without a Temporal client
at hand (an auto-refill started by the send activity) wake an account: `LoopWaker` uses an
existing client on its event loop (the worker's); `ThreadWaker` connects its own client, with
the `connect` it is given, on a thread of its own (the CLI). The entry points build them and
hand them to the `BalanceFollowups`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from dunning.credits import ledger
from dunning.credits.followups import BalanceFollowups
from dunning.domain.contract import SA_ACCOUNT_ID, SA_SMS_PAUSED, SIGNAL_CREDITS_ADDED
from dunning.platform.db import Database
from dunning.platform.db.models import utcnow

log = logging.getLogger("dunning.wake")

DEFAULT_CONCURRENCY = 200
MAX_PASSES = 5
STALE_GRANT = timedelta(minutes=1)  # a grant not used by then is signalled again


@dataclass
class WakeResult:
    account_id: str
    balance: int  # when the wake read the queue
    waiting: int  # cases in the queue when the wake started
    woken: int  # cases signalled (and still running)
    still_waiting: int  # cases left paused: the balance does not cover them yet
    removed: int = 0  # queue entries of cases that no longer run, dropped
    errors: int = 0  # signals that failed for another reason (the case re-checks itself)
    granted: int = 0  # credits set aside for the cases served
    balance_after: int = 0  # what the balance holds once they are served

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TopUpOutcome:
    account_id: str
    balance: int
    woken: int
    still_waiting: int
    wake: WakeResult
    duplicate: bool = False  # an idempotency key used before: nothing changed


async def _signal_all(
    client: Client, account_id: str, workflow_ids: list[str], concurrency: int,
) -> dict[str, str]:
    """Signal each workflow; returns workflow id -> 'ok' | 'gone' | 'error'."""
    sem = asyncio.Semaphore(max(1, concurrency))
    outcome: dict[str, str] = {}
    payload = {"account_id": account_id}

    async def one(workflow_id: str) -> None:
        async with sem:
            try:
                await client.get_workflow_handle(workflow_id).signal(
                    SIGNAL_CREDITS_ADDED, payload
                )
                outcome[workflow_id] = "ok"
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:
                    outcome[workflow_id] = "gone"
                else:
                    outcome[workflow_id] = "error"
                    log.warning("credits_added to %s failed: %s", workflow_id, err)

    await asyncio.gather(*(one(w) for w in workflow_ids))
    return outcome


async def wake_paused(
    client: Client,
    db: Database,
    account_id: str,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    visibility: bool = True,
    followups: BalanceFollowups | None = None,
) -> WakeResult:
    """Serve the waiting cases the balance covers, first come first served, and signal them.
    With `followups`, the grant's debit gets its balance notices and auto-refill too."""
    signalled: set[str] = set()
    removed = errors = granted = 0
    first: ledger.Grant | None = None
    last: ledger.Grant | None = None
    for _ in range(MAX_PASSES):
        with db.session() as s:
            last = ledger.grant(s, account_id)
            if last.credits and followups is not None:  # notices, auto-refill: once per crossing
                followups.after_reserve(s, last.as_reservation())
            stale = (ledger.stale_grants(s, account_id, utcnow() - STALE_GRANT)
                     if first is None else [])
        granted += last.credits
        if first is None:
            first = last
        batch = [w for w in dict.fromkeys([*last.workflow_ids, *stale]) if w not in signalled]
        if not batch:
            break
        outcome = await _signal_all(client, account_id, batch, concurrency)
        signalled.update(w for w, o in outcome.items() if o == "ok")
        failed = sum(1 for o in outcome.values() if o == "error")
        errors += failed
        if failed == len(batch) and not signalled:
            raise RuntimeError(f"could not signal any paused case of {account_id!r}")
        gone = [w for w, o in outcome.items() if o == "gone"]
        if not gone:
            break
        with db.session() as s:  # their credits go to the next in line, in another pass
            granted -= ledger.granted_to(s, account_id, gone)
            removed += ledger.remove_waiters(s, account_id, gone)
    assert first is not None and last is not None
    with db.session() as s:
        balance_after = ledger.balance_of(s, account_id)
        still = ledger.waiting_count(s, account_id)
    if visibility and balance_after > 0 and still == 0:
        extra = await _unqueued_paused(client, account_id, signalled, limit=balance_after)
        if extra:
            outcome = await _signal_all(client, account_id, extra, concurrency)
            signalled.update(w for w, o in outcome.items() if o == "ok")
    return WakeResult(
        account_id, first.balance_before, first.still_waiting + len(first.workflow_ids),
        len(signalled), still, removed, errors, granted, balance_after,
    )


async def _unqueued_paused(
    client: Client, account_id: str, known: set[str], *, limit: int
) -> list[str]:
    """Paused cases (per visibility) that the queue does not list: a safety net only."""
    query = (
        f"{SA_ACCOUNT_ID.name} = '{account_id}' AND {SA_SMS_PAUSED.name} = true "
        "AND ExecutionStatus = 'Running'"
    )
    found: list[str] = []
    async for wf in client.list_workflows(query, limit=len(known) + limit):
        if wf.id not in known:
            found.append(wf.id)
            if len(found) >= limit:
                break
    return found


async def top_up(
    client: Client,
    db: Database,
    account_id: str,
    amount: int,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    note: str | None = None,
    idempotency_key: str | None = None,
    followups: BalanceFollowups | None = None,
) -> TopUpOutcome:
    """Add credits (a `topup` ledger entry), then wake the cases they cover. With an
    `idempotency_key`, a top-up repeated with the same key (per account) changes nothing and
    returns the first one's balance with `duplicate` set (and wakes nobody)."""
    ledger.check_credit_amount("amount", amount)
    if idempotency_key is not None:
        keyed = await asyncio.to_thread(
            ledger.top_up_idempotent, db, account_id, amount, idempotency_key, note=note
        )
        if keyed.duplicate:
            nothing = WakeResult(account_id, keyed.balance, 0, 0, 0, balance_after=keyed.balance)
            return TopUpOutcome(account_id, keyed.balance, 0, 0, nothing, duplicate=True)
        balance = keyed.balance
    else:
        with db.session() as s:
            balance = ledger.top_up(s, account_id, amount, note=note)
    result = await wake_paused(client, db, account_id, concurrency=concurrency,
                               followups=followups)
    return TopUpOutcome(account_id, balance, result.woken, result.still_waiting, result)


# --- wakers: waking from code that has no client at hand ------------------------------------


class LoopWaker:
    """Runs wakes on an event loop that owns a connected client (e.g. the worker's)."""

    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop | None = None,
                 *, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        self.client = client
        self.loop = loop or asyncio.get_running_loop()
        self.concurrency = concurrency

    def wake(
        self, followups: BalanceFollowups, account_id: str
    ) -> concurrent.futures.Future[WakeResult]:
        return asyncio.run_coroutine_threadsafe(
            wake_paused(self.client, followups.db, account_id, concurrency=self.concurrency,
                        followups=followups),
            self.loop,
        )


class ThreadWaker:
    """Connects its own client with `connect` on a private event loop thread, at the first
    wake (for processes whose own loop may be gone by then, such as a CLI command)."""

    def __init__(self, connect: Callable[[], Awaitable[Client]],
                 *, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        self._connect = connect
        self.concurrency = concurrency
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Client | None = None

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="dunning-waker",
                                 daemon=True).start()
                self._loop = loop
            return self._loop

    async def _wake(self, followups: BalanceFollowups, account_id: str) -> WakeResult:
        if self._client is None:
            self._client = await self._connect()
        return await wake_paused(self._client, followups.db, account_id,
                                 concurrency=self.concurrency, followups=followups)

    def wake(
        self, followups: BalanceFollowups, account_id: str
    ) -> concurrent.futures.Future[WakeResult]:
        return asyncio.run_coroutine_threadsafe(self._wake(followups, account_id),
                                                self._ensure_loop())
