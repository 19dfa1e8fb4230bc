"""`dunning email ...` (email templates)."""

from __future__ import annotations

from pathlib import Path

import typer

from dunning.accounts import messaging
from dunning.cli.common import JsonOpt, fail, print_json, session, settings

app = typer.Typer(help="Email templates per step and plan.", no_args_is_help=True)
template_app = typer.Typer(help="Email templates (per step and per plan).", no_args_is_help=True)
app.add_typer(template_app, name="template")

AccountOpt = typer.Option(..., "--account", help="The account id.")
PlanOpt = typer.Option(None, "--plan", help="A customer plan; without it, the account default.")
LocaleOpt = typer.Option(
    None, "--locale",
    help="A BCP 47 locale (e.g. es, pt-BR); without it, the account's default locale.",
)
StepOpt = typer.Option(0, "--step", help="Reminder step, 1-based; 0 (default) = every step.")


@template_app.command("set")
def template_set(
    account: str = AccountOpt,
    subject: str = typer.Option(..., "--subject", help="Subject line; variables allowed."),
    body: str = typer.Option(..., "--body", help="Body text; must contain {billing_link}."),
    step: int = StepOpt,
    plan: str | None = PlanOpt,
    locale: str | None = LocaleOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Set the email template for a step (or every step), a plan (or the default) and a locale
    (or the account's default locale). The HTML part is built from the text."""
    with session() as s:
        data = messaging.set_email_template(s, account, subject, body, step=step, plan=plan,
                                            locale=locale)
    if as_json:
        print_json(data)
        return
    where = f"step {data['step']}" if data["step"] else "every step"
    typer.echo(f"Email template saved for {where}"
               + (f", plan {data['plan']!r}" if data["plan"] else "")
               + (f", locale {data['locale']}" if data["locale"] else "") + ".")


@template_app.command("clear")
def template_clear(
    account: str = AccountOpt,
    step: int = StepOpt,
    plan: str | None = PlanOpt,
    locale: str | None = LocaleOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Remove an email template (the next less specific one applies again)."""
    with session() as s:
        messaging.clear_email_template(s, account, step=step, plan=plan, locale=locale)
        data = messaging.email_templates_json(s, account)
    if as_json:
        print_json(data)
    else:
        typer.echo("Email template removed.")


@template_app.command("show")
def template_show(account: str = AccountOpt, as_json: bool = JsonOpt) -> None:
    """Show the account's email templates (and the built-in default)."""
    with session() as s:
        data = messaging.email_templates_json(s, account)
    if as_json:
        print_json(data)
        return
    if not data["templates"]:
        typer.echo("No email templates set; every step uses the built-in default:")
        typer.echo(f"Subject: {data['default']['subject']}")
        typer.echo(data["default"]["body"])
        return
    for t in data["templates"]:
        where = f"step {t['step']}" if t["step"] else "every step"
        typer.echo(f"--- {where}" + (f", plan {t['plan']!r}" if t["plan"] else "")
                   + (f", locale {t['locale']}" if t["locale"] else "") + " ---")
        typer.echo(f"Subject: {t['subject']}")
        typer.echo(t["body"])


@app.command()
def preview(
    account: str = AccountOpt,
    step: int = typer.Option(1, "--step", help="Reminder step, 1-based."),
    plan: str | None = PlanOpt,
    currency: str = typer.Option("USD", "--currency", help="The sample invoice's currency."),
    locale: str | None = LocaleOpt,
    html: Path | None = typer.Option(
        None, "--html", metavar="FILE", help="Also write the HTML part to FILE.",
        dir_okay=False,
    ),
    as_json: bool = JsonOpt,
) -> None:
    """The email of a step as a sample customer would get it (subject, text; HTML to a file)."""
    with session() as s:
        data = messaging.preview_email(s, account, step=step, plan=plan, currency=currency,
                                       locale=locale, public_url=settings().public_url)
    if html is not None:
        try:
            html.write_text(data["html"], encoding="utf-8")
        except OSError as exc:
            fail(f"--html: cannot write {html}: {exc.strerror or exc}")
    if as_json:
        print_json(data)
        return
    typer.echo(f"Subject: {data['subject']}")
    typer.echo()
    typer.echo(data["body"])
