"""`dunning campaign set|list|show|remove`: schedules per plan (dunning.cases.campaigns)."""

from __future__ import annotations

import typer
from rich.table import Table

from dunning.cases.campaigns import (
    CampaignInput,
    campaign_json,
    get_campaign,
    list_campaigns,
    remove_campaign,
    set_campaign,
)
from dunning.cli.common import JsonOpt, console, print_json, session

app = typer.Typer(help="Campaigns: a schedule, grace, SMS steps and end action per plan.",
                  no_args_is_help=True)
AccountOpt = typer.Option(..., "--account", help="Account id.")
PlanOpt = typer.Option(..., "--plan", help="The plan (as in the case input's `plan`).")


@app.command("set")
def set_(
    account: str = AccountOpt,
    plan: str = PlanOpt,
    schedule: str = typer.Option(..., "--schedule", help="Reminder offsets, e.g. 0d,3d,7d,14d."),
    grace: str | None = typer.Option(None, "--grace", help="Wait after the last reminder "
                                     "(default: the account's)."),
    sms_steps: str | None = typer.Option(None, "--sms-steps", help="Steps that send an SMS, "
                                         "e.g. 1,3, or none (default: the account's switches)."),
    on_exhausted: str | None = typer.Option(
        None, "--on-exhausted", help="none, cancel-subscription, mark-uncollectible or "
        "pause-collection (default: the account's).",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Create or replace a plan's campaign. Cases already running keep the one they started
    with."""
    with session() as s:
        data = campaign_json(set_campaign(s, account, plan, CampaignInput(
            schedule, grace, sms_steps, on_exhausted)))
    _print(data, as_json)


@app.command("show")
def show(account: str = AccountOpt, plan: str = PlanOpt, as_json: bool = JsonOpt) -> None:
    """One plan's campaign."""
    with session() as s:
        data = campaign_json(get_campaign(s, account, plan))
    _print(data, as_json)


@app.command("list")
def list_(account: str = AccountOpt, as_json: bool = JsonOpt) -> None:
    """The account's campaigns (plans without one use the account's schedule)."""
    with session() as s:
        rows = [campaign_json(c) for c in list_campaigns(s, account)]
    if as_json:
        print_json({"account_id": account, "campaigns": rows})
        return
    table = Table(title=f"campaigns of {account}")
    for col in ("plan", "schedule", "grace", "sms steps", "on exhausted"):
        table.add_column(col)
    for r in rows:
        steps = r["sms_steps"]
        table.add_row(r["plan"], r["schedule"], r["grace"],
                      steps if isinstance(steps, str) else ",".join(map(str, steps)) or "none",
                      r["on_exhausted"])
    console.print(table)


@app.command("remove")
def remove(account: str = AccountOpt, plan: str = PlanOpt, as_json: bool = JsonOpt) -> None:
    """Remove a plan's campaign: new cases of the plan use the account's schedule."""
    with session() as s:
        remove_campaign(s, account, plan)
    if as_json:
        print_json({"account_id": account, "plan": plan, "removed": True})
    else:
        console.print(f"campaign of plan {plan} removed", highlight=False)


def _print(data: dict[str, object], as_json: bool) -> None:
    if as_json:
        print_json(data)
        return
    table = Table(title=f"campaign {data['plan']} of {data['account_id']}", show_header=False)
    for key in ("schedule", "grace", "sms_steps", "on_exhausted"):
        table.add_row(key, str(data[key]))
    console.print(table)
