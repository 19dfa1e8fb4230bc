"""ComplianceReplyWorkflow: the durable sending of one compliance reply (a HELP answer or a STOP
confirmation), started by the webhook server with id `reply-<inbound MessageUUID>`.

One activity does it (`send_reply`, through the message log like every SMS): a provider outage
is retried with backoff for up to an hour (REPLY_GIVE_UP; the last attempt records `failed`), a
worker killed inside the provider call is settled from Plivo's records. Plivo's retry of the
same inbound message cannot start a second one (the id is taken). No PII: the argument is the
reply's `messages` row id; what to send and to whom is read from the database.
"""

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from dunning.domain.contract import (
        ACT_SEND_REPLY,
        REPLY_GIVE_UP,
        REPLY_WORKFLOW_TYPE,
        SEND_RETRY,
        MessageResult,
        ReplyRequest,
    )

REPLY_TIMEOUT = timedelta(seconds=60)
REPLY_HEARTBEAT = timedelta(seconds=15)


@workflow.defn(name=REPLY_WORKFLOW_TYPE)
class ComplianceReplyWorkflow:
    @workflow.run
    async def run(self, req: ReplyRequest) -> MessageResult:
        try:
            result: MessageResult = await workflow.execute_activity(
                ACT_SEND_REPLY,
                req,
                result_type=MessageResult,
                start_to_close_timeout=REPLY_TIMEOUT,
                heartbeat_timeout=REPLY_HEARTBEAT,
                schedule_to_close_timeout=REPLY_GIVE_UP,
                retry_policy=SEND_RETRY,
            )
        except ActivityError as err:
            return MessageResult("failed", f"reply not sent: {err.cause or err}"[:300])
        return result
