"""`dunning report --account A [--json] [--html FILE] [--since DATE]`: recovery figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from dunning.cases import end_actions
from dunning.cases.experiments import experiment_html, experiment_report
from dunning.cases.funnel import build_funnel, funnel_html, funnel_lines
from dunning.cases.report import (
    CHANNELS,
    MESSAGE_STATUSES,
    amounts_text,
    build_report,
    parse_since,
    percent,
)
from dunning.cases.report_html import LABELS, render_html
from dunning.cli.common import JsonOpt, console, fail, print_json, session


def report(
    account: str = typer.Option(..., "--account", help="Account id."),
    as_json: bool = JsonOpt,
    html: Path | None = typer.Option(
        None, "--html", metavar="FILE", dir_okay=False,
        help="Also write a self-contained HTML page with charts to FILE.",
    ),
    since: str | None = typer.Option(
        None, "--since", metavar="DATE",
        help="Only cases whose payment failed at or after DATE (2026-03-01 or RFC 3339), and "
        "messages and credits from then on.",
    ),
) -> None:
    """Recovery figures for an account: cases, recoveries, rates, channels, SMS spend."""
    start = parse_since(since) if since else None
    with session() as s:
        data = build_report(s, account, since=start)
        data["funnel"] = build_funnel(s, account, since=start)
        data["experiment"] = experiment_report(s, account, since=start)
        data["end_actions"] = end_actions.summary(s, account, start)
    if html is not None:
        try:
            page = render_html(data).replace(
                "<footer>",
                funnel_html(data["funnel"]) + experiment_html(data["experiment"]) + "<footer>",
                1,
            )
            html.write_text(page, encoding="utf-8")
        except OSError as exc:
            fail(f"cannot write {html}: {exc.strerror or exc}")
    if as_json:
        print_json(data)
    elif html is not None:
        console.print(f"wrote the report for {account} to {html}", highlight=False)
    else:
        print_summary(data)


def print_summary(data: dict[str, Any]) -> None:
    cases = data["cases"]
    rate = data["recovery_rate"]
    spend = data["sms_spend"]
    period = ("since " + data["since"][:10]) if data["since"] else "all time"
    summary = Table(title=f"{data['company_name']} ({data['account_id']}), {period}",
                    show_header=False, title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    by_state = cases["by_state"]
    summary.add_row("cases", f"{cases['total']} ({by_state['active']} active, "
                             f"{by_state['recovered']} recovered, {by_state['exhausted']} "
                             f"exhausted, {by_state['canceled']} canceled)")
    summary.add_row("recovered", f"{data['recovered']['count']} cases, "
                                 f"{amounts_text(data['recovered']['amount'])}")
    summary.add_row("still outstanding", amounts_text(cases["outstanding"]))
    summary.add_row("recovery rate", f"{percent(rate['of_ended'])} of ended cases, "
                                     f"{percent(rate['of_all'])} of all")
    summary.add_row("median time to recovery", data["median_time_to_recovery"]["human"])
    price = f" ({spend['price']['formatted']})" if spend["price"] else ""
    refunded = f", {spend['refunded']} refunded" if spend["refunded"] else ""
    summary.add_row("SMS spend", f"{spend['credits']} credits{price}{refunded}")
    for action, statuses in sorted(data.get("end_actions", {}).items()):
        counts = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
        summary.add_row(f"on exhausted: {action}", counts)
    console.print(summary)

    channels = Table("last reminder", "recovered", "amount", title="Recoveries by channel",
                     title_justify="left")
    channels.columns[1].justify = "right"
    for ch in CHANNELS:
        row = data["recoveries_by_channel"][ch]
        channels.add_row(LABELS[ch], str(row["count"]), amounts_text(row["amount"]))
    console.print(channels)

    msgs = data["messages"]["by_channel"]
    statuses = list(MESSAGE_STATUSES) + sorted(
        {s for row in msgs.values() for s in row} - set(MESSAGE_STATUSES))
    messages = Table("channel", *statuses, title="Messages", title_justify="left")
    for column in messages.columns[1:]:
        column.justify = "right"
    for ch, row in msgs.items():
        messages.add_row(LABELS.get(ch, ch), *(str(row.get(s, 0)) for s in statuses))
    console.print(messages)
    if data.get("funnel"):
        console.print("Funnel (cases): sent -> delivered -> clicked -> recovered", style="bold",
                      highlight=False)
        for line in funnel_lines(data["funnel"]):
            console.print(f"  {line}", highlight=False, markup=False)
    experiment = data.get("experiment") or {}
    if experiment.get("arms"):
        arms = experiment["arms"]
        console.print("SMS holdout experiment", style="bold", highlight=False)
        for arm in ("sms", "holdout"):
            row = arms[arm]
            rate = percent(row["recovery_rate"])
            console.print(f"  {arm}: {row['cases']} cases, {row['ended']} ended, "
                          f"{row['recovered']} recovered ({rate}), "
                          f"{amounts_text(row['recovered_amount'])}", highlight=False,
                          markup=False)
        console.print(f"  {experiment['verdict']}", highlight=False, markup=False)
    ab = experiment.get("sms_template")
    if ab:
        console.print("SMS template A/B test", style="bold", highlight=False)
        for variant in ("A", "B"):
            row = ab["variants"][variant]
            console.print(f"  template {variant}: {row['cases']} cases, {row['ended']} ended, "
                          f"{row['recovered']} recovered ({percent(row['recovery_rate'])})",
                          highlight=False, markup=False)
        console.print(f"  {ab['verdict']}", highlight=False, markup=False)
    replies = data["messages"]["compliance_replies"]
    if replies:
        console.print(f"plus {replies} HELP/STOP {'reply' if replies == 1 else 'replies'} "
                      "(not reminders)", highlight=False)
