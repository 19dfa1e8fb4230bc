"""The message log: every write of a `messages` row, and the exactly-once rules they keep.

One row per (workflow, run, step, channel); the unique key makes a racing attempt lose.

    (none) --claim--> claimed --deliver--> sent | failed | unknown
    (none) --hold---> retry   --claim----> claimed            (credits reserved, no send slot yet)
    claimed --back_to_retry--> retry                          (the provider refused for now)
    retry --release--> failed | skipped                       (credits refunded)
    (none) --skip---> skipped
    claimed --mark_unknown--> unknown                         (the ambiguous window, see below)
    claimed | unknown --delivery report / reconcile--> sent | failed

Final: sent, failed, skipped, unknown. A retry or replay that finds a final row returns it as
recorded and never sends again.

The ambiguous window is a crash between the claim and the recorded outcome (or a provider
timeout): the provider may or may not have taken the message. The caller decides what to do
about a row it finds `claimed` (see activities/dunning.py: SMS are reconciled against the
provider's own records, emails are resent with the same Message-ID); this module records it.

Services here take an open `Session` and never commit: the caller owns the transaction.
`deliver` is the exception, it takes a transaction factory because the provider call must sit
between two transactions.

Hot path: the statements a send runs on every reminder are built once, at import, as Core
statements with bind parameters (no ORM unit of work, no per-call statement construction).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

from sqlalchemy import CursorResult, Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from dunning.credits import ledger
from dunning.domain.contract import MessageResult
from dunning.platform.db.models import ComplianceReply, Message, utcnow
from dunning.platform.providers import (
    AmbiguousProviderError,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
)

log = logging.getLogger("dunning.activities")

MessageStatus = Literal["claimed", "retry", "sent", "failed", "skipped", "unknown"]
STATUSES: tuple[MessageStatus, ...] = get_args(MessageStatus)
FINAL: frozenset[MessageStatus] = frozenset({"sent", "failed", "skipped", "unknown"})
UNKNOWN_REASON = (
    "outcome unknown: the worker stopped or the provider timed out during the send; "
    "not resent, to avoid a duplicate"
)
SLOT_REASON = "waiting for a send slot (SMS rate limit)"
REPLY_QUEUED = "queued: the reply workflow sends it"
REASON_MAX = 400

Transaction = Callable[[], AbstractContextManager[Session]]

# --- statements, built once ---------------------------------------------------------------

_M = cast(Table, Message.__table__)

_COLUMNS = (
    _M.c.id, _M.c.status, _M.c.reason, _M.c.credits, _M.c.account_id, _M.c.updated_at,
    _M.c.created_at, _M.c.attempts, _M.c.provider_id, _M.c.resends,
)
_FIND_ID = select(*_COLUMNS).where(_M.c.id == bindparam("k_id"))
_FIND = select(*_COLUMNS).where(
    _M.c.workflow_id == bindparam("k_workflow"),
    _M.c.run_id == bindparam("k_run"),
    _M.c.step == bindparam("k_step"),
    _M.c.channel == bindparam("k_channel"),
)

_INSERT = insert(_M)

_CLAIM_RETRY = (
    update(_M)
    .where(_M.c.id == bindparam("u_id"), _M.c.status == "retry")
    .values(status="claimed", attempts=_M.c.attempts + 1, updated_at=bindparam("u_now"))
)

_RECLAIM = (
    update(_M)
    .where(_M.c.id == bindparam("u_id"), _M.c.status == "claimed",
           _M.c.updated_at == bindparam("u_seen"))
    .values(attempts=_M.c.attempts + 1, updated_at=bindparam("u_now"))
)

_UNCLAIM = (
    update(_M)
    .where(_M.c.id == bindparam("u_id"), _M.c.status == "claimed",
           _M.c.updated_at == bindparam("u_seen"))
    .values(status="retry", reason=bindparam("u_reason"), updated_at=bindparam("u_now"),
            resends=_M.c.resends + 1)
)

_OPEN_SMS_CLAIMS = select(_M.c.id, _M.c.created_at).where(
    _M.c.account_id == bindparam("o_account"),
    _M.c.customer_id == bindparam("o_customer"),
    _M.c.channel == "sms",
    _M.c.created_at >= bindparam("o_since"),
    _M.c.status.in_(("claimed", "unknown")),
    _M.c.provider_id.is_(None),
).order_by(_M.c.created_at, _M.c.id)

_OPEN_ROWS = select(*_COLUMNS, _M.c.step, _M.c.channel).where(
    _M.c.workflow_id == bindparam("o_workflow"),
    _M.c.run_id == bindparam("o_run"),
    _M.c.status.in_(("retry", "claimed")),
).order_by(_M.c.id)

_SET_OUTCOME = (
    update(_M)
    .where(_M.c.id == bindparam("u_id"))
    .values(
        status=bindparam("u_status"), reason=bindparam("u_reason"),
        updated_at=bindparam("u_now"),
    )
)

_MARK_SENT = (
    update(_M)
    .where(_M.c.id == bindparam("u_id"))
    .values(
        status="sent", reason=None, provider_id=bindparam("u_provider_id"),
        updated_at=bindparam("u_now"),
    )
)

_BACK_TO_RETRY = (
    update(_M)
    .where(_M.c.id == bindparam("u_id"), _M.c.status == "claimed")
    .values(status="retry", reason=bindparam("u_reason"), updated_at=bindparam("u_now"))
)


# --- records ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageKey:
    """The idempotency key of one reminder: (workflow, run, step, channel)."""

    workflow_id: str
    run_id: str
    step: int
    channel: str

    def params(self) -> dict[str, Any]:
        return {"k_workflow": self.workflow_id, "k_run": self.run_id, "k_step": self.step,
                "k_channel": self.channel}


@dataclass(frozen=True)
class LoggedRow:
    """The parts of a `messages` row a retry needs."""

    id: int
    status: MessageStatus
    reason: str | None
    credits: int
    account_id: str
    updated_at: Any = None  # when it was last claimed or changed (the claim's time, if claimed)
    created_at: Any = None
    attempts: int = 0
    provider_id: str | None = None  # known once sent, or adopted from a delivery report
    resends: int = 0  # sends made again after a lost answer


@dataclass(frozen=True)
class Claim:
    """A row this attempt holds as `claimed`: what recording the outcome needs."""

    id: int
    key: MessageKey
    account_id: str
    credits: int
    hint: str  # the masked recipient, for logs


class ConcurrentSend(Exception):
    """Another attempt holds this reminder's row; nothing of ours was written."""

    def __init__(self) -> None:
        super().__init__("a concurrent attempt is sending this reminder")


