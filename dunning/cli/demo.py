"""`dunning demo`: the whole product in under two minutes, on the embedded defaults.

A Temporal dev server (with its UI) on free ports, SQLite in a fresh data directory, console
providers (messages are recorded, nothing leaves the machine), the worker and the webhook server
in this process. The scenario, on a compressed schedule (0s, 20s, 40s):

1. an account is set up; phone numbers are imported from a CSV with a few bad rows (reported);
2. SMS is switched on for steps 1 and 3, with a template and a per-plan template;
3. cases start for a batch of failed invoices; the account has credits for only a few SMS, so
   SMS pauses while email goes on; a top-up resumes it;
4. one customer replies STOP through the signed Plivo webhook, one number is in its quiet hours,
   one customer pays;
5. a live view shows the cases moving; the end prints a summary and the Temporal UI link.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import phonenumbers
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from sqlalchemy import func, select

from activities import DunningActivities
from dunning.accounts.accounts import AccountOptions, create_account
from dunning.accounts.messaging import set_sms_switch, set_sms_template
from dunning.cases.client import CaseRequest, DunningClient
from dunning.credits import ledger
from dunning.credits.followups import BalanceFollowups
from dunning.credits.wake import LoopWaker
from dunning.customers.importer import import_file
from dunning.messages.links import signer_for
from dunning.messages.pacing import pacer_for
from dunning.platform.db import Database
from dunning.platform.db.models import CreditEntry, Customer, Message
from dunning.platform.providers.email import ConsoleEmailProvider
from dunning.platform.providers.sms import ConsoleSmsProvider
from dunning.platform.settings import Settings
from dunning.platform.temporal import connect, dev_server_command
from worker import build_workers, running

ACCOUNT = "demo-acme"
CONSOLE_USER = "demo@acme.test"
SENDER = "+14155550100"
AUTH_ID = "MADEMO00000000000001"
AUTH_TOKEN = "demo-auth-token"


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PREFERRED = ["US", "GB", "FR", "DE", "JP", "AU", "IN", "BR", "CA", "MX", "ES", "IT", "NL",
             "SE", "ZA", "SG", "NZ", "AR", "KR", "AE", "FI", "RS", "PL", "CL", "PH", "EG"]


def numbers_by_hour(now: datetime) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Sample mobile numbers (region, E.164) whose zones are inside / outside 08:00-21:00 now,
    so the demo has customers it may text right away and one in their night."""
    from phonenumbers import timezone as pn_tz

    from dunning.domain.quiet_hours import allowed, zones_for

    day: list[tuple[str, str]] = []
    night: list[tuple[str, str]] = []
    regions = PREFERRED + sorted(phonenumbers.SUPPORTED_REGIONS - set(PREFERRED))
    for region in regions:
        example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
        if example is None:
            continue
        zones = zones_for(",".join(pn_tz.time_zones_for_number(example)), "UTC")
        e164 = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
        (day if allowed(now, "08:00-21:00", zones) else night).append((region, e164))
        if len(day) >= 6 and night:
            break
    return day, night


@dataclass
class DemoCase:
    customer: str
    name: str
    plan: str
    invoice: str
    note: str = ""
    state: dict[str, Any] = field(default_factory=dict)


