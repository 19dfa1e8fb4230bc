"""`dunning email ...` (email templates)."""

import typer

app = typer.Typer(help="Email templates per step and plan.", no_args_is_help=True)
