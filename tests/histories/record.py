"""Record the replay histories in this directory: representative dunning cases run end to end on a
local dev server, exported with `handle.fetch_history()` as `<name>.json`.

    python -m tests.histories.record            # all of them (about two minutes)
    python -m tests.histories.record recovery   # only some

tests/test_replay.py replays every history here through the current DunningWorkflow and fails on
non-determinism. Re-record only after a deliberate workflow change that is guarded with
`workflow.patched(...)` (see workflows/dunning.py), and keep the old histories too (rename them,
e.g. `full_schedule.v1.json`): they are what cases started before the change look like.

The files: `<name>.json`, recorded by the current workflow (all but `iso_currency.json` before
the `iso-currency` patch, whose marker only `iso_currency.json` carries); `<name>.v2.json`,
recorded before the `resume-clears-sms-paused` patch; `<name>.v1.json`, recorded before the
`end-cancels-queued-sends` patch. Without a patch's marker, a replay takes its old branch.
`outbound_events.json` was recorded before the `batched-bookkeeping` patch,
`batched_bookkeeping.json` after it. `signal_account.json` holds the
`signals-name-their-account` marker (a signal for another account ignored).
`compliance_reply.json` is a ComplianceReplyWorkflow (workflows/reply.py); the others are
DunningWorkflow cases.

The workers use Temporal's default data converter (no payload encryption), so the payloads in
these files are plain JSON (base64 in the proto JSON); the data is made up.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities import DunningActivities
from dunning.cases.campaigns import CampaignInput, set_campaign
from dunning.cases.experiments import set_sms_holdout
from dunning.credits import ledger
from dunning.domain.contract import (
    REPLY_WORKFLOW_TYPE,
    SEARCH_ATTRIBUTES,
    ReplyRequest,
    reply_workflow_id,
)
from dunning.domain.experiments import assign_arm
from dunning.events import endpoints
from dunning.messages import log as message_log
from dunning.platform.db import Database
from dunning.platform.providers.email import ConsoleEmailProvider
from dunning.platform.providers.sms import ConsoleSmsProvider
from dunning.platform.settings import Settings
from dunning.platform.temporal import temporal_binary
from tests.helpers import add_customer, case_input, make_account, query_status, wait_for
from worker import build_workers, running

HERE = Path(__file__).resolve().parent
QUEUE = "histories"
Scenario = Callable[[Client, Database], Awaitable[WorkflowHandle[Any, Any]]]


async def _start(client: Client, account: str, **extra: Any) -> WorkflowHandle[Any, Any]:
    return await client.start_workflow(
        "DunningWorkflow", case_input(account, "inv1", "c1", **extra),
        id=f"dunning-{account}-inv1", task_queue=QUEUE,
    )


async def full_schedule(client: Client, db: Database) -> WorkflowHandle[Any, Any]:
    """Three steps on both channels, then the grace period: exhausted."""
    make_account(db, "full", schedule="0s,1s,2s", grace="1s", balance=10)
    add_customer(db, "full", "c1", phone="+14155550101")
    handle = await _start(client, "full")
    await handle.result()
    return handle


async def pause_resume(client: Client, db: Database) -> WorkflowHandle[Any, Any]:
    """Credits run out after step 1: SMS pauses (step 2 is overtaken while paused), email goes
    on; a top-up and `credits_added` resume it for step 3; then the payment is recovered."""
    make_account(db, "pause", schedule="0s,1s,2s,30s", grace="1s", balance=1)
    add_customer(db, "pause", "c1", phone="+14155550102")
    handle = await _start(client, "pause")

    async def paused_at_step_3() -> bool:
        st = await query_status(handle)
        sms = {r["step"]: r["status"] for r in st["reminders"] if r["channel"] == "sms"}
        return bool(st["sms_paused"]) and sms.get(2) == "skipped"

    await wait_for(paused_at_step_3, timeout=30)
    with db.session() as s:
        ledger.top_up(s, "pause", 5)
    await handle.signal("credits_added", {"balance": 5})

    async def step_3_sent() -> bool:
        st = await query_status(handle)
        return any(r["step"] == 3 and r["channel"] == "sms" and r["status"] == "sent"
                   for r in st["reminders"])

    await wait_for(step_3_sent, timeout=30)
    await handle.signal("payment_recovered")
    await handle.result()
    return handle


async def recovery(client: Client, db: Database) -> WorkflowHandle[Any, Any]:
    """Recovered (with an amount) after the first step: the rest is skipped."""
    make_account(db, "recovery", schedule="0s,30s,60s", grace="1s", balance=10)
    add_customer(db, "recovery", "c1", phone="+14155550103")
    handle = await _start(client, "recovery")

    async def first_step_done() -> bool:
        st = await query_status(handle)
        return all(r["status"] == "sent" for r in st["reminders"] if r["step"] == 1)

    await wait_for(first_step_done, timeout=30)
    await handle.signal("payment_recovered", {"amount": 4900})
    await handle.result()
    return handle


async def cancel(client: Client, db: Database) -> WorkflowHandle[Any, Any]:
    """SMS off for the account (skipped with its reason), canceled with a reason."""
    make_account(db, "cancel", schedule="0s,30s", sms=False)
    add_customer(db, "cancel", "c1", phone="+14155550104")
    handle = await _start(client, "cancel")

    async def email_sent() -> bool:
        st = await query_status(handle)
        return any(r["channel"] == "email" and r["status"] == "sent" for r in st["reminders"])

    await wait_for(email_sent, timeout=30)
    await handle.signal("cancel", {"reason": "invoice voided"})
    await handle.result()
    return handle


async def late_start(client: Client, db: Database) -> WorkflowHandle[Any, Any]:
    """Started 8 days after the failure on the default schedule: steps 1 and 2 are skipped as
    overtaken, step 3 is sent on both channels, then the case is canceled."""
    make_account(db, "late", schedule="0d,3d,7d,14d", grace="7d", balance=10)
    add_customer(db, "late", "c1", phone="+14155550105", time_zones=None)
    failed_at = (datetime.now(UTC) - timedelta(days=8)).isoformat()
    handle = await _start(client, "late", failed_at=failed_at)

    async def step_3_sent() -> bool:
        st = await query_status(handle)
        return sum(1 for r in st["reminders"] if r["step"] == 3 and r["status"] == "sent") == 2

    await wait_for(step_3_sent, timeout=30)
    await handle.signal("cancel")
    await handle.result()
    return handle


async def quiet_hours(client: Client, db: Database) -> WorkflowHandle[Any, Any]:
    """The recipient's sending window opens at the next full minute: the SMS is held until then
    (email goes out at once), then sent; then the payment is recovered. Takes up to a minute."""
    now = datetime.now(UTC)
    opens = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
    if (opens - now).total_seconds() < 5:  # too close to call: the window must still be shut
        opens += timedelta(minutes=1)
    closes = opens + timedelta(hours=1)
    window = f"{opens:%H:%M}-{closes:%H:%M}"
    make_account(db, "quiet", schedule="0s", grace="10m", balance=10, quiet_hours=window)
    add_customer(db, "quiet", "c1", phone="+14155550106", time_zones="Etc/UTC")
    handle = await _start(client, "quiet")

    async def sms_sent() -> bool:
        st = await query_status(handle)
        return any(r["channel"] == "sms" and r["status"] == "sent" for r in st["reminders"])

    await wait_for(sms_sent, timeout=150, interval=1)
    await handle.signal("payment_recovered")
    result = await handle.result()
    assert result["sms_sent"] == 1, result
    return handle


async def signal_account(client: Client, db: Database) -> WorkflowHandle[Any, Any]:
    """Under the `dunning:<account>:<invoice>` id: a `cancel` naming another account is ignored
    (patch `signals-name-their-account`), then the case's own `payment_recovered` ends it."""
    make_account(db, "sigacct", schedule="0s,30s", sms=False)
    add_customer(db, "sigacct", "c1", phone="+14155550107")
    handle = await client.start_workflow(
        "DunningWorkflow", case_input("sigacct", "inv1", "c1"), id="dunning:sigacct:inv1",
        task_queue=QUEUE,
    )

    async def email_sent() -> bool:
        st = await query_status(handle)
        return any(r["channel"] == "email" and r["status"] == "sent" for r in st["reminders"])

    await wait_for(email_sent, timeout=30)
    await handle.signal("cancel", {"account_id": "someone-else", "reason": "forged"})
    await handle.signal("payment_recovered", {"account_id": "sigacct"})
    return handle


