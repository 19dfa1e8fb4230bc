"""Balance follow-ups: what a debit leaves to do once its transaction has committed.

A debit (`ledger.reserve` in the send activity, `ledger.grant` in a wake) may cross the
auto-refill threshold or a notice level. `BalanceFollowups.after_reserve` decides that in the
debit's own transaction (a savepoint, under the account row's lock: exactly one debit sees a
crossing) and, after the commit, a small thread pool acts on it: emails the notice, charges and
settles the refill (`dunning.credits.refill`), and wakes the paused cases through a `Waker`.

Nothing here may break an SMS send: the decisions run in a savepoint and log any error; the
charges, grants, emails and wakes run after the commit, off the activity thread.

The entry points (worker.py, the CLI, the client) build one `BalanceFollowups` with the email
provider, the gateways and the waker, and pass it in; the `Waker` protocol lives here, and
`dunning.credits.wake` implements it (wake depends on the follow-ups, never the reverse).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from dunning.credits import ledger, notices, refill
from dunning.credits.gateways import Gateways
from dunning.events import outbox
from dunning.platform.db import Database
from dunning.platform.db.models import Account
from dunning.platform.providers.email import EmailProvider

if TYPE_CHECKING:
    from dunning.platform.settings import Settings

log = logging.getLogger("dunning.refill")

_RANK = {None: 0, ledger.NOTICE_LOW: 1, ledger.NOTICE_ZERO: 2}


# --- decisions, inside the debit's transaction ---------------------------------------------


@dataclass
class Followup:
    """What a reservation leaves to do after its commit."""

    account_id: str
    balance: int
    notice: str | None = None  # low | zero: email the account's contact
    refill_id: int | None = None  # charge and grant this refill


def _level(balance: int, threshold: int | None) -> str | None:
    if balance <= 0:
        return ledger.NOTICE_ZERO
    if threshold is not None and balance < threshold:
        return ledger.NOTICE_LOW
    return None


def _decide(res: ledger.Reservation) -> tuple[str | None, bool, bool]:
    """(notice level to record, crossed the refill threshold, look for a stale refill), from
    the reservation alone: the common case needs no statement at all."""
    if res.ok:
        level = _level(res.balance, res.threshold)
        crossed = (
            res.threshold is not None and bool(res.refill_amount)
            and res.before >= res.threshold > res.balance
        )
        stale = crossed
    else:
        # Out of credits for this text (not merely queued behind older waiters): SMS pauses.
        level = ledger.NOTICE_ZERO if res.balance < res.amount else None
        crossed = False
        stale = bool(res.refill_amount)
    if _RANK[level] <= _RANK.get(res.notice, 0):
        level = None
    return level, crossed, stale


def plan_followup(session: Session, res: ledger.Reservation) -> Followup | None:
    """Decide, inside the reservation's transaction (the account row is locked), whether this
    debit crossed the auto-refill threshold or a notice level. Changes rows; sends nothing."""
    level, crossed, stale = _decide(res)
    if level is None and not crossed and not stale:
        return None
    follow = Followup(res.account_id, res.balance)
    if level is not None:
        session.execute(
            update(Account).where(Account.id == res.account_id).values(balance_notice=level)
        )
        follow.notice = level
        outbox.record(  # outbound event (dunning.events), in this transaction
            session, res.account_id,
            "credits.empty" if level == ledger.NOTICE_ZERO else "credits.low",
            {"balance": res.balance, "threshold": res.threshold},
        )
    if crossed or stale:
        pending = refill.pending_refill(session, res.account_id)
        if pending is None and crossed:
            assert res.refill_amount is not None
            gateway = session.scalar(
                select(Account.refill_gateway).where(Account.id == res.account_id)
            ) or "simulated"
            follow.refill_id = refill.new_refill(session, res.account_id, res.refill_amount,
                                                 gateway)
        elif pending is not None:
            follow.refill_id = refill.claim_stale(session, pending)
    if follow.notice is None and follow.refill_id is None:
        return None
    return follow


# --- acting on them, after the commit --------------------------------------------------------


class Waker(Protocol):
    """Wakes an account's paused cases from code without a Temporal client at hand."""

    def wake(self, followups: BalanceFollowups, account_id: str) -> Future[Any]:
        """Start waking the account's covered waiters; never raises (see the future)."""
        ...


