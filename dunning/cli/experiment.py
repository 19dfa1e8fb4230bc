"""`dunning experiment sms-holdout --account A --percent P | --off` and
`dunning experiment sms-template --account A --percent P --template TEXT | --off`."""

from __future__ import annotations

import typer

from dunning.cases.experiments import set_sms_ab_test, set_sms_holdout
from dunning.cli.common import JsonOpt, fail, print_json, session

app = typer.Typer(help="Experiments: measure what SMS adds to recovery.", no_args_is_help=True)


@app.command("sms-holdout")
def sms_holdout(
    account: str = typer.Option(..., "--account", help="The account id."),
    percent: int | None = typer.Option(
        None, "--percent", min=1, max=50,
        help="Share of NEW cases (1-50) that get email only, to measure the SMS lift.",
    ),
    off: bool = typer.Option(False, "--off", help="Stop holding new cases out of SMS."),
    as_json: bool = JsonOpt,
) -> None:
    """Hold a deterministic share of new cases out of SMS (email only), or stop doing so.
    Cases keep the arm they were given; `dunning report` compares the arms."""
    if (percent is None) == (not off):
        fail("give either --percent P or --off")
    with session() as s:
        data = set_sms_holdout(s, account, None if off else percent)
    if as_json:
        print_json(data)
    elif data["sms_holdout_percent"] is None:
        typer.echo(f"SMS holdout off for {account}: new cases get SMS as configured.")
    else:
        typer.echo(f"SMS holdout on for {account}: {data['sms_holdout_percent']}% of new cases "
                   "get email only. See `dunning report` for the lift.")


@app.command("sms-template")
def sms_template(
    account: str = typer.Option(..., "--account", help="The account id."),
    template: str | None = typer.Option(
        None, "--template", help="Template B, e.g. '{company_name}: {amount} is due: "
        "{billing_link}' (validated like any SMS template)."),
    percent: int | None = typer.Option(
        None, "--percent", min=1, max=99, help="Share of NEW cases (1-99) that get template B."),
    off: bool = typer.Option(False, "--off", help="Stop the A/B test."),
    as_json: bool = JsonOpt,
) -> None:
    """A/B test two SMS templates: a deterministic share of new cases gets template B, the
    others their usual template (A). `dunning report` compares them."""
    if (percent is None) == (not off):
        fail("give either --percent P --template TEXT or --off")
    with session() as s:
        data = set_sms_ab_test(s, account, template, None if off else percent)
    if as_json:
        print_json(data)
    elif data["sms_ab_percent"] is None:
        typer.echo(f"SMS template A/B test off for {account}.")
    else:
        typer.echo(f"SMS template A/B test on for {account}: {data['sms_ab_percent']}% of new "
                   "cases get template B. See `dunning report` for the comparison.")