async def iso_currency(client: Client, db: Database) -> WorkflowHandle[Any, Any]:
    """Started with a lower-case currency (`eur`, as Stripe sends it): accepted under the
    `iso-currency` patch and used upper case; the first step goes out, then the payment is
    recovered."""
    make_account(db, "currency", schedule="0s,30s", grace="1s", balance=10)
    add_customer(db, "currency", "c1", phone="+14155550107")
    handle = await _start(client, "currency", currency="eur")

    async def first_step_done() -> bool:
        st = await query_status(handle)
        return all(r["status"] == "sent" for r in st["reminders"] if r["step"] == 1)

    await wait_for(first_step_done, timeout=30)
    await handle.signal("payment_recovered", {"amount": 4900})
    result = await handle.result()
    assert result["outcome"] == "recovered", result
    return handle


async def sms_holdout(client: Client, db: Database) -> WorkflowHandle[Any, Any]:
    """An account holding 50% of new cases out of SMS; this case lands in the holdout: email on
    both steps, SMS skipped (the send activity reads the arm), then exhausted."""
    account = next(
        f"holdout{n}" for n in range(1000)
        if assign_arm(f"dunning-holdout{n}-inv1", 50) == "holdout"
    )
    make_account(db, account, schedule="0s,1s", grace="1s", balance=10)
    add_customer(db, account, "c1", phone="+14155550107")
    with db.session() as s:
        set_sms_holdout(s, account, 50)
    handle = await _start(client, account)
    await handle.result()
    return handle