class Unsettled(Exception):
    """The provider call ended without an answer (timeout, dropped connection): the row stays
    `claimed` for the next attempt to settle (SMS: from the provider's records; email: resent
    under the same Message-ID)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SendLater(Exception):
    """The provider refused for now (nothing was taken): the row is back to `retry`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def note(level: int, message: str, key: MessageKey, **fields: Any) -> None:
    """A structured line about one reminder (see dunning.platform.logs); recipients masked."""
    if log.isEnabledFor(level):
        log.log(level, message, extra={
            "case": key.workflow_id, "step": key.step, "channel": key.channel, **fields,
        })


def _cut(reason: str) -> str:
    return reason[:REASON_MAX]


# --- reading ------------------------------------------------------------------------------


def _logged(row: Any) -> LoggedRow:
    return LoggedRow(int(row.id), row.status, row.reason, int(row.credits or 0), row.account_id,
                     row.updated_at, row.created_at, int(row.attempts or 0), row.provider_id,
                     int(row.resends or 0))


def find(session: Session, key: MessageKey) -> LoggedRow | None:
    row = session.execute(_FIND, key.params()).first()
    return None if row is None else _logged(row)


def find_by_id(session: Session, row_id: int) -> LoggedRow | None:
    row = session.execute(_FIND_ID, {"k_id": row_id}).first()
    return None if row is None else _logged(row)


