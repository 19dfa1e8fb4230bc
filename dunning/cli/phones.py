"""`dunning phones ...` (import phone numbers)."""

import typer

app = typer.Typer(help="Import and inspect customers' phone numbers.", no_args_is_help=True)
