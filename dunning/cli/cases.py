"""Case commands: `dunning start|recover|cancel|status`. These talk to Temporal."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer
from rich.table import Table
from sqlalchemy import select
from temporalio.service import RPCError

from dunning.cases.client import CaseNotFound, CaseRequest, DunningClient
from dunning.cli.common import JsonOpt, console, database, fail, print_json, settings
from dunning.domain.contract import (
    InputError,
    check_decline_code,
    check_id,
    is_link_host_allowed,
    parse_case_input,
    parse_link_hosts,
    parse_rfc3339,
)
from dunning.platform.db.models import Message
from dunning.platform.temporal import TemporalConnectError

T = TypeVar("T")

AccountOpt = typer.Option(..., "--account", help="Account id.")
InvoiceOpt = typer.Option(..., "--invoice", help="Invoice id from the billing system.")


def run_with_client(fn: Callable[[DunningClient], Awaitable[T]]) -> T:
    """Connect to Temporal and run `fn`; connection and lookup problems become user errors."""

    async def _go() -> T:
        cfg = settings()
        try:
            client = await DunningClient.connect(cfg, database())
        except TemporalConnectError as exc:
            fail(str(exc))
        except RuntimeError as exc:
            fail(f"cannot reach Temporal at DUNNING_TEMPORAL_ADDRESS={cfg.temporal_address} "
                 f"(namespace {cfg.temporal_namespace}): {str(exc).splitlines()[0]}")
        try:
            return await fn(client)
        except CaseNotFound as exc:
            fail(str(exc))
        except RPCError as exc:
            fail(f"Temporal refused the request: {exc.message}")

    return asyncio.run(_go())


def start(
    account: str = AccountOpt,
    customer: str = typer.Option(..., "--customer", help="Customer id from the billing system."),
    invoice: str = InvoiceOpt,
    amount: str = typer.Option(..., "--amount", help="Amount due in minor units (4900 = 49.00)."),
    currency: str = typer.Option(..., "--currency", help="ISO 4217 code, e.g. USD."),
    billing_link: str = typer.Option(..., "--billing-link", help="Where the customer pays."),
    email: str | None = typer.Option(None, "--email", help="Customer's email address."),
    name: str | None = typer.Option(None, "--name", help="Customer's name."),
    plan: str | None = typer.Option(None, "--plan", help="Customer's plan (per-plan templates)."),
    decline_code: str | None = typer.Option(
        None, "--decline-code", help="Why the payment failed, e.g. expired_card (templates)."
    ),
    failed_at: str | None = typer.Option(
        None, "--failed-at", help="When the payment failed (RFC 3339); default: now."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Start the dunning case for a failed invoice (once per invoice)."""
    request = CaseRequest(
        account_id=account, customer_id=customer, invoice_id=invoice,
        amount_due=minor_units("amount", amount),
        currency=currency, billing_link=billing_link,
        failed_at=parse_rfc3339("failed-at", failed_at) if failed_at else None,
        customer_email=email, customer_name=name, plan=plan,
        decline_code=check_decline_code(decline_code) if decline_code else None,
    )
    parse_case_input(request.as_input())  # a bad field is a clear error before any connection
    with database().session() as s:
        from dunning.accounts.accounts import get_account

        hosts = parse_link_hosts(get_account(s, account).billing_link_hosts or "")
    if not is_link_host_allowed(billing_link, hosts):  # the case would fail at registration
        raise InputError("billing_link", f"the host is not one of the account's billing link "
                         f"hosts ({', '.join(hosts)})")
    result = run_with_client(lambda c: c.start_case(request))
    data = {"workflow_id": result.workflow_id, "started": result.started,
            "run_id": result.run_id}
    if as_json:
        print_json(data)
    elif result.started:
        console.print(f"started case [bold]{result.workflow_id}[/bold]")
    else:
        console.print(f"a case for invoice {invoice} exists already: {result.workflow_id} "
                      "(nothing new started)")


def recover(
    account: str = AccountOpt,
    invoice: str = InvoiceOpt,
    amount: str | None = typer.Option(None, "--amount", help="Amount recovered (minor units)."),
    as_json: bool = JsonOpt,
) -> None:
    """Tell a case the payment was recovered: it stops at once."""
    _ids(account, invoice)
    paid = minor_units("amount", amount) if amount is not None else None
    wf = run_with_client(lambda c: c.recover(account, invoice, paid))
    _done(wf, "payment_recovered", as_json)


def cancel(
    account: str = AccountOpt,
    invoice: str = InvoiceOpt,
    reason: str | None = typer.Option(None, "--reason", help="Why (kept in the case)."),
    as_json: bool = JsonOpt,
) -> None:
    """Cancel a case: no further reminders."""
    _ids(account, invoice)
    wf = run_with_client(lambda c: c.cancel(account, invoice, reason))
    _done(wf, "cancel", as_json)


def status(account: str = AccountOpt, invoice: str = InvoiceOpt, as_json: bool = JsonOpt) -> None:
    """A case's state, its reminders and their delivery."""
    _ids(account, invoice)
    data = run_with_client(lambda c: c.status(account, invoice))
    _add_delivery(data, data["workflow_id"])
    if as_json:
        print_json(data)
        return
    console.print(f"[bold]{data['workflow_id']}[/bold]  state: {data['state']}  "
                  f"sms paused: {data['sms_paused']}  next: {data['next_reminder_at'] or '-'}")
    console.print(f"now: {data.get('waiting_for', '')}")
    experiment = data.get("experiment") or {}
    if experiment.get("sms_holdout"):
        arm = experiment["sms_holdout"]
        console.print(f"SMS holdout experiment: {arm} arm"
                      + (" (email only)" if arm == "holdout" else ""), highlight=False)
    table = Table("step", "channel", "status", "delivery", "reason", "due")
    for r in data["reminders"]:
        table.add_row(str(r["step"]), r["channel"], r["status"], r.get("delivery") or "",
                      r["reason"], r["due_at"])
    console.print(table)


def minor_units(name: str, text: str) -> int:
    """A whole number of minor units: '4900' is 49.00; '49.00' is refused, never rounded."""
    value = text.strip()
    if not value.isdigit():
        raise InputError(name, f"{text!r} is not a whole number of minor units (4900 = 49.00)")
    return int(value)


def _ids(account: str, invoice: str) -> None:
    try:
        check_id("account", account)
        check_id("invoice", invoice)
    except InputError as exc:
        fail(str(exc))


def _done(wf: str, signal: str, as_json: bool) -> None:
    if as_json:
        print_json({"workflow_id": wf, "signal": signal, "ok": True})
    else:
        console.print(f"sent {signal} to {wf}")


def _add_delivery(data: dict[str, Any], workflow_id: str) -> None:
    """Merge the provider's delivery state (from delivery reports) into each reminder."""
    with database().session() as s:
        rows = s.scalars(
            select(Message).where(Message.workflow_id == workflow_id).order_by(Message.id)
        ).all()
    latest = {(r.step, r.channel): r for r in rows}
    for reminder in data.get("reminders", []):
        row = latest.get((reminder["step"], reminder["channel"]))
        if row is not None:
            reminder["delivery"] = row.delivery_status or (
                "accepted" if row.status == "sent" else None
            )
            if row.delivery_error:
                reminder["delivery_error"] = row.delivery_error


def register(app: typer.Typer) -> None:
    app.command()(start)
    app.command()(recover)
    app.command()(cancel)
    app.command()(status)