def open_rows(session: Session, workflow_id: str,
              run_id: str) -> list[tuple[MessageKey, LoggedRow]]:
    """A case's rows not final yet (retry, claimed), with their keys."""
    return [
        (MessageKey(workflow_id, run_id, int(r.step), r.channel), _logged(r))
        for r in session.execute(_OPEN_ROWS, {"o_workflow": workflow_id, "o_run": run_id})
    ]


def is_final(row: LoggedRow) -> bool:
    return row.status in FINAL


def recorded(row: LoggedRow) -> MessageResult:
    """What a final row means to the workflow (an `unknown` row counts as failed)."""
    if row.status == "unknown":
        return MessageResult("failed", row.reason or UNKNOWN_REASON, row.credits)
    if row.status == "sent":
        return MessageResult("sent", row.reason or "", row.credits)
    if row.status in ("failed", "skipped"):
        return MessageResult(row.status, row.reason or "", 0)
    raise ValueError(f"message {row.id} is not final ({row.status})")


# --- transitions --------------------------------------------------------------------------


def skip(session: Session, key: MessageKey, account_id: str, customer_id: str,
         reason: str) -> MessageResult:
    """(none) -> skipped, with its reason."""
    session.execute(_INSERT, {
        "workflow_id": key.workflow_id, "run_id": key.run_id, "step": key.step,
        "channel": key.channel, "account_id": account_id,
        "customer_id": customer_id, "status": "skipped", "reason": _cut(reason),
    })
    note(logging.INFO, "reminder skipped", key, reason=reason)
    return MessageResult("skipped", reason)


def claim(
    session: Session,
    row: LoggedRow | None,
    key: MessageKey,
    account_id: str,
    customer_id: str,
    hint: str,
    *,
    credits: int,
    segments: int = 0,
    encoding: str | None = None,
) -> Claim:
    """(none) | retry -> claimed, before the provider is called. A new row's INSERT raises
    IntegrityError when a concurrent attempt inserted the same key; a `retry` row is taken over
    only if it is still `retry` (else ConcurrentSend), keeping its original credit reservation."""
    now = utcnow()
    if row is None:
        result = cast(CursorResult[Any], session.execute(_INSERT, {
            "workflow_id": key.workflow_id, "run_id": key.run_id, "step": key.step,
            "channel": key.channel, "account_id": account_id,
            "customer_id": customer_id, "status": "claimed", "recipient_hint": hint,
            "credits": credits, "segments": segments, "encoding": encoding, "attempts": 1,
            "created_at": now, "updated_at": now,
        }))
        pk = result.inserted_primary_key
        assert pk is not None
        return Claim(int(pk[0]), key, account_id, credits, hint)
    taken = cast(CursorResult[Any], session.execute(_CLAIM_RETRY, {"u_id": row.id, "u_now": now}))
    if taken.rowcount != 1:
        raise ConcurrentSend()
    return Claim(row.id, key, row.account_id, row.credits, hint)


def _inserted_by_debit(changed: Any) -> Any:
    """The SMS row a one-trip debit inserts (`claim_paid`): only if `changed` (the debit)
    has a row, with the values of the `m_` parameters."""
    names = ("workflow_id", "run_id", "step", "channel", "account_id", "customer_id", "status",
             "reason", "recipient_hint", "credits", "segments", "encoding", "attempts",
             "resends", "created_at", "updated_at")
    values = [bindparam(f"m_{name}", type_=_M.c[name].type) for name in names]
    return (insert(_M).from_select(names, select(*values).select_from(changed))
            .returning(_M.c.id))