class BalanceFollowups:
    """Notices, auto-refills and wakes after a debit, with the collaborators they need."""

    def __init__(
        self,
        db: Database,
        email: EmailProvider,
        *,
        gateways: Gateways | None = None,
        waker: Waker | None = None,
        default_sender: str = "billing@localhost",
        max_workers: int = 4,
    ) -> None:
        self.db = db
        self.email = email
        self.gateways = gateways or Gateways()
        self.waker = waker
        self.default_sender = default_sender
        self._max_workers = max_workers
        self._lock = threading.Lock()
        self._runner: ThreadPoolExecutor | None = None
        self._inflight: set[Future[Any]] = set()

    @classmethod
    def from_settings(
        cls, settings: Settings, db: Database, *, waker: Waker | None = None,
        email: EmailProvider | None = None, gateways: Gateways | None = None,
    ) -> BalanceFollowups:
        """The configured email provider and gateways (for entry points and the client)."""
        from dunning.platform.providers.factory import email_provider

        return cls(db, email or email_provider(settings),
                   gateways=gateways or Gateways.from_settings(settings), waker=waker,
                   default_sender=settings.email_from)

    # -- the hook ---------------------------------------------------------------------------

    def after_reserve(self, session: Session, res: ledger.Reservation) -> Followup | None:
        """The debit's hook, right after `ledger.reserve` (or a grant) in the same transaction.

        Never raises: the decisions run in a savepoint (rolled back alone on error) and the
        work they leave starts on the runner thread after the commit. Nothing happens if the
        transaction rolls back.
        """
        if not res.account_id:
            return None
        level, crossed, stale = _decide(res)
        if level is None and not crossed and not stale:
            return None  # the hot path: nothing due, not a single statement
        try:
            with session.begin_nested():
                follow = plan_followup(session, res)
        except Exception:
            log.exception("balance follow-up for %s failed; the send goes on", res.account_id)
            return None
        if follow is None:
            return None

        def _after_commit(_session: Session) -> None:
            self.submit(lambda: self.run(follow))

        event.listen(session, "after_commit", _after_commit, once=True)
        return follow

    # -- the work ---------------------------------------------------------------------------

    def run(self, follow: Followup) -> None:
        if follow.notice is not None:
            self.send_notice(follow.account_id, follow.notice)
        if follow.refill_id is not None:
            done = self.execute_refill(follow.refill_id)
            if done is not None and done.status == "succeeded":
                self.wake_account(follow.account_id)

    def send_notice(self, account_id: str, kind: str, *, detail: str = "") -> bool:
        return notices.send_notice(self.db, account_id, kind, self.email, self.default_sender,
                                   detail=detail)

    def execute_refill(self, refill_id: int) -> refill.RefillOutcome | None:
        return refill.execute_refill(self.db, refill_id, self.gateways, email=self.email,
                                     default_sender=self.default_sender)

    def wake_account(self, account_id: str) -> None:
        """Wake the account's paused cases through the waker (best effort: a case that misses
        it re-checks by itself)."""
        if self.waker is None:
            log.info("auto-refill of %s: no waker here; paused cases resume at their next "
                     "re-check", account_id)
            return
        try:
            result = self.waker.wake(self, account_id).result(timeout=300)
            log.info("auto-refill of %s woke %d paused cases", account_id, result.woken)
        except Exception as exc:
            log.warning("auto-refill of %s: could not wake paused cases now (%s); they resume "
                        "at their next re-check", account_id, exc)

    # -- the runner -------------------------------------------------------------------------

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        with self._lock:
            if self._runner is None:
                self._runner = ThreadPoolExecutor(max_workers=self._max_workers,
                                                  thread_name_prefix="dunning-refill")
            future = self._runner.submit(_guarded, fn)
            self._inflight.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._inflight.discard(future)

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait for the follow-ups started so far (tests, orderly shutdown). True if all
        done."""
        with self._lock:
            pending = list(self._inflight)
        _done, not_done = concurrent.futures.wait(pending, timeout=timeout)
        return not not_done

    def close(self, timeout: float = 30.0) -> bool:
        """Finish what is under way, then stop the runner thread(s)."""
        done = self.drain(timeout)
        with self._lock:
            runner, self._runner = self._runner, None
        if runner is not None:
            runner.shutdown(wait=done)
        return done


def _guarded(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:
        log.exception("balance follow-up failed")
        return None


__all__ = ["BalanceFollowups", "Followup", "Waker", "plan_followup"]
