"""`dunning credits ...`: balance, top-ups (which wake paused cases), prices and rates,
auto-refill and its refills, the ledger."""

from __future__ import annotations

import asyncio
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy import select

from dunning.accounts import pricing
from dunning.accounts.accounts import get_account
from dunning.cli.common import (
    JsonOpt,
    console,
    database,
    err_console,
    followups,
    print_json,
    settings,
)
from dunning.credits import ledger, refill
from dunning.domain.contract import InputError
from dunning.platform.db.models import Account, CreditEntry

app = typer.Typer(
    help="SMS credits: balance, top-ups, prices and rates, auto-refill, ledger.",
    no_args_is_help=True,
)
AccountOpt = typer.Option(..., "--account", help="Account id.")


def _money(account: Account, amount: int) -> str:
    value = pricing.credits_value(account, amount)
    return f" (= {value})" if value else ""


def _wake_error(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


async def _wake(account: str) -> dict[str, Any]:
    from dunning.credits.wake import wake_paused
    from dunning.platform.temporal import connect

    client = await connect(settings())
    return (await wake_paused(client, database(), account, followups=followups())).as_json()


def _warn_unwoken() -> None:
    err_console.print(
        "warning: credits added, but Temporal at DUNNING_TEMPORAL_ADDRESS="
        f"{settings().temporal_address} could not be reached to wake paused cases; they "
        "resume at their next periodic re-check"
    )


# --- balance and top-ups ---------------------------------------------------------------


@app.command()
def balance(account: str = AccountOpt, as_json: bool = JsonOpt) -> None:
    """Show an account's credit balance (and its worth at the display price)."""
    with database().session() as s:
        acct = get_account(s, account)
        value = ledger.balance_of(s, account)
        waiting = ledger.waiting_count(s, account)
        last = refill.last_refill(s, account)
        data: dict[str, Any] = {
            "account_id": account,
            "balance": value,
            "value": pricing.credits_value(acct, value),
            "price": pricing.price_json(acct),
            "paused_cases": waiting,
            "auto_refill": refill.auto_refill_json(acct)["auto_refill"],
            "last_refill": refill.refill_json(acct, last) if last is not None else None,
            "notice": acct.balance_notice,
        }
        shown = f"{account}: balance {value} credits{_money(acct, value)}"
    if as_json:
        print_json(data)
        return
    console.print(f"{escape(shown)}; {waiting} cases paused for credits")
    auto = data["auto_refill"]
    if auto:
        console.print(f"auto-refill: {auto['amount']} credits below {auto['threshold']} "
                      f"via {auto['gateway']}")
    if last is not None and last.status != "succeeded":
        console.print(escape(f"last refill #{last.id}: {last.status}"
                             + (f" ({last.error})" if last.error else "")))


@app.command()
def topup(
    amount: int = typer.Argument(..., metavar="N", help="Credits to add."),
    account: str = AccountOpt,
    idempotency_key: str | None = typer.Option(
        None, "--idempotency-key",
        help="Credit at most once per key (per account): a repeat prints the first result "
             "with \"duplicate\": true and changes nothing.",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Add credits. Paused cases of the account that the balance covers resume, oldest first."""
    ledger.check_credit_amount("N", amount)
    db = database()
    duplicate = False
    if idempotency_key is not None:
        with db.session() as s:
            get_account(s, account)
        keyed = ledger.top_up_idempotent(db, account, amount, idempotency_key)
        new_balance, duplicate = keyed.balance, keyed.duplicate
    else:
        with db.session() as s:
            new_balance = ledger.top_up(s, account, amount)
    with db.session() as s:
        acct = get_account(s, account)
        money = _money(acct, new_balance)
        value = pricing.credits_value(acct, new_balance)
    data: dict[str, Any] = {"account_id": account, "balance": new_balance, "value": value,
                            "woken": 0, "still_waiting": None}
    if idempotency_key is not None:
        data["duplicate"] = duplicate
        if duplicate:
            data["amount"] = keyed.amount
            if as_json:
                print_json(data)
            else:
                console.print(escape(
                    f"{account}: top-up with this idempotency key was already made "
                    f"({keyed.amount} credits, balance then {new_balance}); nothing changed"))
            return
    try:
        woke = asyncio.run(_wake(account))
        data["woken"], data["still_waiting"] = woke["woken"], woke["still_waiting"]
        # Credits set aside for the cases served, and what is left for new sends.
        data["set_aside"], data["available"] = woke["granted"], woke["balance_after"]
    except Exception as exc:  # credits are in; the cases' own re-check wakes them later
        data["wake_error"] = _wake_error(exc)
        _warn_unwoken()
    if as_json:
        print_json(data)
        return
    tail = (f" ({data['set_aside']} credits set aside for them, {data['available']} "
            "available)" if data.get("set_aside") else "")
    tail += (f"; {data['still_waiting']} still waiting" if data["still_waiting"] else "")
    console.print(escape(f"{account}: balance {new_balance} credits{money}; woke "
                         f"{data['woken']} paused cases{tail}"))


# --- display price and rates ---------------------------------------------------------


@app.command()
def price(
    account: str = AccountOpt,
    amount: str | None = typer.Option(None, "--price", help="Price of one credit, e.g. 0.01."),
    currency: str | None = typer.Option(None, "--currency", help="ISO 4217 code, e.g. USD."),
    off: bool = typer.Option(False, "--off", help="Remove the display price."),
    as_json: bool = JsonOpt,
) -> None:
    """Show or set the display price of one credit.

    Balances and ledgers then show money too; Stripe refills charge it."""
    with database().session() as s:
        if off and (amount is not None or currency is not None):
            raise InputError("off", "--off takes no --price or --currency")
        if off:
            data = pricing.set_price(s, account, None, None)
        elif amount is not None:
            data = pricing.set_price(s, account, amount, currency)
        elif currency is not None:
            raise InputError("price", "give --price with --currency")
        else:
            data = {"account_id": account, "price": pricing.price_json(get_account(s, account))}
    if as_json:
        print_json(data)
        return
    p = data["price"]
    console.print(escape(f"{account}: " + (f"1 credit = {p['display']}" if p
                                           else "no display price")))


rates_app = typer.Typer(
    help="Credits per SMS segment by destination country. `rates --account A` shows them.",
    invoke_without_command=True,
)
app.add_typer(rates_app, name="rates")


def _print_rates(data: dict[str, Any]) -> None:
    table = Table("country", "credits per segment")
    table.add_row("default" + (" (built-in)" if data["default_source"] == "built-in" else ""),
                  str(data["default"]))
    for r in data["rates"]:
        table.add_row(r["country"], str(r["credits_per_segment"]))
    console.print(table)


@rates_app.callback()
def rates(
    ctx: typer.Context,
    account: str | None = typer.Option(None, "--account", help="Account id."),
    as_json: bool = JsonOpt,
) -> None:
    """Show the rates (`rates --account A` or `rates show --account A`), or change them."""
    if ctx.invoked_subcommand is not None:
        if account is not None or as_json:
            raise InputError("account", f"put --account after `rates {ctx.invoked_subcommand}`")
        return
    if account is None:
        raise InputError("account", "give --account A (or a sub-command: show, set, unset)")
    _show_rates(account, as_json)


def _show_rates(account: str, as_json: bool) -> None:
    with database().session() as s:
        data = pricing.rates_json(s, account)
    if as_json:
        print_json(data)
    else:
        _print_rates(data)


@rates_app.command("show")
def rates_show(account: str = AccountOpt, as_json: bool = JsonOpt) -> None:
    """Show the account's default rate and its per-country rates."""
    _show_rates(account, as_json)


@rates_app.command("set")
def rates_set(
    account: str = AccountOpt,
    country: str | None = typer.Option(None, "--country", help="ISO 3166 alpha-2, e.g. FR."),
    credits: int | None = typer.Option(None, "--credits", help="Credits per segment."),
    default: int | None = typer.Option(
        None, "--default", help="The account's default credits per segment."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """`--country FR --credits 2` sets a country's rate; `--default N` the account's default."""
    if (country is None) == (default is None):
        raise InputError("country", "give either --country C --credits N, or --default N")
    with database().session() as s:
        if default is not None:
            if credits is not None:
                raise InputError("credits", "--credits goes with --country, not --default")
            data = pricing.set_rate(s, account, None, default)
        else:
            if credits is None:
                raise InputError("credits", "give --credits N with --country")
            data = pricing.set_rate(s, account, country, credits)
    if as_json:
        print_json(data)
    else:
        _print_rates(data)


@rates_app.command("unset")
def rates_unset(
    account: str = AccountOpt,
    country: str | None = typer.Option(None, "--country", help="ISO 3166 alpha-2, e.g. FR."),
    default: bool = typer.Option(False, "--default", help="Reset the default rate to 1."),
    as_json: bool = JsonOpt,
) -> None:
    """Remove a country's rate (it follows the default again) or reset the default."""
    if (country is None) == (not default):
        raise InputError("country", "give either --country C or --default")
    with database().session() as s:
        data = pricing.unset_rate(s, account, None if default else country)
    if as_json:
        print_json(data)
    else:
        _print_rates(data)


# --- auto-refill ---------------------------------------------------------------------


@app.command("auto-refill")
def auto_refill(
    account: str = AccountOpt,
    threshold: int | None = typer.Option(None, "--threshold", help="Refill below this balance."),
    amount: int | None = typer.Option(None, "--amount", help="Credits added per refill."),
    off: bool = typer.Option(False, "--off", help="Switch auto-refill off."),
    gateway: str | None = typer.Option(
        None, "--gateway", help="simulated (grants at once) or stripe (charges the card)."
    ),
    stripe_customer: str | None = typer.Option(
        None, "--stripe-customer", help="Stripe customer id (cus_...)."
    ),
    stripe_payment_method: str | None = typer.Option(
        None, "--stripe-payment-method", help="Saved payment method for off-session charges."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Refill credits automatically when the balance falls below T.

    One refill of N per crossing (a debit taking the balance below T), never two at once. A
    failed refill is not retried until the balance is back at T or more, or this command is
    run again. If the balance is already below T, one refill starts now."""
    db = database()
    with db.session() as s:
        data = refill.configure(
            s, account, threshold=threshold, amount=amount, off=off, gateway=gateway,
            stripe_customer=stripe_customer, stripe_payment_method=stripe_payment_method,
        )
        armed = None if off else refill.arm_if_low(s, account)
    data["refill"] = None
    if armed is not None:
        outcome = followups().execute_refill(armed)
        if outcome is not None:
            data["refill"] = {"id": outcome.id, "status": outcome.status,
                              "amount": outcome.amount, "error": outcome.error,
                              "balance": outcome.balance}
            if outcome.status == "succeeded":
                try:
                    data["woken"] = asyncio.run(_wake(account))["woken"]
                except Exception as exc:
                    data["wake_error"] = _wake_error(exc)
                    _warn_unwoken()
    if as_json:
        print_json(data)
        return
    auto = data["auto_refill"]
    if auto is None:
        console.print(f"{escape(account)}: auto-refill off")
    else:
        charge = f", charging {auto['charge']}" if auto["charge"] else ""
        console.print(escape(f"{account}: auto-refill {auto['amount']} credits below "
                             f"{auto['threshold']} via {auto['gateway']}{charge}"))
    if data["refill"]:
        r = data["refill"]
        console.print(escape(f"balance was below the threshold: refill #{r['id']} "
                             f"{r['status']}" + (f" ({r['error']})" if r["error"] else "")))


@app.command("refills")
def refills(
    account: str = AccountOpt,
    limit: int = typer.Option(50, "--limit", help="Newest refills shown."),
    as_json: bool = JsonOpt,
) -> None:
    """Auto-refills of the account: pending, succeeded, failed (with the error)."""
    with database().session() as s:
        data = refill.refills_json(s, account, limit=max(1, limit))
    if as_json:
        print_json(data)
        return
    table = Table("id", "at", "credits", "charge", "gateway", "status", "reference / error")
    table.columns[-1].overflow = "fold"
    for r in data["refills"]:
        table.add_row(str(r["id"]), (r["created_at"] or "")[:19], str(r["amount"]),
                      r["charge"] or "", r["gateway"], r["status"],
                      escape(r["error"] or r["gateway_ref"] or ""))
    console.print(table)


# --- ledger --------------------------------------------------------------------------


@app.command("ledger")
def show_ledger(
    account: str = AccountOpt,
    limit: int = typer.Option(200, "--limit", help="Newest entries shown."),
    as_json: bool = JsonOpt,
) -> None:
    """Every credit movement with the running balance.

    Top-ups, SMS debits (with case and step), refunds and refills, and their worth at the
    display price."""
    with database().session() as s:
        acct = get_account(s, account)
        rows = list(
            s.scalars(
                select(CreditEntry).where(CreditEntry.account_id == account)
                .order_by(CreditEntry.id.desc()).limit(max(1, limit))
            )
        )[::-1]
        current = ledger.balance_of(s, account)
        entries: list[dict[str, Any]] = [
            {"id": e.id, "at": e.created_at.isoformat(), "kind": e.kind, "amount": e.amount,
             "balance": e.balance_after, "value": pricing.credits_value(acct, e.amount),
             "balance_value": pricing.credits_value(acct, e.balance_after),
             "workflow_id": e.workflow_id, "step": e.step, "message_id": e.message_id,
             "note": e.note}
            for e in rows
        ]
        price_info = pricing.price_json(acct)
        summary = f"balance: {current} credits{_money(acct, current)}"
        current_value = pricing.credits_value(acct, current)
    if as_json:
        print_json({"account_id": account, "balance": current, "value": current_value,
                    "price": price_info, "entries": entries})
        return
    table = Table("at", "kind", "amount", "balance", "case", "step", "note")
    if price_info:
        table.add_column("value")
    for e in entries:
        cells = [e["at"][:19], e["kind"], f"{e['amount']:+d}", str(e["balance"]),
                 escape(e["workflow_id"] or ""), str(e["step"] or ""), escape(e["note"] or "")]
        if price_info:
            cells.append(e["value"] or "")
        table.add_row(*cells)
    console.print(table)
    console.print(escape(summary))
