"""`dunning credits ...`."""

import typer

app = typer.Typer(help="SMS credits: balance, top-ups, auto-refill, ledger, rates.",
                  no_args_is_help=True)
