"""`dunning experiment sms-holdout --account A --percent P | --off`."""

from __future__ import annotations

import typer

from dunning.cases.experiments import set_sms_holdout
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