async def outbound_events(client: Client, db: Database) -> WorkflowHandle[Any, Any]:
    """With the `outbound-events` patch: the case records its events (case.started, reminders,
    sms.paused when credits run out at step 2, sms.resumed and case.exhausted at the end)."""
    make_account(db, "events", schedule="0s,1s", grace="1s", balance=1)
    add_customer(db, "events", "c1", phone="+14155550107")
    with db.session() as s:
        endpoints.add_endpoint(s, "events", "https://hooks.example/events", [])
    handle = await _start(client, "events")
    await handle.result()
    return handle


async def batched_bookkeeping(client: Client, db: Database) -> WorkflowHandle[Any, Any]:
    """With the `batched-bookkeeping` patch: a case of the `gold` campaign (its snapshot comes
    back with register_case) pauses for credits at step 2 and is resumed by a top-up; its events
    wait for the sends under way, the last ones ride on finish_case, and the end action (none)
    is a local activity."""
    make_account(db, "batched", schedule="0s,30s", grace="1h", balance=1)
    add_customer(db, "batched", "c1", phone="+14155550109")
    with db.session() as s:
        endpoints.add_endpoint(s, "batched", "https://hooks.example/events", [])
        set_campaign(s, "batched", "gold", CampaignInput("0s,1s", "1s", None, None))
    handle = await _start(client, "batched", plan="gold")

    async def paused() -> bool:
        return bool((await query_status(handle))["sms_paused"])

    await wait_for(paused, timeout=30)
    with db.session() as s:
        ledger.top_up(s, "batched", 10)
    await handle.signal("credits_added", {"balance": 10})
    await handle.result()
    return handle


async def campaign(client: Client, db: Database) -> WorkflowHandle[Any, Any]:
    """With the `campaign-snapshot` patch: the plan's campaign (two steps a second apart, SMS on
    step 1 only) replaces the account's long schedule; then exhausted."""
    make_account(db, "campaign", schedule="0s,30s", grace="1h", balance=10)
    add_customer(db, "campaign", "c1", phone="+14155550108")
    with db.session() as s:
        set_campaign(s, "campaign", "gold", CampaignInput("0s,1s", "1s", "1", None))
    handle = await _start(client, "campaign", plan="gold")
    await handle.result()
    return handle


async def compliance_reply(client: Client, db: Database) -> WorkflowHandle[Any, Any]:
    """A HELP answer handed to its durable workflow (ComplianceReplyWorkflow) and sent."""
    make_account(db, "reply", schedule="0s", balance=0)
    with db.session() as s:
        row_id = message_log.queue_reply(s, "help", "reply", "inbound-uuid-1", "", "+1415***",
                                         "+14155550100", "+14155550107",
                                         "Acme Cloud: billing help at help@acme.test.", 1,
                                         "GSM-7")
    handle = await client.start_workflow(
        REPLY_WORKFLOW_TYPE, ReplyRequest(row_id), id=reply_workflow_id("inbound-uuid-1"),
        task_queue=QUEUE,
    )
    result = await handle.result()
    assert result["status"] == "sent", result
    return handle


SCENARIOS: dict[str, Scenario] = {
    "full_schedule": full_schedule,
    "pause_resume": pause_resume,
    "recovery": recovery,
    "cancel": cancel,
    "late_start": late_start,
    "quiet_hours": quiet_hours,
    "signal_account": signal_account,
    "iso_currency": iso_currency,
    "sms_holdout": sms_holdout,
    "outbound_events": outbound_events,
    "batched_bookkeeping": batched_bookkeeping,
    "campaign": campaign,
    "compliance_reply": compliance_reply,
}


async def record(names: list[str], out_dir: Path = HERE) -> list[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="dunning-histories-"))
    db = Database(f"sqlite:///{tmp / 'record.db'}")
    db.upgrade()
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(), search_attributes=list(SEARCH_ATTRIBUTES),
        dev_server_log_level="error",
    )
    acts = DunningActivities(db, ConsoleSmsProvider(echo=False), ConsoleEmailProvider(echo=False))
    settings = Settings(task_queue=QUEUE, sms_rate_limit=0, activity_workers=8, data_dir=tmp,
                        workflow_sandbox=True)
    written: list[Path] = []
    try:
        with ThreadPoolExecutor(max_workers=8) as executor:
            async with running(build_workers(env.client, settings, acts, executor)):
                for name in names:
                    handle = await SCENARIOS[name](env.client, db)
                    history = await handle.fetch_history()
                    path = out_dir / f"{name}.json"
                    path.write_text(history.to_json() + "\n")
                    written.append(path)
                    print(f"{path.relative_to(HERE.parent.parent)}: {len(history.events)} events")
    finally:
        await env.shutdown()
        db.dispose()
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"scenarios to record (default: all): {', '.join(SCENARIOS)}")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    asyncio.run(record(list(args.names) or list(SCENARIOS)))


if __name__ == "__main__":
    main()