def claim_paid(
    session: Session,
    key: MessageKey,
    account_id: str,
    customer_id: str,
    hint: str,
    *,
    credits: int,
    segments: int,
    encoding: str | None,
    hold: bool,
) -> tuple[ledger.Reservation, Claim] | None:
    """(none) -> claimed (with `hold`: -> retry, waiting for a send slot) and the SMS's credit
    debit in one statement, sent with the transaction's COMMIT (`ledger.debit_and_commit`;
    PostgreSQL). None: not taken (the debit needs `ledger.reserve`'s locked path); what the
    transaction held before has committed, nothing of this. Raises IntegrityError when a
    concurrent attempt inserted the same key (nothing of this statement happened)."""
    now = utcnow()
    paid = ledger.debit_and_commit(
        session, account_id, credits, workflow_id=key.workflow_id, step=key.step,
        then=_inserted_by_debit, then_params={
            "m_workflow_id": key.workflow_id, "m_run_id": key.run_id, "m_step": key.step,
            "m_channel": key.channel, "m_account_id": account_id, "m_customer_id": customer_id,
            "m_status": "retry" if hold else "claimed", "m_reason": SLOT_REASON if hold else None,
            "m_recipient_hint": hint, "m_credits": credits, "m_segments": segments,
            "m_encoding": encoding, "m_attempts": 0 if hold else 1, "m_resends": 0,
            "m_created_at": now, "m_updated_at": now,
        },
    )
    if paid is None:
        return None
    reservation, row_id = paid
    return reservation, Claim(row_id, key, account_id, credits, hint)


def reclaim(session: Session, row: LoggedRow, key: MessageKey, hint: str) -> Claim:
    """claimed -> claimed again, by the attempt that decided to send it once more (after an
    ambiguous crash). Taken only if nobody touched the row since it was read (else
    ConcurrentSend); its `updated_at` becomes this claim's time."""
    taken = cast(CursorResult[Any], session.execute(_RECLAIM, {
        "u_id": row.id, "u_seen": row.updated_at, "u_now": utcnow(),
    }))
    if taken.rowcount != 1:
        raise ConcurrentSend()
    return Claim(row.id, key, row.account_id, row.credits, hint)


def unclaim(session: Session, row: LoggedRow, reason: str) -> LoggedRow:
    """claimed -> retry, for a claim the provider proved it never took (not in its records
    after the settling window, or an email resent under the same Message-ID). Taken only if
    nobody touched the row since it was read (else ConcurrentSend)."""
    taken = cast(CursorResult[Any], session.execute(_UNCLAIM, {
        "u_id": row.id, "u_seen": row.updated_at, "u_reason": _cut(reason), "u_now": utcnow(),
    }))
    if taken.rowcount != 1:
        raise ConcurrentSend()
    again = find_by_id(session, row.id)
    assert again is not None
    return again


def open_sms_claims(session: Session, account_id: str, customer_id: str,
                    since: Any) -> list[tuple[int, Any]]:
    """(id, created_at) of SMS rows to this customer whose outcome is not settled yet (claimed
    or unknown, no provider id), oldest first: the claims an ambiguous one might be mixed up
    with."""
    return [(int(r.id), r.created_at) for r in session.execute(_OPEN_SMS_CLAIMS, {
        "o_account": account_id, "o_customer": customer_id, "o_since": since,
    })]


def taken_provider_ids(session: Session, provider_ids: list[str]) -> set[str]:
    """The ones among `provider_ids` already recorded on a row."""
    if not provider_ids:
        return set()
    return set(session.scalars(
        select(_M.c.provider_id).where(_M.c.provider_id.in_(provider_ids))
    ))


def hold(session: Session, key: MessageKey, account_id: str, customer_id: str, hint: str,
         credits: int, segments: int, encoding: str | None) -> LoggedRow:
    """(none) -> retry: a new SMS row holding its credit reservation while it waits for a
    send slot (a crash meanwhile leaves a row the next attempt sends from)."""
    now = utcnow()
    session.execute(_INSERT, {
        "workflow_id": key.workflow_id, "run_id": key.run_id, "step": key.step,
        "channel": key.channel, "account_id": account_id,
        "customer_id": customer_id, "status": "retry",
        "reason": SLOT_REASON, "recipient_hint": hint,
        "credits": credits, "segments": segments, "encoding": encoding, "attempts": 0,
        "created_at": now, "updated_at": now,
    })
    row = find(session, key)
    assert row is not None
    return row


def release(
    session: Session, key: MessageKey, row_id: int, account_id: str, amount: int, reason: str,
    status: Literal["failed", "skipped"] = "failed",
) -> None:
    """retry | claimed -> failed | skipped, and its credits go back."""
    session.execute(_SET_OUTCOME, {
        "u_id": row_id, "u_status": status, "u_reason": _cut(reason), "u_now": utcnow(),
    })
    if amount:
        ledger.refund(
            session, account_id, amount, workflow_id=key.workflow_id, step=key.step,
            message_id=row_id, note=_cut(reason),
        )


