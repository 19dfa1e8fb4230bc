"""Compliance replies (the HELP answer, the STOP confirmation): planned by
dunning.messages.inbound as `retry` rows with their content (`compliance_replies`), then sent
through the message log like every other SMS.

Who sends them is a collaborator of the webhook app (`ReplyStarter`):
- `DurableReplies` (the server's default) starts one small workflow per inbound message
  (workflows/reply.py, id `reply-<MessageUUID>`): a webhook server killed after answering Plivo
  loses nothing, the worker retries a provider outage, and a crash inside the provider call is
  settled from Plivo's records like a reminder. Plivo's retry of the same inbound message finds
  the workflow already started (or starts it, when the first delivery died before it could).
- `InlineReplies` sends them in the web process before answering (tests, embedding): not
  durable, a transient provider failure is recorded `failed` and not retried.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from sqlalchemy.orm import Session

from dunning.domain.contract import (
    REPLY_WORKFLOW_TYPE,
    MessageResult,
    ReplyRequest,
    reply_workflow_id,
)
from dunning.messages import log as message_log
from dunning.messages.delivery import STATUS_PATH
from dunning.messages.log import Claim, LoggedRow, SendLater
from dunning.platform.db import Database
from dunning.platform.providers.sms import OutgoingSms, SmsProvider

log = logging.getLogger("dunning.webhooks")


class ReplyStarter(Protocol):
    async def start(self, inbound_uuid: str, message_ids: list[int]) -> None:
        """Have the planned replies of one inbound message sent. Raises when that cannot be
        arranged now (the caller answers 503 and Plivo retries)."""
        ...


def callback_url(public_url: str, message_id: int) -> str:
    return f"{public_url.rstrip('/')}{STATUS_PATH}?ref={message_id}"


def prepare(session: Session, message_id: int,
            public_url: str) -> tuple[Claim, OutgoingSms] | MessageResult | LoggedRow:
    """Claim a queued reply: the SMS to hand to the provider; the recorded result of a final
    one; or the row itself when an earlier attempt claimed it and its answer was lost."""
    row = message_log.find_by_id(session, message_id)
    found = message_log.reply_to_send(session, message_id)
    if row is None or found is None:
        return MessageResult("skipped", "no such compliance reply")
    if message_log.is_final(row):
        return message_log.recorded(row)
    if row.status == "claimed":
        return row
    key, reply = found
    claim = message_log.claim(session, row, key, row.account_id, "", "reply", credits=0)
    return claim, OutgoingSms(reply.src, reply.dst, reply.text,
                              callback_url(public_url, message_id))


class InlineReplies:
    """Sends the replies in this process, before the webhook answers (see the docstring)."""

    def __init__(self, db: Database, sms: SmsProvider, public_url: str) -> None:
        self.db, self.sms, self.public_url = db, sms, public_url

    async def start(self, inbound_uuid: str, message_ids: list[int]) -> None:
        for message_id in message_ids:
            await asyncio.to_thread(self.send_now, message_id)

    def send_now(self, message_id: int) -> MessageResult:
        with self.db.session() as s:
            prepared = prepare(s, message_id, self.public_url)
            if isinstance(prepared, LoggedRow):
                key = message_log.MessageKey("reply", str(message_id), 0, "sms")
                return message_log.mark_unknown(s, key, prepared)
        if isinstance(prepared, MessageResult):
            return prepared
        claim, sms = prepared
        try:
            result = message_log.deliver(self.db.session, claim, lambda: self.sms.send(sms),
                                         refund=False)
        except SendLater as exc:
            with self.db.session() as s:
                message_log.fail(s, claim.id, exc.reason)
            result = MessageResult("failed", exc.reason)
        except Exception as exc:  # a provider bug must not lose the record
            with self.db.session() as s:
                message_log.fail(s, claim.id, f"{type(exc).__name__}: {exc}")
            result = MessageResult("failed", f"{type(exc).__name__}")
        log.info("reply %s: %s%s", message_id, result.status,
                 f" ({result.reason})" if result.reason else "")
        return result


class TemporalClientSource(Protocol):
    async def get(self) -> object: ...


class DurableReplies:
    """Starts the reply workflow of each inbound message through Temporal (see the
    docstring). `temporal.get()` gives a `dunning.cases.client.DunningClient`."""

    def __init__(self, temporal: TemporalClientSource) -> None:
        self.temporal = temporal

    async def start(self, inbound_uuid: str, message_ids: list[int]) -> None:
        from temporalio.exceptions import WorkflowAlreadyStartedError

        if not message_ids:
            return
        dunning_client = await self.temporal.get()
        client = dunning_client.client  # type: ignore[attr-defined]
        queue = dunning_client.settings.task_queue  # type: ignore[attr-defined]
        for message_id in message_ids:
            try:
                await client.start_workflow(
                    REPLY_WORKFLOW_TYPE, ReplyRequest(message_id),
                    id=reply_workflow_id(inbound_uuid), task_queue=queue,
                )
            except WorkflowAlreadyStartedError:
                pass  # Plivo's retry of the same inbound message: already on its way
