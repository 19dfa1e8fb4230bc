"""`dunning account create|update|show`."""

from __future__ import annotations

import typer
from rich.table import Table

from dunning.accounts.accounts import (
    AccountOptions,
    account_json,
    create_account,
    get_account,
    update_account,
)
from dunning.cases import integration
from dunning.cli.common import JsonOpt, console, err_console, print_json, session

app = typer.Typer(help="Accounts: the businesses whose customers are reminded.",
                  no_args_is_help=True)

CompanyOpt = typer.Option(None, "--company-name", help="Shown in every message.")
SenderOpt = typer.Option(None, "--sms-sender", help="The number SMS are sent from (E.164).")
FromOpt = typer.Option(None, "--email-from", help="Sender address of reminder emails.")
ContactOpt = typer.Option(None, "--contact-email", help="Where balance notices go.")
ScheduleOpt = typer.Option(None, "--schedule", help="Reminder offsets, e.g. 0d,3d,7d,14d.")
GraceOpt = typer.Option(None, "--grace", help="Wait after the last reminder, e.g. 7d.")
QuietOpt = typer.Option(
    None, "--quiet-hours", help="SMS sending window in the recipient's time, or 'off'."
)
TzOpt = typer.Option(None, "--timezone", help="Fallback IANA zone when a number's is unknown.")
SupportOpt = typer.Option(None, "--support-contact", help="Named in HELP replies and templates.")
LinkHostsOpt = typer.Option(
    None, "--billing-link-hosts",
    help="Hosts billing links may point at, e.g. pay.acme.com,*.acme.com ('any': no limit).",
)
LocaleOpt = typer.Option(
    None, "--locale", help="Default BCP 47 locale of customers without one (e.g. en, es, pt-BR)."
)
TrackOpt = typer.Option(
    None, "--track-links", metavar="on|off",
    help="Send {billing_link} as a tracked short link on DUNNING_PUBLIC_URL (default on).",
)


def _show(account_id: str, as_json: bool) -> None:
    with session() as s:
        account = get_account(s, account_id)
        data = {**account_json(s, account), **integration.settings_json(account)}
    if as_json:
        print_json(data)
        return
    table = Table(title=f"account {data['account_id']}", show_header=False)
    for key in ("company_name", "sms_sender", "email_from", "support_contact", "schedule",
                "grace", "quiet_hours", "timezone", "locale", "track_links", "sms_enabled",
                "credit_balance", "on_exhausted", "charge_on_card_update",
                "daily_message_limit"):
        table.add_row(key, str(data[key]))
    table.add_row("billing_link_hosts", ",".join(data["billing_link_hosts"]) or "any")
    if data["sms_holdout_percent"] is not None:
        table.add_row("sms_holdout", f"{data['sms_holdout_percent']}% of new cases email only")
    console.print(table)
    for warning in data["warnings"]:
        err_console.print(f"warning: {warning}", markup=False, highlight=False)


@app.command()
def create(
    account_id: str = typer.Argument(..., metavar="ACCOUNT"),
    company_name: str = typer.Option(..., "--company-name", help="Shown in every message."),
    sms_sender: str | None = SenderOpt,
    email_from: str | None = FromOpt,
    contact_email: str | None = ContactOpt,
    schedule: str | None = ScheduleOpt,
    grace: str | None = GraceOpt,
    quiet_hours: str | None = QuietOpt,
    timezone: str | None = TzOpt,
    support_contact: str | None = SupportOpt,
    billing_link_hosts: str | None = LinkHostsOpt,
    locale: str | None = LocaleOpt,
    track_links: str | None = TrackOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Create an account."""
    opts = AccountOptions(company_name, sms_sender, email_from, contact_email, schedule, grace,
                          quiet_hours, timezone, support_contact, billing_link_hosts,
                          locale, track_links)
    with session() as s:
        create_account(s, account_id, opts)
    _show(account_id, as_json)


@app.command()
def update(
    account_id: str = typer.Argument(..., metavar="ACCOUNT"),
    company_name: str | None = CompanyOpt,
    sms_sender: str | None = SenderOpt,
    email_from: str | None = FromOpt,
    contact_email: str | None = ContactOpt,
    schedule: str | None = ScheduleOpt,
    grace: str | None = GraceOpt,
    quiet_hours: str | None = QuietOpt,
    timezone: str | None = TzOpt,
    support_contact: str | None = SupportOpt,
    billing_link_hosts: str | None = LinkHostsOpt,
    locale: str | None = LocaleOpt,
    track_links: str | None = TrackOpt,
    on_exhausted: str | None = typer.Option(
        None, "--on-exhausted", help="When a case runs out: none, cancel-subscription, "
        "mark-uncollectible or pause-collection (through Stripe, once per case).",
    ),
    charge_on_card_update: str | None = typer.Option(
        None, "--charge-on-card-update",
        help="on|off: pay open invoices through Stripe as soon as the card changes.",
    ),
    daily_message_limit: int | None = typer.Option(
        None, "--daily-message-limit", help="Emails (and, apart, SMS) per day to one customer "
        "across their cases (default 1; 0: no limit).",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Change an account's settings; running cases use them from their next reminder on."""
    opts = AccountOptions(company_name, sms_sender, email_from, contact_email, schedule, grace,
                          quiet_hours, timezone, support_contact, billing_link_hosts,
                          locale, track_links)
    with session() as s:
        update_account(s, account_id, opts)
        integration.apply(s, account_id, on_exhausted, charge_on_card_update,
                          daily_message_limit)
    _show(account_id, as_json)


@app.command()
def show(account_id: str = typer.Argument(..., metavar="ACCOUNT"), as_json: bool = JsonOpt) -> None:
    """Show an account's settings and balance."""
    _show(account_id, as_json)