def fail(session: Session, row_id: int, reason: str) -> None:
    """-> failed, credits untouched (nothing was reserved, or the provider may have billed)."""
    session.execute(_SET_OUTCOME, {
        "u_id": row_id, "u_status": "failed", "u_reason": _cut(reason), "u_now": utcnow(),
    })


def give_up(session: Session, key: MessageKey, row: LoggedRow, reason: str) -> MessageResult:
    """retry -> failed for good (the send kept failing until it was given up): the provider's
    last reason, and the credits back (nothing was taken)."""
    reason = _cut(f"provider kept failing: {reason}")
    release(session, key, row.id, row.account_id, row.credits, reason)
    note(logging.WARNING, "reminder given up", key, reason=reason)
    return MessageResult("failed", reason)


def close_open_rows(session: Session, workflow_id: str, run_id: str, outcome: str) -> int:
    """When a case ends: every row of it still `retry` is given up (credits back) and every
    row still `claimed` becomes `unknown`, so the log holds only final rows. Returns how many."""
    rows = open_rows(session, workflow_id, run_id)
    for key, row in rows:
        if row.status == "retry":
            give_up(session, key, row, row.reason or f"case {outcome} before it was sent")
        else:
            mark_unknown(session, key, row)
    return len(rows)


def mark_unknown(session: Session, key: MessageKey, row: LoggedRow,
                 reason: str = UNKNOWN_REASON) -> MessageResult:
    """claimed -> unknown: the credits stay spent (the provider may have billed); a later
    delivery report for the message (its callback URL names the row) settles it."""
    reason = _cut(reason)
    session.execute(_SET_OUTCOME, {
        "u_id": row.id, "u_status": "unknown", "u_reason": reason, "u_now": utcnow(),
    })
    note(logging.WARNING, "send outcome unknown: not resent", key)
    return MessageResult("failed", reason, row.credits)


def mark_sent(session: Session, row_id: int, provider_id: str | None) -> None:
    """claimed | unknown -> sent, with the provider's id for its message."""
    session.execute(_MARK_SENT, {
        "u_id": row_id, "u_provider_id": provider_id[:64] if provider_id else None,
        "u_now": utcnow(),
    })


def back_to_retry(session: Session, row_id: int, reason: str) -> None:
    """claimed -> retry: the provider proved it took nothing (5xx, 429, refused connection)."""
    session.execute(_BACK_TO_RETRY, {"u_id": row_id, "u_reason": _cut(reason), "u_now": utcnow()})


def deliver(
    transaction: Transaction,
    claimed: Claim,
    call: Callable[[], str],
    *,
    refund: bool,
    on_accepted: Callable[[str], None] | None = None,
    keep_ambiguous: bool = False,
) -> MessageResult:
    """Call the provider for a claimed row and record what it answered, in a transaction of
    its own. `on_accepted(provider_id)` hears the provider's answer before it is recorded (the
    caller keeps it where a retry finds it, should the record fail).

    Transient: the row goes back to `retry` and SendLater is raised. Permanent: `failed` (and
    refunded when `refund`). Ambiguous: the row stays `claimed` and Unsettled is raised when
    `keep_ambiguous` (the caller settles it), else `unknown` (not resent)."""
    key = claimed.key
    try:
        provider_id = call()
    except TransientProviderError as exc:
        with transaction() as s:
            back_to_retry(s, claimed.id, exc.reason)
        note(logging.WARNING, "provider unavailable: retrying with backoff", key,
             to=claimed.hint, reason=exc.reason)
        raise SendLater(exc.reason) from None
    except AmbiguousProviderError as exc:
        if keep_ambiguous:
            note(logging.WARNING, "provider answer lost: settling on the next attempt", key,
                 to=claimed.hint, reason=exc.reason)
            raise Unsettled(exc.reason) from None
        reason = _cut(f"{UNKNOWN_REASON} ({exc.reason})")
        with transaction() as s:
            s.execute(_SET_OUTCOME, {
                "u_id": claimed.id, "u_status": "unknown", "u_reason": reason, "u_now": utcnow(),
            })
        note(logging.WARNING, "reminder outcome unknown: not resent", key, to=claimed.hint,
             reason=exc.reason)
        return MessageResult("failed", reason, claimed.credits)
    except (PermanentProviderError, ProviderError) as exc:
        with transaction() as s:
            if refund:
                release(s, key, claimed.id, claimed.account_id, claimed.credits, exc.reason)
            else:
                fail(s, claimed.id, exc.reason)
        note(logging.WARNING, "reminder failed", key, to=claimed.hint, reason=exc.reason)
        return MessageResult("failed", exc.reason)
    if on_accepted is not None:
        on_accepted(provider_id)
    with transaction() as s:
        mark_sent(s, claimed.id, provider_id)
    note(logging.INFO, "reminder sent", key, to=claimed.hint, credits=claimed.credits)
    return MessageResult("sent", "", claimed.credits)


