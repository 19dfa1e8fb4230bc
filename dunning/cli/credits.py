"""`dunning credits ...`: balance, top-ups (which wake paused cases), auto-refill, ledger."""

from __future__ import annotations

import asyncio
from typing import Any

import typer
from rich.table import Table
from sqlalchemy import select

from dunning import credits as ledger
from dunning.accounts import get_account
from dunning.cli.common import JsonOpt, console, database, err_console, print_json, settings
from dunning.db.models import CreditEntry
from dunning.domain import InputError
from starter import DunningClient

app = typer.Typer(help="SMS credits: balance, top-ups, auto-refill, ledger.",
                  no_args_is_help=True)
AccountOpt = typer.Option(..., "--account", help="Account id.")


@app.command()
def balance(account: str = AccountOpt, as_json: bool = JsonOpt) -> None:
    """Show an account's credit balance."""
    with database().session() as s:
        value = ledger.balance_of(s, account)
        waiting = len(ledger.waiters(s, account))
    data = {"account_id": account, "balance": value, "paused_cases": waiting}
    if as_json:
        print_json(data)
    else:
        console.print(f"{account}: {value} credits ({waiting} cases waiting for credits)")


@app.command()
def topup(
    amount: int = typer.Argument(..., metavar="N", help="Credits to add."),
    account: str = AccountOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Add credits. Cases of the account paused for credits resume by themselves."""
    if amount <= 0:
        raise InputError("N", "must be a positive whole number of credits")
    db = database()
    with db.session() as s:
        new_balance = ledger.top_up(s, account, amount)
    data: dict[str, Any] = {"account_id": account, "balance": new_balance, "woken": 0}
    try:
        data["woken"] = asyncio.run(_wake(account))
    except Exception as exc:  # credits are in; waking is retried by the cases' own re-check
        data["wake_error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        err_console.print(
            f"warning: credits added, but Temporal at DUNNING_TEMPORAL_ADDRESS="
            f"{settings().temporal_address} could not be reached to wake paused cases; they "
            "resume at their next periodic re-check"
        )
    if as_json:
        print_json(data)
    else:
        console.print(f"{account}: balance {new_balance} credits; woke {data['woken']} "
                      "paused cases")


async def _wake(account: str) -> int:
    client = await DunningClient.connect(settings(), database())
    return await client.wake_paused(account)


@app.command("auto-refill")
def auto_refill(
    account: str = AccountOpt,
    threshold: int | None = typer.Option(None, "--threshold", help="Refill below this balance."),
    amount: int | None = typer.Option(None, "--amount", help="Credits added per refill."),
    off: bool = typer.Option(False, "--off", help="Switch auto-refill off."),
    as_json: bool = JsonOpt,
) -> None:
    """Refill credits automatically when the balance runs low."""
    with database().session() as s:
        acct = get_account(s, account)
        if off:
            acct.auto_refill_threshold = acct.auto_refill_amount = None
        else:
            if threshold is None or amount is None:
                raise InputError("threshold", "give --threshold T and --amount N, or --off")
            if threshold < 0:
                raise InputError("threshold", "must be zero or more")
            if amount <= 0:
                raise InputError("amount", "must be a positive whole number of credits")
            acct.auto_refill_threshold, acct.auto_refill_amount = threshold, amount
        data = {"account_id": account, "auto_refill": None if off else
                {"threshold": threshold, "amount": amount}}
    if as_json:
        print_json(data)
    else:
        console.print(f"{account}: auto-refill {'off' if off else f'{amount} below {threshold}'}")


@app.command("ledger")
def show_ledger(
    account: str = AccountOpt,
    limit: int = typer.Option(200, "--limit", help="Newest entries shown."),
    as_json: bool = JsonOpt,
) -> None:
    """Every credit movement with the running balance."""
    with database().session() as s:
        get_account(s, account)
        rows = list(
            s.scalars(
                select(CreditEntry).where(CreditEntry.account_id == account)
                .order_by(CreditEntry.id.desc()).limit(limit)
            )
        )[::-1]
        current = ledger.balance_of(s, account)
    entries: list[dict[str, Any]] = [
        {"id": e.id, "at": e.created_at.isoformat(), "kind": e.kind, "amount": e.amount,
         "balance": e.balance_after, "workflow_id": e.workflow_id, "step": e.step,
         "note": e.note}
        for e in rows
    ]
    if as_json:
        print_json({"account_id": account, "balance": current, "entries": entries})
        return
    table = Table("at", "kind", "amount", "balance", "case", "step", "note")
    for e in entries:
        table.add_row(e["at"][:19], e["kind"], f"{e['amount']:+d}", str(e["balance"]),
                      e["workflow_id"] or "", str(e["step"] or ""), e["note"] or "")
    console.print(table)
    console.print(f"balance: {current}")
