"""`dunning endpoints ...` (an account's outbound-event receivers) and `dunning events ...` (what
was sent, every attempt, redelivery). See dunning.events."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from dunning.accounts.accounts import get_account
from dunning.cli.common import JsonOpt, console, fail, print_json, session
from dunning.events import endpoints as endpoint_service
from dunning.events import outbox
from dunning.events.catalog import EVENT_TYPES

endpoints_app = typer.Typer(
    help="Webhook endpoints receiving an account's events (Standard Webhooks).",
    no_args_is_help=True,
)
events_app = typer.Typer(help="Outbound events: list them and their deliveries, redeliver.",
                         no_args_is_help=True)
AccountOpt = typer.Option(..., "--account", help="Account id.")
OptionalAccountOpt = typer.Option(None, "--account", help="Account id (checked if given).")


@endpoints_app.command("add")
def add(
    args: list[str] = typer.Argument(..., metavar="URL [EVENT ...]"),
    account: str = AccountOpt,
    events: list[str] = typer.Option(
        [], "--events", help="Event types to receive (repeat, comma-separate, or list them "
        f"after the URL); default: all. Known: {', '.join(EVENT_TYPES)}.",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Add an endpoint; prints its signing secret (whsec_...) once."""
    url, extra = args[0], args[1:]
    if extra and not events:
        fail(f"unexpected argument {extra[0]!r} (event types go after --events)")
    with session() as s:
        ep, new = endpoint_service.add_endpoint(s, account, url, [*events, *extra])
        data = {**endpoint_service.endpoint_json(ep), "secret": new.secret}
    if as_json:
        print_json(data)
        return
    console.print(f"endpoint {data['endpoint_id']} for account {account}: {url}", highlight=False)
    types = data["events"] if data["events"] == "all" else ", ".join(data["events"])
    console.print(f"events: {types}", highlight=False)
    console.print(f"signing secret (shown once, keep it safe): {new.secret}", highlight=False)


@endpoints_app.command("list")
def list_(account: str = AccountOpt, as_json: bool = JsonOpt) -> None:
    """The account's endpoints (secrets are never shown)."""
    with session() as s:
        rows = [endpoint_service.endpoint_json(ep)
                for ep in endpoint_service.list_endpoints(s, account)]
    if as_json:
        print_json({"account_id": account, "endpoints": rows})
        return
    table = Table(title=f"endpoints of {account}")
    for col in ("endpoint", "url", "events", "enabled"):
        table.add_column(col)
    for r in rows:
        events = r["events"] if r["events"] == "all" else ",".join(r["events"])
        enabled = "yes" if r["enabled"] else f"no ({r['disabled_reason']})"
        table.add_row(r["endpoint_id"], r["url"], events, enabled)
    console.print(table)


@endpoints_app.command("remove")
def remove(
    endpoint_id: str = typer.Argument(..., metavar="ENDPOINT"),
    account: str | None = OptionalAccountOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Remove an endpoint; its undelivered events are dropped with it."""
    with session() as s:
        endpoint_service.remove_endpoint(s, endpoint_id, account)
    if as_json:
        print_json({"endpoint_id": endpoint_id, "removed": True})
    else:
        console.print(f"endpoint {endpoint_id} removed", highlight=False)


@endpoints_app.command("rotate-secret")
def rotate_secret(
    endpoint_id: str = typer.Argument(..., metavar="ENDPOINT"),
    account: str | None = OptionalAccountOpt,
    as_json: bool = JsonOpt,
) -> None:
    """A new signing secret (shown once); the old one stops signing at once."""
    with session() as s:
        new = endpoint_service.rotate_secret(s, endpoint_id, account)
    if as_json:
        print_json({"endpoint_id": endpoint_id, "secret": new.secret})
    else:
        console.print(f"new signing secret of {endpoint_id} (shown once): {new.secret}",
                      highlight=False)


@endpoints_app.command("enable")
def enable(
    endpoint_id: str = typer.Argument(..., metavar="ENDPOINT"),
    account: str | None = OptionalAccountOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Enable an endpoint again after it was disabled for sustained failure."""
    with session() as s:
        endpoint_service.enable_endpoint(s, endpoint_id, account)
    if as_json:
        print_json({"endpoint_id": endpoint_id, "enabled": True})
    else:
        console.print(f"endpoint {endpoint_id} enabled", highlight=False)


@events_app.command("list")
def list_events(
    account: str = AccountOpt,
    case: str | None = typer.Option(None, "--case", help="A case's workflow id or invoice id."),
    limit: int = typer.Option(200, "--limit", min=1, max=10000, help="The newest N events."),
    as_json: bool = JsonOpt,
) -> None:
    """The account's events, oldest first, with every delivery attempt."""
    with session() as s:
        get_account(s, account)
        rows: list[dict[str, Any]] = [
            outbox.event_json(s, ev) for ev in outbox.list_events(s, account, case, limit)
        ]
    if as_json:
        print_json({"account_id": account, "events": rows})
        return
    table = Table(title=f"events of {account}")
    for col in ("event", "type", "case", "at", "deliveries"):
        table.add_column(col)
    for r in rows:
        deliveries = "; ".join(
            f"{d['endpoint_id']}: {d['status']} ({len(d['attempts'])} attempts)"
            for d in r["deliveries"]
        ) or "-"
        table.add_row(r["event_id"], r["type"], r["case_id"] or "-", r["timestamp"], deliveries)
    console.print(table)


@events_app.command("redeliver")
def redeliver(
    event_id: str = typer.Argument(..., metavar="EVENT_ID"),
    as_json: bool = JsonOpt,
) -> None:
    """Send an event again to its account's subscribed endpoints (after what they have
    pending); a running worker picks it up within seconds."""
    with session() as s:
        chosen = outbox.redeliver(s, event_id)
    if as_json:
        print_json({"event_id": event_id, "endpoints": chosen})
    else:
        console.print(f"event {event_id} queued again for {', '.join(chosen)}", highlight=False)