# --- compliance replies (HELP answers, STOP confirmations) --------------------------------


def queue_reply(session: Session, kind: str, account_id: str, inbound_uuid: str,
                customer_id: str, hint: str, src: str, dst: str, text: str, segments: int,
                encoding: str) -> int:
    """(none) -> retry for a compliance reply, with what it sends: workflow_id
    `<kind>:<account>`, run_id the inbound MessageUUID, step 0; it costs no credits. The reply
    workflow claims and sends it. Returns the row id."""
    now = utcnow()
    result = cast(CursorResult[Any], session.execute(_INSERT, {
        "workflow_id": f"{kind}:{account_id}", "run_id": inbound_uuid[:64], "step": 0,
        "channel": "sms", "account_id": account_id, "customer_id": customer_id,
        "status": "retry", "reason": REPLY_QUEUED, "recipient_hint": hint, "credits": 0,
        "segments": segments, "encoding": encoding, "attempts": 0, "created_at": now,
        "updated_at": now,
    }))
    pk = result.inserted_primary_key
    assert pk is not None
    row_id = int(pk[0])
    session.add(ComplianceReply(message_id=row_id, src=src, dst=dst, text=text))
    session.flush()
    return row_id


def reply_to_send(session: Session, row_id: int) -> tuple[MessageKey, ComplianceReply] | None:
    """The key and the content of a compliance reply row."""
    found = session.execute(
        select(_M.c.workflow_id, _M.c.run_id, ComplianceReply)
        .join(ComplianceReply, ComplianceReply.message_id == _M.c.id)
        .where(_M.c.id == row_id)
    ).first()
    if found is None:
        return None
    return MessageKey(found.workflow_id, found.run_id, 0, "sms"), found.ComplianceReply


def pending_replies(session: Session, inbound_uuid: str) -> list[int]:
    """Compliance replies to one inbound message not sent yet (`retry`), e.g. when the process
    that took the message stopped before the reply workflow was started."""
    return [int(i) for i in session.scalars(
        select(_M.c.id).where(
            _M.c.run_id == inbound_uuid[:64], _M.c.step == 0, _M.c.status == "retry",
            _M.c.workflow_id.like("help:%") | _M.c.workflow_id.like("stop:%"),
        ).order_by(_M.c.id)
    )]


# --- delivery reports (rows loaded for update by dunning.messages.delivery) ---------------


def adopt_provider_id(row: Message, provider_id: str) -> None:
    """A row without a provider id (claimed or unknown) takes the one a report names."""
    row.provider_id = provider_id[:64]


def record_delivery(row: Message, status: str, error_code: str | None,
                    sequence: int | None) -> None:
    row.delivery_status = status[:16]
    row.delivery_error = error_code[:16] if error_code else None
    if sequence is not None:
        row.delivery_sequence = sequence


def settle_unknown(row: Message, delivered: bool, reason: str | None = None) -> None:
    """unknown -> sent | failed, from the provider's own record of the message."""
    if row.status != "unknown":
        return
    if delivered:
        row.status, row.reason = "sent", None
    else:
        row.status, row.reason = "failed", _cut(reason) if reason else None
