"""`dunning customer pause|resume|exclude|show`: the operator's controls over one customer
(dunning.customers.conversation)."""

from __future__ import annotations

from datetime import UTC, datetime

import typer

from dunning.cli.common import JsonOpt, console, print_json, session
from dunning.customers import conversation
from dunning.domain.contract import InputError

app = typer.Typer(help="A customer's reminders: pause, resume, exclude.", no_args_is_help=True)
AccountOpt = typer.Option(..., "--account", help="Account id.")
CustomerOpt = typer.Option(..., "--customer", help="Customer id.")


def parse_until(value: str) -> datetime:
    """RFC 3339 or a date (midnight UTC); a time without an offset is UTC."""
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError("until", f"{value!r} is not a date (2026-12-01) or an RFC 3339 time"
                         ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _done(data: dict[str, object], as_json: bool, text: str) -> None:
    if as_json:
        print_json(data)
    else:
        console.print(text, highlight=False)


@app.command()
def pause(
    account: str = AccountOpt,
    customer: str = CustomerOpt,
    until: str | None = typer.Option(None, "--until", help="When reminders go on again "
                                     "(date or RFC 3339); default: until `resume`."),
    as_json: bool = JsonOpt,
) -> None:
    """Hold every reminder of the customer (all their cases) until a time or until resumed."""
    moment = parse_until(until) if until is not None else None
    with session() as s:
        data = conversation.customer_state_json(
            conversation.pause(s, account, customer, moment, datetime.now(UTC)))
    _done(data, as_json, f"customer {customer} paused"
          + (f" until {data['paused_until']}" if moment else " until resumed"))


@app.command()
def resume(account: str = AccountOpt, customer: str = CustomerOpt,
           as_json: bool = JsonOpt) -> None:
    """Lift a pause or an exclusion: held reminders go out at their next try."""
    with session() as s:
        data = conversation.customer_state_json(conversation.resume(s, account, customer))
    _done(data, as_json, f"customer {customer} resumed")


@app.command()
def exclude(account: str = AccountOpt, customer: str = CustomerOpt,
            as_json: bool = JsonOpt) -> None:
    """Exclude the customer from dunning: a case started for them ends at once (canceled,
    saying why). Cases already running are not touched (cancel them if needed)."""
    with session() as s:
        data = conversation.customer_state_json(conversation.exclude(s, account, customer))
    _done(data, as_json, f"customer {customer} excluded from dunning")


@app.command()
def show(account: str = AccountOpt, customer: str = CustomerOpt, as_json: bool = JsonOpt) -> None:
    """The customer's pause and exclusion state."""
    with session() as s:
        data = conversation.customer_state_json(conversation.get_customer(s, account, customer))
    _done(data, as_json, ", ".join(f"{k}: {v}" for k, v in data.items()))
