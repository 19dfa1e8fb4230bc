"""Waking the cases paused for credits: after a top-up, a refill, or on demand.

The waiters table (`sms_waiters`, see `dunning.credits`) is the queue and the source of truth.
A wake reads the balance and the queue in first-come order and signals `credits_added` to the
longest prefix of waiters whose needs the balance covers; the rest stay paused, so a small
top-up causes no stampede of reservations bound to fail. Fair reservations (`credits.reserve`)
guarantee that every woken case can reserve: newcomers cannot take the credits owed to the
waiters ahead of them.

Signals go out concurrently, with a bound (`concurrency`), straight to each workflow id: this is
the fast path (hundreds of signals per second on one dev server), unlike a server-side batch
operation. A waiter whose workflow no longer runs (NOT_FOUND) is dropped from the queue and the
credits it held go to the next waiters, in further passes. Cases the queue does not know but
visibility shows paused (SmsPaused = true) get what the queue leaves over: a safety net only.
Lost signals are harmless: a paused case re-checks by itself periodically.

`Waker`s let code without a Temporal client at hand (the send activity's auto-refill) wake an
account: `LoopWaker` uses an existing client on its event loop (a worker can install one with
`set_waker`); the default `SettingsWaker` connects its own client from the settings, on a
thread of its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from dunning import credits
from dunning.db import Database
from dunning.domain import SA_ACCOUNT_ID, SA_SMS_PAUSED, SIGNAL_CREDITS_ADDED, InputError

log = logging.getLogger("dunning.wake")

DEFAULT_CONCURRENCY = 200
MAX_PASSES = 5


@dataclass
class WakeResult:
    account_id: str
    balance: int  # when the wake read the queue
    waiting: int  # cases in the queue when the wake started
    woken: int  # cases signalled (and still running)
    still_waiting: int  # cases left paused: the balance does not cover them yet
    removed: int = 0  # queue entries of cases that no longer run, dropped
    errors: int = 0  # signals that failed for another reason (the case re-checks itself)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TopUpOutcome:
    account_id: str
    balance: int
    woken: int
    still_waiting: int
    wake: WakeResult


def _covered(balance: int, queue: list[tuple[str, int, Any]]) -> tuple[list[str], int]:
    """The longest first-come prefix of the queue the balance pays for, and what is left."""
    chosen: list[str] = []
    budget = balance
    for workflow_id, needed, _since in queue:
        if needed > budget:
            break
        budget -= needed
        chosen.append(workflow_id)
    return chosen, budget


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
) -> WakeResult:
    """Signal the waiting cases the balance covers, first come first served."""
    signalled: set[str] = set()
    removed = errors = 0
    first: tuple[int, int] | None = None
    budget = 0
    queue: list[tuple[str, int, Any]] = []
    balance = 0
    for _ in range(MAX_PASSES):
        with db.session() as s:
            balance = credits.balance_of(s, account_id)
            queue = credits.waiters(s, account_id)
        if first is None:
            first = (balance, len(queue))
        chosen, budget = _covered(balance, queue)
        batch = [w for w in chosen if w not in signalled]
        if not batch:
            break
        outcome = await _signal_all(client, account_id, batch, concurrency)
        signalled.update(w for w, o in outcome.items() if o == "ok")
        errors += sum(1 for o in outcome.values() if o == "error")
        gone = [w for w, o in outcome.items() if o == "gone"]
        if errors and not signalled and errors == len(batch):
            raise RuntimeError(f"could not signal any paused case of {account_id!r}")
        if not gone:
            break
        with db.session() as s:  # their credits go to the next in line, in another pass
            removed += credits.remove_waiters(s, account_id, gone)
    if visibility and budget > 0:
        known = {w for w, _, _ in queue} | signalled
        extra = await _unqueued_paused(client, account_id, known, limit=budget)
        if extra:
            outcome = await _signal_all(client, account_id, extra, concurrency)
            signalled.update(w for w, o in outcome.items() if o == "ok")
    balance0, waiting0 = first or (balance, 0)
    still = max(0, len(queue) - len([w for w, _, _ in queue if w in signalled]))
    return WakeResult(account_id, balance0, waiting0, len(signalled), still, removed, errors)


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
) -> TopUpOutcome:
    """Add credits (a `topup` ledger entry), then wake the cases they cover."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise InputError("amount", "must be a positive whole number of credits")
    with db.session() as s:
        balance = credits.top_up(s, account_id, amount, note=note)
    result = await wake_paused(client, db, account_id, concurrency=concurrency)
    return TopUpOutcome(account_id, balance, result.woken, result.still_waiting, result)


# --- wakers: waking from code that has no client at hand ------------------------------------


class Waker(Protocol):
    def wake(self, db: Database, account_id: str) -> concurrent.futures.Future[WakeResult]:
        """Start waking the account's covered waiters; never raises (see the future)."""
        ...


class LoopWaker:
    """Runs wakes on an event loop that owns a connected client (e.g. the worker's)."""

    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop | None = None,
                 *, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        self.client = client
        self.loop = loop or asyncio.get_running_loop()
        self.concurrency = concurrency

    def wake(self, db: Database, account_id: str) -> concurrent.futures.Future[WakeResult]:
        return asyncio.run_coroutine_threadsafe(
            wake_paused(self.client, db, account_id, concurrency=self.concurrency), self.loop
        )


class SettingsWaker:
    """Connects its own client (from `connect`, by default the configured settings) on a
    private event loop thread, at the first wake."""

    def __init__(self, connect: Callable[[], Awaitable[Client]] | None = None,
                 *, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        self._connect = connect or _connect_from_settings
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

    async def _wake(self, db: Database, account_id: str) -> WakeResult:
        if self._client is None:
            self._client = await self._connect()
        return await wake_paused(self._client, db, account_id, concurrency=self.concurrency)

    def wake(self, db: Database, account_id: str) -> concurrent.futures.Future[WakeResult]:
        return asyncio.run_coroutine_threadsafe(self._wake(db, account_id), self._ensure_loop())


async def _connect_from_settings() -> Client:
    from dunning.settings import get_settings
    from dunning.temporal import connect

    return await connect(get_settings())


_waker: Waker | None = None
_waker_lock = threading.Lock()


def set_waker(waker: Waker | None) -> None:
    """Install the waker auto-refills use in this process (None: back to the default)."""
    global _waker
    with _waker_lock:
        _waker = waker


def get_waker() -> Waker:
    global _waker
    with _waker_lock:
        if _waker is None:
            _waker = SettingsWaker()
        return _waker
