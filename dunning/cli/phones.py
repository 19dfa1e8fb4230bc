"""`dunning phones import|check`: load customers' phone numbers from CSV, check one number."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from dunning.accounts.accounts import get_account
from dunning.cli.common import JsonOpt, console, fail, print_json, session
from dunning.customers.importer import (
    MAX_KEPT_ERRORS,
    ImportReport,
    PhoneChecker,
    auto_workers,
    import_file,
)
from dunning.customers.importer import Progress as ProgressCallback
from dunning.domain.phones import PhoneError, validate_phone

app = typer.Typer(help="Import and inspect customers' phone numbers.", no_args_is_help=True)

SHOWN_ERRORS = 50


@contextmanager
def _progress_bar(enabled: bool, label: str) -> Iterator[ProgressCallback | None]:
    """A transient Rich bar over the bytes read, or None when output is not a terminal."""
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        yield update


def _print_report(report: ImportReport, path: Path, account: str) -> None:
    summary = Text.assemble(
        ("imported ", ""), (f"{report.imported:,}", "bold green"),
        (", updated ", ""), (f"{report.updated:,}", "bold cyan"),
        (", unchanged ", ""), (f"{report.unchanged:,}", "bold"),
        (", rejected ", ""), (f"{report.rejected:,}", "bold red" if report.rejected else "bold"),
        (f"  ({report.rows:,} rows of {path.name} into account {account})", "dim"),
    )
    console.print(summary, soft_wrap=True)
    if not report.errors:
        return
    table = Table(title=f"rejected rows ({report.rejected:,})", title_justify="left")
    table.add_column("line", justify="right")
    table.add_column("customer_id")
    table.add_column("phone")
    table.add_column("reason")
    for err in report.errors[:SHOWN_ERRORS]:
        table.add_row(str(err.line), Text(err.customer_id), Text(err.phone), Text(err.reason))
    console.print(table)
    if report.rejected > SHOWN_ERRORS:
        console.print(
            f"... and {report.rejected - SHOWN_ERRORS:,} more; --json lists up to "
            f"{MAX_KEPT_ERRORS:,}.",
            style="dim",
        )


@app.command("import")
def import_(
    file: Path = typer.Argument(
        ..., metavar="FILE", help="CSV with a header: customer_id, phone [, email, name, plan, "
        "country, locale]; comma, semicolon or tab separated, UTF-8."
    ),
    account: str = typer.Option(..., "--account", help="The account the customers belong to."),
    default_region: str | None = typer.Option(
        None, "--default-region",
        help="ISO 3166 code (e.g. US) for numbers without + and without a country cell.",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Import customers' phone numbers from a CSV file.

    Every number must be valid and able to receive SMS; other rows are rejected with their line
    and a reason and never stored. Empty optional cells keep stored values. A file that cannot
    be read as such a CSV changes nothing (exit status 1).
    """
    try:
        size = file.stat().st_size
    except OSError:
        size = 0  # import_file reports it
    try:
        with (
            PhoneChecker(auto_workers(size)) as checker,  # first: workers fork before threads
            _progress_bar(not as_json and console.is_terminal, "importing") as progress,
            session() as s,
        ):
            get_account(s, account)
            report = import_file(
                s, account, file, default_region=default_region, progress=progress,
                checker=checker,
            )
    except BrokenProcessPool:
        fail("a worker process checking numbers died (out of memory?); nothing was stored")
    if as_json:
        print_json(report.as_json())
    else:
        _print_report(report, file, account)


@app.command("check")
def check(
    number: str = typer.Argument(..., metavar="NUMBER", help="A phone number, e.g. +447400123456."),
    region: str | None = typer.Option(
        None, "--region", help="ISO 3166 code (e.g. GB) for a number written without +."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Check one number as the import would; exit 1 with the reason if SMS can't reach it."""
    try:
        info = validate_phone(number, region)
    except PhoneError as exc:
        if exc.code == "no_region":
            fail(f"{number}: no country: write it with + and its country code, or give --region")
        fail(f"{number}: {exc.reason}")
    data = {
        "e164": info.e164,
        "region": info.region,
        "type": info.number_type,
        "time_zones": list(info.time_zones),
    }
    if as_json:
        print_json(data)
        return
    table = Table(show_header=False)
    for key, value in data.items():
        table.add_row(key, Text(", ".join(value) if isinstance(value, list) else str(value)))
    console.print(table)
