"""The `dunning` command. Each group of commands lives in a module of its own."""

from __future__ import annotations

import sys

import click
import typer
from rich.markup import escape
from typer._click import exceptions as typer_click  # typer vendors its own click

from dunning.cli import (
    accounts,
    cases,
    credits,
    doctor,
    email,
    experiment,
    phones,
    server,
    sms,
    stripe,
)
from dunning.cli import campaigns as campaigns_cli
from dunning.cli import console as console_cli
from dunning.cli import customers as customers_cli
from dunning.cli import events as events_cli
from dunning.cli import report as report_cli
from dunning.cli.common import Invocation, UserError, err_console
from dunning.errors import InputError, SettingsError

app = typer.Typer(
    name="dunning",
    help="Durable payment reminders by email and SMS, on Temporal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(accounts.app, name="account")
app.add_typer(phones.app, name="phones")
app.add_typer(sms.app, name="sms")
app.add_typer(email.app, name="email")
app.add_typer(credits.app, name="credits")
app.add_typer(stripe.app, name="stripe")
app.add_typer(experiment.app, name="experiment")
app.add_typer(events_cli.endpoints_app, name="endpoints")
app.add_typer(events_cli.events_app, name="events")
app.add_typer(campaigns_cli.app, name="campaign")
app.add_typer(customers_cli.app, name="customer")
cases.register(app)
app.command("report")(report_cli.report)
server.register(app)
doctor.register(app)
console_cli.register(app)


def main(argv: list[str] | None = None, *, invocation: Invocation | None = None) -> None:
    """Entry point: user mistakes exit 1 with one line on stderr, usage errors exit 2.
    `invocation`: the run's collaborators (default: built from the settings on first use)."""
    try:
        with invocation or Invocation():  # settings, database, follow-ups; closed at the end
            returned = app(args=argv, standalone_mode=False)
        if isinstance(returned, int) and returned:  # Ctrl-C (130) or typer.Exit(n)
            sys.exit(returned)
    except (UserError, InputError, SettingsError) as exc:
        err_console.print(
            f"[red]error:[/red] {escape(str(exc))}", highlight=False, markup=True, soft_wrap=True
        )
        sys.exit(1)
    except (click.exceptions.Exit, typer.Exit) as exc:
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, typer.Abort):
        err_console.print("aborted")
        sys.exit(130)
    except (click.ClickException, typer_click.ClickException) as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


def entry() -> None:
    """The `dunning` console script: `main`, then a hard exit with its status.

    The Temporal SDK's native runtime can abort the interpreter at shutdown ("Fatal Python error:
    PyGILState_Release", sdk-python #300) after all work succeeded, turning a success into exit
    134. Output is flushed and the process ends with the command's own status instead.
    """
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        import logging
        import os

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
