"""Credits end to end: a real Temporal dev server, real databases, Plivo's SDK against a loopback
server and a real SMTP server. Many cases racing for a small balance while top-ups land, fair
first-come wake-ups, auto-refill resuming paused cases, a failed refill (SMS stays paused, email
goes on), rates (preview == charge) and `dunning credits topup` waking cases.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from dunning.accounts import messaging, pricing
from dunning.cli import main
from dunning.credits import ledger, refill
from dunning.credits.followups import BalanceFollowups
from dunning.credits.gateways import Gateways, SimulatedGateway
from dunning.credits.wake import LoopWaker
from dunning.domain.contract import ACT_SEND_SMS, MessageRequest, MessageResult
from dunning.platform.codec import converter_for
from dunning.platform.db import Database
from dunning.platform.db.models import Account, CreditEntry, Customer, Message, Refill
from dunning.platform.providers.email import SmtpEmailProvider
from dunning.platform.settings import Settings
from starter import DunningClient
from tests.db.test_credits import assert_ledger_exact
from tests.fakes.plivo import FakePlivo
from tests.fakes.smtp import SmtpSink
from tests.helpers import (
    add_customer,
    case_input,
    make_account,
    query_status,
    real_activities,
    running_worker,
    wait_for,
)


@pytest.fixture
def stack(temporal_env: WorkflowEnvironment, db: Database, plivo_server: FakePlivo,
          smtp_server: SmtpSink, uid: str) -> dict[str, Any]:
    return {"env": temporal_env, "db": db, "plivo": plivo_server, "smtp": smtp_server,
            "account": f"cr-{uid}", "queue": f"q-{uid}", "uid": uid}


def worker_followups(temporal_env: WorkflowEnvironment, db: Database, smtp: SmtpSink,
                     gateway: SimulatedGateway) -> BalanceFollowups:
    """As worker.py builds them: auto-refills wake cases through the worker's client and
    loop, notices go through its email provider."""
    return BalanceFollowups(
        db, SmtpEmailProvider("127.0.0.1", smtp.port), gateways=Gateways(gateway),
        waker=LoopWaker(temporal_env.client, asyncio.get_running_loop()),
    )


@pytest.fixture
def held_gateway() -> Iterator[SimulatedGateway]:
    gw = SimulatedGateway(hold=threading.Event())
    yield gw
    assert gw.hold is not None
    gw.hold.set()


def phone(uid: str, i: int) -> str:
    return f"+1999{int(uid, 16) % 10**5:05d}{i:02d}"


def sent_to(plivo: FakePlivo, uid: str, n: int) -> list[int]:
    """Which of the n customers got a text."""
    return [i for i in range(n) if plivo.accepted(phone(uid, i).lstrip("+"))]


def waiting(db: Database, account: str) -> list[str]:
    with db.session() as s:
        return [w for w, _, _ in ledger.waiters(s, account)]


def queued(db: Database, account: str, count: int) -> Callable[[], bool]:
    return lambda: len(waiting(db, account)) == count


def debits(db: Database, account: str) -> int:
    with db.session() as s:
        return len(s.scalars(select(CreditEntry.id).where(
            CreditEntry.account_id == account, CreditEntry.kind == "sms_debit")).all())


async def start(client: Client, stack: dict[str, Any], i: int) -> WorkflowHandle[Any, Any]:
    return await client.start_workflow(
        "DunningWorkflow", case_input(stack["account"], f"inv{i}", f"c{i}"),
        id=f"dunning-{stack['account']}-inv{i}", task_queue=stack["queue"],
    )


def customers(stack: dict[str, Any], n: int) -> None:
    for i in range(n):
        add_customer(stack["db"], stack["account"], f"c{i}", phone=phone(stack["uid"], i),
                     email=f"c{i}-{stack['uid']}@example.com")


async def paused_count(handles: list[WorkflowHandle[Any, Any]]) -> int:
    """Cases whose workflow has taken in its `no_credits` answer and waits for a signal."""
    return sum([(await query_status(h))["sms_paused"] for h in handles])


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def finish(handles: list[WorkflowHandle[Any, Any]]) -> list[dict[str, Any]]:
    for h in handles:
        await h.signal("cancel", {"reason": "test over"})
    return [await h.result() for h in handles]


def dunning_client(stack: dict[str, Any]) -> DunningClient:
    return DunningClient(stack["env"].client,
                         Settings(task_queue=stack["queue"], database_url=stack["db"].url),
                         stack["db"])


async def test_cases_racing_for_a_small_balance_while_topups_land(stack: dict[str, Any]):
    db, plivo, uid, account = stack["db"], stack["plivo"], stack["uid"], stack["account"]
    n = 12
    make_account(db, account, schedule="0s", grace="60s", balance=4)
    customers(stack, n)
    client = stack["env"].client
    dunning = dunning_client(stack)
    acts = real_activities(db, plivo, stack["smtp"])
    async with running_worker(client, stack["queue"], acts):
        starts = [asyncio.create_task(start(client, stack, i)) for i in range(n)]
        await asyncio.sleep(0.3)  # top-ups land while cases are reserving and pausing
        await asyncio.gather(dunning.top_up(account, 2), dunning.top_up(account, 3))
        handles = list(await asyncio.gather(*starts))
        # 9 credits, 12 cases of 1 credit: 9 texts, 3 cases paused, no credit left idle.
        await wait_for(lambda: len(sent_to(plivo, uid, n)) == 9 and len(waiting(db, account))
                       == 3, timeout=20)
        await asyncio.sleep(0.5)
        assert len(sent_to(plivo, uid, n)) == 9 and debits(db, account) == 9
        assert assert_ledger_exact(db, account) == 0
        paused = [handles[i] for i in range(n) if i not in sent_to(plivo, uid, n)]
        await wait_for(lambda: _is(paused_count(paused), 3), timeout=10)
        top = await dunning.top_up(account, 3)
        assert (top.balance, top.woken) == (3, 3)
        await wait_for(lambda: len(sent_to(plivo, uid, n)) == n, timeout=15)
        results = await finish(handles)
    assert sum(r["sms_sent"] for r in results) == n == debits(db, account)
    assert sum(len(plivo.accepted(phone(uid, i).lstrip("+"))) for i in range(n)) == n
    assert assert_ledger_exact(db, account) == 0 and waiting(db, account) == []


async def test_wake_ups_are_first_come_first_served(stack: dict[str, Any]):
    db, plivo, uid, account = stack["db"], stack["plivo"], stack["uid"], stack["account"]
    n = 6
    make_account(db, account, schedule="0s", grace="60s", balance=0)
    customers(stack, n + 1)
    client = stack["env"].client
    acts = real_activities(db, plivo, stack["smtp"])
    async with running_worker(client, stack["queue"], acts):
        handles = []
        for i in range(n):  # one after the other: the queue order is known
            handles.append(await start(client, stack, i))
            await wait_for(queued(db, account, i + 1), timeout=10)
        order = waiting(db, account)
        assert order == [f"dunning-{account}-inv{i}" for i in range(n)]
        await wait_for(lambda: _is(paused_count(handles), n), timeout=10)
        top = await dunning_client(stack).top_up(account, 3)
        assert (top.balance, top.woken) == (3, 3)
        await wait_for(lambda: sent_to(plivo, uid, n) == [0, 1, 2], timeout=10)
        await asyncio.sleep(0.5)  # nobody else got through: no stampede, no queue jumping
        assert sent_to(plivo, uid, n) == [0, 1, 2] and waiting(db, account) == order[3:]
        # A newcomer queues behind the older waiters; one credit goes to the oldest.
        handles.append(await start(client, stack, n))
        await wait_for(lambda: len(waiting(db, account)) == 4, timeout=10)
        top = await dunning_client(stack).top_up(account, 1)
        assert top.woken == 1
        await wait_for(lambda: sent_to(plivo, uid, n + 1) == [0, 1, 2, 3], timeout=10)
        assert waiting(db, account) == [*order[4:], f"dunning-{account}-inv{n}"]
        await wait_for(lambda: _is(paused_count(handles[n:]), 1), timeout=10)
        await finish(handles)
    assert assert_ledger_exact(db, account) == 0


async def test_auto_refill_resumes_paused_cases_promptly(
    stack: dict[str, Any], held_gateway: SimulatedGateway
):
    db, plivo, uid, account = stack["db"], stack["plivo"], stack["uid"], stack["account"]
    smtp = stack["smtp"]
    contact = f"owner-{uid}@acme.test"
    n = 5
    make_account(db, account, schedule="0s", grace="60s", balance=2)
    with db.session() as s:
        acct = s.get(Account, account)
        assert acct is not None
        acct.contact_email = contact
        refill.configure(s, account, threshold=2, amount=10)
    customers(stack, n)
    client = stack["env"].client
    followups = worker_followups(stack["env"], db, smtp, held_gateway)
    acts = real_activities(db, plivo, smtp, followups)
    async with running_worker(client, stack["queue"], acts):
        handles = [await start(client, stack, i) for i in range(n)]
        # 2 -> 1 crosses the threshold (refill pending: the gateway is held), 1 -> 0, then
        # three cases pause.
        await wait_for(lambda: len(waiting(db, account)) == 3
                       and len(sent_to(plivo, uid, n)) == 2, timeout=15)
        await wait_for(lambda: _is(paused_count(handles), 3), timeout=10)
        with db.session() as s:
            assert [r.status for r in s.scalars(select(Refill).where(
                Refill.account_id == account))] == ["pending"]
        assert held_gateway.hold is not None
        loop = asyncio.get_running_loop()
        released = loop.time()
        held_gateway.hold.set()
        await wait_for(lambda: len(sent_to(plivo, uid, n)) == n, timeout=15)
        resumed_in = loop.time() - released
        results = await finish(handles)
    assert resumed_in < 10  # signalled by the refill, not the hourly re-check
    assert sum(r["sms_sent"] for r in results) == n
    with db.session() as s:
        rows = s.scalars(select(Refill).where(Refill.account_id == account)).all()
        assert [(r.status, r.amount) for r in rows] == [("succeeded", 10)]
    assert assert_ledger_exact(db, account) == 2 + 10 - n
    assert await asyncio.to_thread(followups.close, 10)
    subjects = [m["Subject"] for m in smtp.to(contact)]
    assert sum("running low" in s for s in subjects) == 1
    assert sum("used up" in s for s in subjects) == 1
    assert len(subjects) == 2


async def test_failed_refill_keeps_sms_paused_while_email_goes_on(
    temporal_env: WorkflowEnvironment, sqlite_db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
):
    account = f"cr-{uid}"
    stack: dict[str, Any] = {"env": temporal_env, "db": sqlite_db, "plivo": plivo_server,
                             "smtp": smtp_server, "account": account, "queue": f"q-{uid}",
                             "uid": uid}
    db = sqlite_db
    gw = SimulatedGateway(fail="card_declined: Your card was declined.")
    followups = worker_followups(temporal_env, db, smtp_server, gw)
    try:
        make_account(db, account, schedule="0s,1s", grace="60s", balance=1)
        with db.session() as s:
            refill.configure(s, account, threshold=1, amount=10)
        customers(stack, 2)
        client = temporal_env.client
        acts = real_activities(db, plivo_server, smtp_server, followups)
        async with running_worker(client, stack["queue"], acts):
            handles = [await start(client, stack, i) for i in range(2)]
            emails = [f"c{i}-{uid}@example.com" for i in range(2)]
            # Step 1: one text (1 -> 0 crosses the threshold; the refill fails), one case
            # paused. Step 2 (1 s later): both emails go out, both texts wait for credits.
            await wait_for(lambda: all(len(smtp_server.to(e)) == 2 for e in emails)
                           and len(waiting(db, account)) == 2, timeout=15)
            await wait_for(lambda: _is(paused_count(handles), 2), timeout=10)
            assert len(sent_to(plivo_server, uid, 2)) == 1
            await finish(handles)
        assert await asyncio.to_thread(followups.drain, 10)
        with db.session() as s:
            rows = s.scalars(select(Refill).where(Refill.account_id == account)).all()
            assert [(r.status, r.error) for r in rows] == [
                ("failed", "card_declined: Your card was declined.")]
        assert len(gw.charges) == 1  # the paused case's re-checks did not retry it
        assert assert_ledger_exact(db, account) == 0
    finally:
        await asyncio.to_thread(followups.close, 10)


async def test_country_rate_preview_equals_charge(
    temporal_env: WorkflowEnvironment, db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
):
    account = f"cr-{uid}"
    make_account(db, account, schedule="0s", grace="0s", balance=50)
    number = f"+3361{int(uid, 16) % 10**7:07d}"
    with db.session() as s:
        pricing.set_rate(s, account, "FR", 3)
        pricing.set_rate(s, account, None, 2)
        messaging.set_sms_template(s, account, "{company_name}: réglez {amount} ici "
                                      "{billing_link} ⚡")
        s.add(Customer(account_id=account, customer_id="fr1", name="Élise",
                       email=f"fr-{uid}@example.com", phone_e164=number, phone_region="FR",
                       phone_time_zones="Europe/Paris", source="test"))
        s.add(Customer(account_id=account, customer_id="us1", name="Al",
                       email=f"us-{uid}@example.com", phone_e164=phone(uid, 1),
                       phone_region="US", phone_time_zones="America/New_York", source="test"))
    client = temporal_env.client
    acts = real_activities(db, plivo_server, smtp_server)
    queue = f"q-{uid}"
    async with running_worker(client, queue, acts):
        for cus in ("fr1", "us1"):
            h = await client.start_workflow(
                "DunningWorkflow", case_input(account, f"inv-{cus}", cus,
                                              customer_name="Élise" if cus == "fr1" else "Al"),
                id=f"dunning-{account}-inv-{cus}", task_queue=queue)
            await h.result()
    with db.session() as s:
        rows = {m.customer_id: m for m in s.scalars(select(Message).where(
            Message.account_id == account, Message.channel == "sms"))}
        charged = {e.workflow_id: -e.amount for e in s.scalars(select(CreditEntry).where(
            CreditEntry.account_id == account, CreditEntry.kind == "sms_debit"))}
    fr, us = rows["fr1"], rows["us1"]
    assert fr.status == us.status == "sent" and fr.encoding == "UCS-2"
    assert charged[f"dunning-{account}-inv-fr1"] == fr.credits == fr.segments * 3
    assert charged[f"dunning-{account}-inv-us1"] == us.credits == us.segments * 2
    text = plivo_server.accepted(number.lstrip("+"))[0].text
    with db.session() as s:
        quote = messaging.quote_sms(s, account, "FR", text)
        assert (quote.segments, quote.credits) == (fr.segments, fr.credits)
    assert assert_ledger_exact(db, account) == 50 - fr.credits - us.credits


async def test_cli_topup_wakes_paused_cases(
    temporal_env: WorkflowEnvironment, sqlite_db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    db, account, queue = sqlite_db, f"cr-{uid}", f"q-{uid}"
    stack = {"db": db, "account": account, "uid": uid}
    key = "t1:" + "7c" * 32
    target = temporal_env.client.service_client.config.target_host
    for name, value in {"DUNNING_DATA_DIR": str(tmp_path), "DUNNING_DATABASE_URL": db.url,
                        "DUNNING_TEMPORAL_ADDRESS": target, "DUNNING_CODEC_KEYS": key}.items():
        monkeypatch.setenv(name, value)
    # The CLI encrypts its signal payloads: the worker shares its codec key.
    client = await Client.connect(target, data_converter=converter_for(
        Settings(codec_keys=key, data_dir=tmp_path)))
    make_account(db, account, schedule="0s", grace="60s", balance=0)
    customers(stack, 3)
    async with running_worker(client, queue, real_activities(db, plivo_server, smtp_server)):
        handles = []
        for i in range(3):
            handles.append(await client.start_workflow(
                "DunningWorkflow", case_input(account, f"inv{i}", f"c{i}"),
                id=f"dunning-{account}-inv{i}", task_queue=queue))
            await wait_for(queued(db, account, i + 1), timeout=10)
        await wait_for(lambda: _is(paused_count(handles), 3), timeout=10)

        def run_cli() -> tuple[int, str]:
            try:
                main(["credits", "topup", "--account", account, "2", "--json"])
                return 0, ""
            except SystemExit as exc:
                return int(exc.code or 0), ""

        capsys.readouterr()
        code, _ = await asyncio.to_thread(run_cli)
        out, err = capsys.readouterr()
        assert code == 0, err
        lines = [line for line in out.splitlines() if line.strip()]
        assert len(lines) == 1
        data = json.loads(lines[0])
        keys = ("account_id", "balance", "woken", "still_waiting", "set_aside", "available")
        assert {k: data[k] for k in keys} == {
            "account_id": account, "balance": 2, "woken": 2, "still_waiting": 1,
            "set_aside": 2, "available": 0}
        await wait_for(lambda: sent_to(plivo_server, uid, 3) == [0, 1], timeout=10)
        await finish(handles)


class HoldingActivities:
    """The real activities, except that one case's `no_credits` answer is held back (after its
    transaction committed) until the test says so: the window in which a top-up's signal can
    reach the workflow before the activity's result does. The workflow must count that signal
    (it reads the `credits_added` sequence before the send), or the wake-up is lost."""

    def __init__(self, acts: Any, workflow_id: str) -> None:
        self.acts = acts
        self.workflow_id = workflow_id
        self.held = threading.Event()
        self.release = threading.Event()

    def wrap(self) -> Any:
        real = self.acts.send_sms

        @activity.defn(name=ACT_SEND_SMS)
        def send_sms(req: MessageRequest) -> MessageResult:
            result = real(req)
            if result.status == "no_credits" and req.workflow_id == self.workflow_id \
                    and not self.held.is_set():
                self.held.set()
                assert self.release.wait(20)
            return result

        self.acts.sms_queue = lambda: [send_sms]
        return self.acts


async def test_credits_added_during_the_send_is_not_lost(
    temporal_env: WorkflowEnvironment, sqlite_db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
):
    db, account, queue = sqlite_db, f"cr-{uid}", f"q-{uid}"
    make_account(db, account, schedule="0s", grace="60s", balance=0)
    customers({"db": db, "account": account, "uid": uid}, 1)
    client = temporal_env.client
    holding = HoldingActivities(real_activities(db, plivo_server, smtp_server),
                                f"dunning-{account}-inv0")
    async with running_worker(client, queue, holding.wrap()):
        handle = await client.start_workflow(
            "DunningWorkflow", case_input(account, "inv0", "c0"),
            id=f"dunning-{account}-inv0", task_queue=queue)
        assert await asyncio.to_thread(holding.held.wait, 10)
        assert waiting(db, account) == [handle.id]  # queued and committed
        top = await DunningClient(client, Settings(task_queue=queue, database_url=db.url),
                                  db).top_up(account, 1)
        assert top.woken == 1  # the signal reaches the workflow before the activity's result
        await asyncio.sleep(0.5)
        holding.release.set()
        try:
            await wait_for(lambda: sent_to(plivo_server, uid, 1) == [0], timeout=10)
        finally:
            await finish([handle])
