"""Inbound SMS (Plivo's message URL): STOP, START, HELP and other replies.

Rules:
- The accounts concerned are those whose `sms_sender` is the `To` number; a `To` no account
  sends from changes nothing. Other accounts (other senders) are never touched.
- STOP family (or MessageIntent=optout): the sender is opted out for every such account.
  One confirmation text goes out when at least one account newly opted the number out, unless
  Plivo already answered it (MessageIntent=optout: Plivo's long codes and toll-free numbers
  handle STOP and send their own confirmation, and a second text would not be allowed).
- START family (or MessageIntent=optin): opted back in.
- HELP family (or MessageIntent=help): one reply naming the company, its support contact and
  the opt-out line. With several accounts on the number, the one that knows the sender as a
  customer answers (first by id when several or none do).
- Anything else is kept as a `reply` consent event for the operator.
- One delivery is handled once: `processed_events` (source `plivo-inbound`, the MessageUUID).
  Replies cost no credits and are recorded as `messages` rows (workflow_id `help:<account>` or
  `stop:<account>`, run_id = the inbound MessageUUID, step 0) before they are sent, with what
  they send (`compliance_replies`); dunning.messages.replies has them sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from dunning.customers import consent
from dunning.customers.consent import InboundKind
from dunning.domain.segments import count_segments
from dunning.messages import log as message_log
from dunning.messages.inbox import claim_event
from dunning.platform.db.models import Account, Customer
from dunning.platform.providers import mask_phone

log = logging.getLogger("dunning.webhooks")

SOURCE = "plivo-inbound"


@dataclass(frozen=True)
class InboundMessage:
    from_number: str  # E.164
    to_number: str  # E.164
    text: str
    message_uuid: str
    intent: str | None = None


@dataclass(frozen=True)
class PlannedReply:
    message_id: int
    src: str
    dst: str
    text: str


@dataclass
class InboundOutcome:
    kind: InboundKind
    duplicate: bool = False
    accounts: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    replies: list[PlannedReply] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)  # a repeat's replies not sent yet

    def reply_ids(self) -> list[int]:
        """The replies to have sent: planned now, or still pending from the first delivery."""
        return [r.message_id for r in self.replies] or self.pending


def _customer_id(session: Session, account_id: str, phone: str) -> str | None:
    return session.scalar(
        select(Customer.customer_id)
        .where(Customer.account_id == account_id, Customer.phone_e164 == phone)
        .order_by(Customer.customer_id)
        .limit(1)
    )


def _plan_reply(
    session: Session, kind: str, account: Account, msg: InboundMessage, text: str
) -> PlannedReply:
    info = count_segments(text)
    src = account.sms_sender or msg.to_number
    row_id = message_log.queue_reply(
        session, kind, account.id, msg.message_uuid,
        _customer_id(session, account.id, msg.from_number) or "",
        mask_phone(msg.from_number), src, msg.from_number, text, info.segments, info.encoding,
    )
    return PlannedReply(row_id, src, msg.from_number, text)


def _help_account(session: Session, accounts: list[Account], phone: str) -> Account:
    for account in accounts:
        if _customer_id(session, account.id, phone) is not None:
            return account
    return accounts[0]


def process_inbound(session: Session, msg: InboundMessage) -> InboundOutcome:
    """Apply one inbound message; the replies it plans are sent by the caller after commit."""
    kind, keyword = consent.classify_inbound(msg.text, msg.intent)
    outcome = InboundOutcome(kind)
    if not claim_event(session, SOURCE, msg.message_uuid):
        outcome.duplicate = True
        # Plivo retries a delivery it got no answer to: a reply planned by the first one but
        # never started (the process died in between) is started now.
        outcome.pending = message_log.pending_replies(session, msg.message_uuid)
        return outcome
    accounts = consent.accounts_for_sender(session, msg.to_number)
    outcome.accounts = [a.id for a in accounts]
    masked_from, masked_to = mask_phone(msg.from_number), mask_phone(msg.to_number)
    if not accounts:
        log.info("inbound sms to %s: no account sends from that number; ignored", masked_to)
        return outcome
    uuid = msg.message_uuid
    if kind == "opt_out":
        changed = [
            a for a in accounts
            if consent.record_opt_out(session, a.id, msg.from_number, source=SOURCE,
                                      keyword=keyword, provider_message_id=uuid)
        ]
        outcome.changed = [a.id for a in changed]
        if changed and (msg.intent or "").lower() != "optout":
            text = consent.stop_confirmation_text(
                (a.company_name for a in changed),
                consent.reply_chain(session, changed[0], msg.from_number),
            )
            outcome.replies.append(_plan_reply(session, "stop", changed[0], msg, text))
    elif kind == "opt_in":
        outcome.changed = [
            a.id for a in accounts
            if consent.record_opt_in(session, a.id, msg.from_number, source=SOURCE,
                                     keyword=keyword, provider_message_id=uuid)
        ]
    elif kind == "help":
        account = _help_account(session, accounts, msg.from_number)
        outcome.replies.append(
            _plan_reply(session, "help", account, msg, consent.help_text(
                account, consent.reply_chain(session, account, msg.from_number)
            ))
        )
    else:
        for a in accounts:
            consent.record_reply(session, a.id, msg.from_number, source=SOURCE,
                                 provider_message_id=msg.message_uuid)
        log.info(
            "inbound reply for operator accounts=%s from=%s uuid=%s text=%r",
            ",".join(outcome.accounts), masked_from, msg.message_uuid,
            consent.redact_numbers(msg.text)[:200],
        )
        return outcome
    log.info(
        "inbound %s (%s) from=%s to=%s accounts=%s changed=%s uuid=%s", kind, keyword,
        masked_from, masked_to, ",".join(outcome.accounts), ",".join(outcome.changed),
        msg.message_uuid,
    )
    return outcome
