"""`dunning sms ...` (SMS switches, templates, preview)."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from dunning.accounts import messaging
from dunning.cli.common import JsonOpt, console, err_console, print_json, session, settings

app = typer.Typer(help="SMS settings: switches per step, templates, preview.", no_args_is_help=True)
template_app = typer.Typer(help="SMS templates (per account and per plan).", no_args_is_help=True)
app.add_typer(template_app, name="template")

AccountOpt = typer.Option(..., "--account", help="The account id.")
StepsOpt = typer.Option(
    None, "--step", help="A reminder step, 1-based in schedule order (repeatable)."
)
PlanOpt = typer.Option(None, "--plan", help="A customer plan; without it, the account default.")
LocaleOpt = typer.Option(
    None, "--locale",
    help="A BCP 47 locale (e.g. es, pt-BR); without it, the account's default locale.",
)
CountryOpt = typer.Option(
    messaging.DEFAULT_PREVIEW_COUNTRY, "--country",
    help="The sample customer's country (ISO 3166 alpha-2), for the credit rate.",
)


def _echo(text: str = "") -> None:
    # Plain output: templates may contain [brackets] that rich would read as markup.
    typer.echo(text)


def _note(text: str) -> None:
    err_console.print(text, markup=False, highlight=False)


def _print_settings(data: dict[str, Any]) -> None:
    state = "on" if data["sms_enabled"] else "off"
    _echo(f"SMS for account {data['account_id']}: {state}"
          + ("" if data["sms_sender"] else " (no SMS sender number set)"))
    table = Table(show_header=True, header_style="bold")
    for col in ("step", "offset", "email", "SMS"):
        table.add_column(col)
    for s in data["steps"]:
        table.add_row(str(s["step"]), s["offset"], "on" if s["email"] else "off",
                      "on" if s["sms"] else "off")
    console.print(table)
    _echo(f"Template ({data['template_source']}):")
    _echo(f"  {data['template']}")
    for plan, body in data["plan_templates"].items():
        _echo(f"Template for plan {plan!r}:")
        _echo(f"  {body}")
    for t in data.get("templates", []):
        where = ", ".join(
            f"{k} {t[k]}" for k in ("locale", "step", "plan") if t[k] is not None
        )
        _echo(f"Template for {where}:")
        _echo(f"  {t['body']}")
    _echo(f"Default locale: {data['locale']} (shipped texts: "
          f"{', '.join(data['shipped_locales'])})")
    _echo(f"Opt-out line, added unless the message ends with one: {data['opt_out_line']}"
          " (in the message's language)")


def _print_preview(data: dict[str, Any]) -> None:
    _echo(data["text"])
    _echo()
    parts = "segment" if data["segments"] == 1 else "segments"
    unit = "septets" if data["encoding"] == "GSM-7" else "UTF-16 units"
    _echo(f"{data['encoding']}, {data['segments']} {parts} ({data['units']} {unit}), "
          f"{data['credits']} credit{'s' if data['credits'] != 1 else ''} to {data['country']}"
          f"; template: {data['template_source']} ({data['template_locale']})"
          + (f" (plan {data['plan']!r})" if data["plan"] else ""))
    if data.get("tracked_link"):
        saving = data["saving"]
        _echo(f"Tracked short link: {saving['characters']} characters, "
              f"{saving['segments']} segment(s), {saving['credits']} credit(s) saved against "
              f"a typical hosted-invoice link ({data['untracked']['segments']} segment(s))")
    if data["non_gsm7_chars"]:
        shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in data["non_gsm7_chars"])
        _echo(f"UCS-2 because of: {shown}")


def _switch(account: str, steps: list[int] | None, on: bool, as_json: bool) -> None:
    with session() as s:
        data = messaging.set_sms_switch(s, account, on, steps or None)
    if as_json:
        print_json(data)
        return
    _print_settings(data)
    if data["sms_enabled"] and not data["sms_sender"]:
        _note("note: the account has no SMS sender number: nothing is sent until "
              "`dunning account update --sms-sender` sets one")


@app.command()
def enable(
    account: str = AccountOpt,
    step: list[int] | None = StepsOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Switch SMS on for the account, or for the given steps only."""
    _switch(account, step, True, as_json)


