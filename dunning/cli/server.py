"""Case commands (start, recover, cancel, status)."""

import typer


def register(app: typer.Typer) -> None:
    return None
