"""`dunning doctor [--json]`: warns about an insecure production configuration."""

from __future__ import annotations

import typer
from rich.markup import escape

from dunning.cli.common import JsonOpt, console, print_json


def doctor(as_json: bool = JsonOpt) -> None:
    """Check this configuration for what would be unsafe in production (codec server without
    auth beyond loopback, plain-text Temporal, files open to other users, http public URL, ...).
    Exit 0 when clean, 1 when it found problems. Changes nothing."""
    from dunning.platform.doctor import examine_environment

    report = examine_environment()
    if as_json:
        print_json(report.as_json())
    else:
        for finding in report.findings:
            label = ("[red]problem[/red]" if finding.severity == "problem"
                     else "[yellow]note[/yellow]")
            console.print(f"{label} {finding.check}: {escape(finding.message)}", highlight=False,
                          markup=True, soft_wrap=True)
        if report.is_clean:
            console.print(f"ok: no problems found ({', '.join(report.checked)} checked)",
                          highlight=False)
        else:
            console.print(f"{len(report.problems)} problem(s) found", highlight=False)
    if not report.is_clean:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(doctor)