def write_csv(path: Path, now: datetime) -> list[tuple[str, str, str, str]]:
    """Customers (id, name, plan, note) and a CSV with their numbers plus a few bad rows."""
    day, night = numbers_by_hour(now)
    names = [("cus_ada", "Ada Lovelace", "basic", ""), ("cus_alan", "Alan Turing", "pro", ""),
             ("cus_grace", "Grace Hopper", "basic", "pays after the first reminder"),
             ("cus_linus", "Linus T.", "pro", "replies STOP"),
             ("cus_marie", "Marie Curie", "basic", ""), ("cus_nik", "Nikola Tesla", "pro", "")]
    people = [(cid, name, plan, phone, note + (" " if note else "") + f"({region})")
              for (cid, name, plan, note), (region, phone) in zip(names, day, strict=False)]
    if night:
        region, phone = night[0]
        people.append(("cus_night", "Night Owl", "basic", phone,
                       f"in quiet hours ({region})"))
    lines = ["customer_id,phone,email,name,plan"]
    for cid, name, plan, phone, _ in people:
        lines.append(f"{cid},{phone},{cid}@example.com,{name},{plan}")
    lines += [
        "cus_bad1,12345,bad1@example.com,Too Short,basic",
        "cus_bad2,+18005550199,bad2@example.com,Toll Free,basic",
        "cus_bad3,call me,bad3@example.com,Not A Number,basic",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [(cid, name, plan, note) for cid, name, plan, _, note in people]


def form_post(url: str, params: dict[str, str], headers: dict[str, str]) -> int:
    """POST a form (stdlib only: the demo runs from a plain `pip install .`); the HTTP status."""
    request = urllib.request.Request(
        url, data=urlencode(params).encode(), method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:  # 4xx/5xx: the status is the answer
        return int(err.code)


async def signed_form_post(url: str, params: dict[str, str]) -> int:
    """POST like Plivo does, with a V3 signature made with the demo auth token."""
    from dunning.webhooks.signatures import v3_signature

    nonce = secrets.token_hex(8)
    sig = v3_signature(AUTH_TOKEN, "POST", url, nonce, params)
    return await asyncio.to_thread(form_post, url, params, {
        "X-Plivo-Signature-V3": sig, "X-Plivo-Signature-V3-Nonce": nonce,
    })


@dataclass(frozen=True)
class Pace:
    """The scenario's clock: the showcase, or the smoke run `make check-install` uses."""

    schedule: str = "0s,20s,40s"
    grace: str = "10s"
    pay_at: float = 6
    stop_at: float = 8
    topup_at: float = 10
    limit: float = 100


SHOWCASE = Pace()
SMOKE = Pace(schedule="0s,4s,8s", grace="2s", pay_at=2, stop_at=3, topup_at=4, limit=40)


class Demo:
    def __init__(self, console: Console, keep: bool, pace: Pace = SHOWCASE) -> None:
        self.console = console
        self.keep = keep
        self.pace = pace
        self.data_dir = Path(tempfile.mkdtemp(prefix="dunning-demo-"))
        self.grpc_port, self.ui_port, self.http_port = free_port(), free_port(), free_port()
        self.console_port = free_port()
        self.console_password = secrets.token_urlsafe(12)  # a throwaway stack's sign-in
        self.settings = Settings(
            data_dir=self.data_dir,
            temporal_address=f"127.0.0.1:{self.grpc_port}",
            task_queue="demo",
            http_port=self.http_port,
            public_url=f"http://127.0.0.1:{self.http_port}",
            plivo_auth_id=AUTH_ID,
            plivo_auth_token=AUTH_TOKEN,
            sms_rate_limit=0,
            activity_workers=16,
            # Its own plain-text dev server on loopback, whatever TLS the environment sets.
            temporal_tls=False, temporal_tls_ca=None, temporal_tls_cert=None,
            temporal_tls_key=None, temporal_tls_server_name="", temporal_api_key="",
            console_port=self.console_port,
            temporal_ui_url=f"http://127.0.0.1:{self.ui_port}",
        )
        self.db = Database(self.settings.effective_database_url)
        self.cases: list[DemoCase] = []
        self.events: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.webhook_status: dict[str, int] = {}

    def log(self, text: str) -> None:
        self.events.append(f"{datetime.now().strftime('%H:%M:%S')}  {text}")

    def start_server(self) -> None:
        cmd = dev_server_command(self.settings, port=self.grpc_port, ui_port=self.ui_port)
        log = open(self.data_dir / "temporal.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.closing(socket.socket()) as s:
                if s.connect_ex(("127.0.0.1", self.grpc_port)) == 0:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Temporal dev server did not start: see {log.name}")
            time.sleep(0.2)

    def stop_server(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def setup_account(self) -> dict[str, Any]:
        self.db.upgrade()
        csv_path = self.data_dir / "customers.csv"
        people = write_csv(csv_path, datetime.now(UTC))
        with self.db.session() as s:
            create_account(s, ACCOUNT, AccountOptions(
                company_name="Acme Cloud", sms_sender=SENDER, email_from="billing@acme.test",
                schedule=self.pace.schedule, grace=self.pace.grace, quiet_hours="08:00-21:00",
                support_contact="support@acme.test",
            ))
        with self.db.session() as s:
            report = import_file(s, ACCOUNT, csv_path)
        with self.db.session() as s:
            from dunning.console.access import add_user

            add_user(s, CONSOLE_USER, ACCOUNT, "admin", self.console_password, actor="demo")
        self.log(f"imported {report.imported} numbers, rejected {report.rejected}: "
                 + "; ".join(f"line {e.line} {e.reason}" for e in report.errors))
        with self.db.session() as s:
            set_sms_switch(s, ACCOUNT, True, [1, 3])
            set_sms_template(s, ACCOUNT, "{company_name}: hi {first_name}, your payment of "
                             "{amount} failed. Update your card: {billing_link}")
            set_sms_template(s, ACCOUNT, "{company_name} Pro: {first_name}, {amount} is due "
                             "for invoice {invoice_id}. Pay now: {billing_link}", plan="pro")
            ledger.top_up(s, ACCOUNT, 4)
        self.log("SMS on for steps 1 and 3; a template for everyone and one for plan 'pro'; "
                 "4 credits")
        for i, (cid, name, plan, note) in enumerate(people):
            self.cases.append(DemoCase(cid, name, plan, f"inv_{1001 + i}", note))
        return report.as_json()

    async def refresh(self, client: DunningClient) -> None:
        for case in self.cases:
            with contextlib.suppress(Exception):
                case.state = await client.status(ACCOUNT, case.invoice)

    def view(self, phase: str) -> Group:
        table = Table(title=f"dunning cases of {ACCOUNT}", expand=True)
        for col in ("customer", "plan", "state", "email", "sms", "sms paused", "now", "note"):
            table.add_column(col)
        for c in self.cases:
            st = c.state
            rem = st.get("reminders", [])

            def marks(channel: str, rem: list[dict[str, Any]] = rem) -> str:
                sym = {"sent": "[green]●[/]", "skipped": "[yellow]○[/]", "failed": "[red]✗[/]",
                       "pending": "[dim]·[/]"}
                return " ".join(sym.get(r["status"], "?") for r in rem if r["channel"] == channel)

            state = st.get("state", "…")
            color = {"recovered": "green", "active": "cyan", "exhausted": "yellow",
                     "canceled": "magenta"}.get(state, "white")
            table.add_row(c.name, c.plan, f"[{color}]{state}[/]", marks("email"), marks("sms"),
                          "[red]yes[/]" if st.get("sms_paused") else "",
                          (st.get("waiting_for") or "")[:48], c.note)
        with self.db.session() as s:
            bal = ledger.balance_of(s, ACCOUNT)
        legend = "[green]●[/] sent  [yellow]○[/] skipped  [red]✗[/] failed  [dim]·[/] pending"
        events = "\n".join(self.events[-7:])
        return Group(
            Panel(f"[bold]{phase}[/]   credits: {bal}   UI: http://127.0.0.1:{self.ui_port}"),
            table, legend, Panel(events, title="what happened"),
        )

    async def run(self, as_json: bool) -> dict[str, Any]:
        import_report = self.setup_account()
        sms, email = ConsoleSmsProvider(echo=False), ConsoleEmailProvider(echo=False)
        temporal = await connect(self.settings)
        # The demo is its own composition root: one set of follow-ups (balance notices,
        # auto-refills, wakes) for the activities and the client.
        followups = BalanceFollowups(self.db, email, waker=LoopWaker(temporal),
                                     default_sender=self.settings.email_from)
        acts = DunningActivities(self.db, sms, email, public_url=self.settings.public_url,
                                 pacer=pacer_for(self.db, self.settings.sms_rate_limit),
                                 followups=followups, links=signer_for(self.settings))
        client = DunningClient(temporal, self.settings, self.db, followups)
        from dunning.webhooks import create_app
        from dunning.webhooks.server import make_server

        app = create_app(self.settings, self.db, sms_provider=sms, temporal=client)
        server = make_server(self.settings, app, handle_signals=False)
        web = asyncio.create_task(server.serve())
        from dunning.console.server import make_server as make_console_server

        console_server = make_console_server(self.settings, self.db, handle_signals=False)
        console_web = asyncio.create_task(console_server.serve())
        with ThreadPoolExecutor(max_workers=16) as ex:
            async with running(build_workers(client.client, self.settings, acts, ex)):
                summary = await self._scenario(client, as_json)
                if self.keep:
                    self.console.print(self._keep_text())
                    stop = asyncio.Event()
                    loop = asyncio.get_running_loop()
                    for sig in (signal.SIGINT, signal.SIGTERM):
                        loop.add_signal_handler(sig, stop.set)
                    await stop.wait()
        server.should_exit = True
        console_server.should_exit = True
        await web
        await asyncio.to_thread(followups.close)
        await console_web
        summary["import"] = import_report
        return summary

    def _keep_text(self) -> str:
        env = (f"DUNNING_DATA_DIR={self.data_dir} "
               f"DUNNING_TEMPORAL_ADDRESS={self.settings.temporal_address} "
               f"DUNNING_TASK_QUEUE=demo")
        return (f"\nThe stack stays up (Ctrl-C stops it). Temporal UI: "
                f"http://127.0.0.1:{self.ui_port}\n{self.console_text()}\n"
                f"Try: {env} dunning status --account "
                f"{ACCOUNT} --invoice {self.cases[0].invoice}\n")

    def console_text(self) -> str:
        return (f"Console: {self.console_url} (sign in as {CONSOLE_USER}, password "
                f"{self.console_password})")

    @property
    def console_url(self) -> str:
        return f"http://127.0.0.1:{self.console_port}"

    async def _scenario(self, client: DunningClient, as_json: bool) -> dict[str, Any]:
        t0 = time.monotonic()
        for c in self.cases:
            await client.start_case(CaseRequest(
                account_id=ACCOUNT, customer_id=c.customer, invoice_id=c.invoice,
                amount_due=4900, currency="USD" if c.plan == "basic" else "EUR",
                billing_link=f"https://pay.acme.test/{c.invoice}", plan=c.plan,
            ))
        self.log(f"started {len(self.cases)} cases (one per failed invoice)")
        done_stop = done_pay = done_topup = False
        stop_case = next((c for c in self.cases if "STOP" in c.note), None)
        pay_case = next((c for c in self.cases if "pays" in c.note), None)
        with Live(self.view("starting"), console=self.console, refresh_per_second=4,
                  transient=as_json) as live:
            while True:
                elapsed = time.monotonic() - t0
                await self.refresh(client)
                if not done_pay and pay_case and elapsed > self.pace.pay_at:
                    await client.recover(ACCOUNT, pay_case.invoice, 4900)
                    self.log(f"{pay_case.name} paid: payment_recovered signal")
                    done_pay = True
                if not done_stop and stop_case and elapsed > self.pace.stop_at:
                    await self._reply_stop(stop_case)
                    done_stop = True
                paused = sum(1 for c in self.cases if c.state.get("sms_paused"))
                if not done_topup and elapsed > self.pace.topup_at and paused:
                    result = await client.top_up(ACCOUNT, 20)
                    self.log(f"top-up of 20 credits: balance {result.balance}, "
                             f"woke {result.woken} paused cases")
                    done_topup = True
                states = [c.state.get("state") for c in self.cases]
                phase = f"t+{elapsed:4.0f}s  {paused} cases paused for credits"
                live.update(self.view(phase))
                if all(s in ("recovered", "exhausted", "canceled") for s in states):
                    break
                if elapsed > self.pace.limit:
                    self.log("time is up: canceling what is left")
                    for c in self.cases:
                        if c.state.get("state") == "active":
                            await client.cancel(ACCOUNT, c.invoice, "demo over")
                await asyncio.sleep(0.5)
            live.update(self.view(f"done in {time.monotonic() - t0:.0f}s"))
        return self.summary()

    async def _reply_stop(self, case: DemoCase) -> None:
        phone = self._phone_of(case.customer)
        url = f"{self.settings.public_url}/webhooks/plivo/inbound"
        status = await signed_form_post(url, {
            "From": phone.lstrip("+"), "To": SENDER.lstrip("+"), "Text": "STOP",
            "Type": "sms", "MessageUUID": secrets.token_hex(16),
        })
        self.webhook_status["signed_stop"] = status
        self.log(f"{case.name} replied STOP (signed webhook: HTTP {status}); "
                 "no more SMS to that number")
        forged = await asyncio.to_thread(
            form_post, url, {"From": "1", "To": "2", "Text": "STOP"},
            {"X-Plivo-Signature-V3": "forged", "X-Plivo-Signature-V3-Nonce": "1"},
        )
        self.webhook_status["forged_stop"] = forged
        self.log(f"a forged STOP got HTTP {forged} and changed nothing")

    def _phone_of(self, customer: str) -> str:
        with self.db.session() as s:
            row = s.get(Customer, (ACCOUNT, customer))
            return row.phone_e164 if row and row.phone_e164 else ""

    def summary(self) -> dict[str, Any]:
        with self.db.session() as s:
            rows = s.execute(
                select(Message.channel, Message.status, func.count())
                .where(Message.account_id == ACCOUNT, ~Message.workflow_id.like("help:%"),
                       ~Message.workflow_id.like("stop:%"))
                .group_by(Message.channel, Message.status)
            ).all()
            balance = ledger.balance_of(s, ACCOUNT)
            spent = -int(s.scalar(
                select(func.coalesce(func.sum(CreditEntry.amount), 0)).where(
                    CreditEntry.account_id == ACCOUNT,
                    CreditEntry.kind.in_(["sms_debit", "refund"]),
                )
            ) or 0)
        outcomes: dict[str, int] = {}
        for c in self.cases:
            outcomes[c.state.get("state", "?")] = outcomes.get(c.state.get("state", "?"), 0) + 1
        skipped: dict[str, int] = {}
        for c in self.cases:
            for r in c.state.get("reminders", []):
                if r["status"] == "skipped":
                    skipped[r["reason"]] = skipped.get(r["reason"], 0) + 1
        return {
            "messages": {f"{ch}:{st}": n for ch, st, n in rows},
            "outcomes": outcomes,
            "skipped_reasons": skipped,
            "credits_spent": spent,
            "credits_left": balance,
            "webhooks": dict(self.webhook_status),
            "temporal_ui": f"http://127.0.0.1:{self.ui_port}",
            "console": self.console_url,
            "data_dir": str(self.data_dir),
        }


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    table = Table(title="summary", show_header=False)
    for key, value in summary["messages"].items():
        table.add_row(f"messages {key}", str(value))
    for key, value in summary["outcomes"].items():
        table.add_row(f"cases {key}", str(value))
    for key, value in summary["skipped_reasons"].items():
        table.add_row("skipped", f"{value} x {key}")
    table.add_row("credits spent / left", f"{summary['credits_spent']} / {summary['credits_left']}")
    imp = summary.get("import", {})
    table.add_row("import", f"{imp.get('imported')} stored, {imp.get('rejected')} rejected")
    table.add_row("Temporal UI", summary["temporal_ui"])
    table.add_row("console", summary["console"])
    console.print(table)


def smoke_failures(summary: dict[str, Any]) -> list[str]:
    """What a finished smoke run must show; empty when the product worked end to end."""
    problems = []
    messages = summary.get("messages", {})
    if not messages.get("email:sent"):
        problems.append("no email was sent")
    if not messages.get("sms:sent"):
        problems.append("no SMS was sent")
    if summary.get("outcomes", {}).get("recovered", 0) < 1:
        problems.append("no case was recovered")
    hooks = summary.get("webhooks", {})
    if hooks.get("signed_stop") != 200:
        problems.append(f"the signed STOP webhook got HTTP {hooks.get('signed_stop')}")
    if hooks.get("forged_stop") != 403:
        problems.append(f"the forged STOP webhook got HTTP {hooks.get('forged_stop')}")
    return problems


def run_demo(*, keep: bool = False, as_json: bool = False, smoke: bool = False) -> list[str]:
    """Run the showcase (or, with `smoke`, a short run); returns the smoke run's failures."""
    console = Console(stderr=as_json)
    demo = Demo(console, keep, SMOKE if smoke else SHOWCASE)
    console.print(f"[bold]dunning demo[/]: dev server on 127.0.0.1:{demo.grpc_port}, UI "
                  f"http://127.0.0.1:{demo.ui_port}, webhooks on :{demo.http_port}, data in "
                  f"{demo.data_dir}\n{demo.console_text()}")
    demo.start_server()
    try:
        summary = asyncio.run(demo.run(as_json))
    finally:
        demo.stop_server()
        demo.db.dispose()
    if as_json:
        print(json.dumps(summary))
    else:
        print_summary(console, summary)
    return smoke_failures(summary) if smoke else []
