"""`dunning sms ...` (SMS switches, templates, preview)."""

import typer

app = typer.Typer(help="SMS settings: switches per step, templates, preview.", no_args_is_help=True)