@app.command()
def disable(
    account: str = AccountOpt,
    step: list[int] | None = StepsOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Switch SMS off for the account, or for the given steps only."""
    _switch(account, step, False, as_json)


@app.command()
def show(account: str = AccountOpt, as_json: bool = JsonOpt) -> None:
    """Show the schedule with email/SMS per step and the SMS templates in use."""
    with session() as s:
        data = messaging.sms_settings_json(s, account)
    if as_json:
        print_json(data)
    else:
        _print_settings(data)


@app.command()
def preview(
    account: str = AccountOpt,
    plan: str | None = PlanOpt,
    country: str = CountryOpt,
    step: int | None = typer.Option(
        None, "--step", help="Fill {days_overdue} as on this step (default: 3 days)."
    ),
    currency: str = typer.Option("USD", "--currency", help="The sample invoice's currency."),
    locale: str | None = LocaleOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The SMS exactly as it would be sent to a sample customer, with segments and credits."""
    with session() as s:
        data = messaging.preview_sms(s, account, plan, country, step=step, currency=currency,
                                     locale=locale, public_url=settings().public_url)
    if as_json:
        print_json(data)
    else:
        _print_preview(data)


@template_app.command("set")
def template_set(
    text: str = typer.Argument(..., metavar="TEXT", help="The template, e.g. "
                               "'{company_name}: please pay {amount} at {billing_link}'."),
    account: str = AccountOpt,
    plan: str | None = PlanOpt,
    locale: str | None = LocaleOpt,
    step: int = typer.Option(0, "--step", help="Reminder step, 1-based; 0 (default) = every step."),
    as_json: bool = JsonOpt,
) -> None:
    """Set the SMS template of the account or of one plan, step or locale (refused if invalid)."""
    with session() as s:
        data = messaging.set_sms_template(s, account, text, plan, locale=locale, step=step,
                                          public_url=settings().public_url)
    if as_json:
        print_json(data)
        return
    _echo("Template saved" + (f" for plan {plan!r}" if plan else "")
          + (f" in {data['template_locale']}" if locale else "")
          + (f" for step {step}" if step else "") + ". Preview:")
    _print_preview(data)


@template_app.command("clear")
def template_clear(
    account: str = AccountOpt,
    plan: str | None = PlanOpt,
    locale: str | None = LocaleOpt,
    step: int = typer.Option(0, "--step", help="Reminder step, 1-based; 0 (default) = every step."),
    as_json: bool = JsonOpt,
) -> None:
    """Remove the SMS template of the account or of one plan (the fallback applies again)."""
    with session() as s:
        messaging.clear_sms_template(s, account, plan, locale=locale, step=step)
        data = messaging.sms_settings_json(s, account)
    if as_json:
        print_json(data)
    else:
        _echo("Template removed" + (f" for plan {plan!r}" if plan else "") + ".")


@template_app.command("show")
def template_show(account: str = AccountOpt, as_json: bool = JsonOpt) -> None:
    """Show the SMS templates of the account (default and per plan)."""
    with session() as s:
        data = messaging.sms_settings_json(s, account)
    out = {
        "account_id": data["account_id"],
        "template": data["template"],
        "template_source": data["template_source"],
        "plan_templates": data["plan_templates"],
    }
    if as_json:
        print_json(out)
        return
    _echo(f"Template ({out['template_source']}):")
    _echo(f"  {out['template']}")
    for plan, body in out["plan_templates"].items():
        _echo(f"Template for plan {plan!r}:")
        _echo(f"  {body}")
