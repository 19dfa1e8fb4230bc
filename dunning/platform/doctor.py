"""`dunning doctor`: what in this configuration would be unsafe in production.

It reads the settings (environment and `.env`) and the files they point at, changes nothing and
needs neither Temporal nor the database. Each finding names the check, says what is wrong and
how to fix it. Problems make `dunning doctor` exit 1; notes are advice and do not.

Checks: the settings load at all (e.g. Plivo credentials with the plivo backend); the codec
server would not listen beyond loopback without authentication; Temporal is not reached in
plain text beyond loopback (nor an API key sent in the clear); the data directory, the SQLite
files and the codec key file are private to their owner; the public webhook URL is https; SMTP
does not log in over plain text beyond loopback.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from dunning.platform.settings import (
    Settings,
    SettingsError,
    is_loopback_host,
    load_settings,
    split_list,
)

Severity = Literal["problem", "note"]
KEY_FILE_NAME = "codec.key"  # dunning.platform.codec.KEY_FILE_NAME (not imported: no key loading)


@dataclass(frozen=True)
class Finding:
    check: str
    severity: Severity
    message: str

    def as_json(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Report:
    findings: list[Finding]
    checked: list[str]

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "problem"]

    @property
    def notes(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "note"]

    @property
    def is_clean(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, object]:
        return {
            "ok": self.is_clean,
            "problems": [f.as_json() for f in self.problems],
            "notes": [f.as_json() for f in self.notes],
            "checked": self.checked,
        }


def _text(value: object) -> str:
    """A setting's text, whether it is a plain or a secret (SecretStr) field."""
    reveal = getattr(value, "get_secret_value", None)
    return str(reveal() if callable(reveal) else (value or ""))


def _problem(check: str, message: str) -> Finding:
    return Finding(check, "problem", message)


def _note(check: str, message: str) -> Finding:
    return Finding(check, "note", message)


# --- the checks ------------------------------------------------------------------------------


def check_codec_server(s: Settings) -> list[Finding]:
    found: list[Finding] = []
    if not s.codec_auth_configured and not is_loopback_host(s.codec_host):
        found.append(_problem(
            "codec-server",
            f"DUNNING_CODEC_HOST={s.codec_host} is not a loopback address and the codec server "
            "has no authentication: anyone who reaches it could decrypt payloads (it refuses to "
            "start so); set DUNNING_CODEC_AUTH_TOKEN and/or DUNNING_CODEC_JWKS_URL",
        ))
    token = s.codec_auth_token.get_secret_value()
    if token and len(token) < 24:
        found.append(_problem(
            "codec-server",
            f"DUNNING_CODEC_AUTH_TOKEN is short ({len(token)} characters): use at least 24 "
            "random characters, e.g. "
            "python -c \"import secrets; print(secrets.token_urlsafe(32))\"",
        ))
    if s.codec_jwks_url and not split_list(s.codec_allowed_subjects):
        found.append(_note(
            "codec-server",
            "DUNNING_CODEC_ALLOWED_SUBJECTS is empty: every user with a valid token for "
            f"audience {s.codec_jwt_audience!r} may decrypt payloads; list who may",
        ))
    return found


def check_temporal(s: Settings) -> list[Finding]:
    host = s.temporal_address.rpartition(":")[0]
    found: list[Finding] = []
    if not s.temporal_tls_enabled and not is_loopback_host(host):
        found.append(_problem(
            "temporal-tls",
            f"DUNNING_TEMPORAL_ADDRESS={s.temporal_address} is reached in plain text: set "
            "DUNNING_TEMPORAL_TLS=on (with DUNNING_TEMPORAL_TLS_CA, and DUNNING_TEMPORAL_TLS_CERT/"
            "_KEY for mTLS, or DUNNING_TEMPORAL_API_KEY)",
        ))
    if not is_loopback_host(host) and not _text(s.codec_keys).strip():
        found.append(_note(
            "temporal-tls",
            "DUNNING_CODEC_KEYS is not set: each machine generates its own payload key under "
            "DUNNING_DATA_DIR, and workers on other machines could not read its payloads; set "
            "the same keys everywhere",
        ))
    if s.temporal_api_key.get_secret_value() and not s.temporal_tls_enabled:
        found.append(_problem(
            "temporal-tls",
            "DUNNING_TEMPORAL_API_KEY is set but DUNNING_TEMPORAL_TLS=off: the key would travel "
            "in plain text; switch TLS on",
        ))
    return found


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None


def _private(path: Path, what: str, want: int, check: str) -> list[Finding]:
    mode = _mode(path)
    if mode is None or not mode & 0o077:
        return []
    return [_problem(
        check,
        f"{what} {path} is open to other users (mode {mode:o}): chmod {want:o} {path}",
    )]


def _sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite"):
        return None
    _, _, rest = url.partition(":///")
    rest = rest.split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    return Path(rest)


def check_files(s: Settings) -> list[Finding]:
    found = _private(s.data_dir, "the data directory (DUNNING_DATA_DIR)", 0o700, "data-dir")
    found += _private(s.data_dir / KEY_FILE_NAME, "the codec key file", 0o600, "data-dir")
    db_file = _sqlite_path(s.effective_database_url)
    if db_file is not None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            path = db_file.with_name(db_file.name + suffix)
            found += _private(path, "the SQLite file", 0o600, "sqlite")
        if db_file.parent.resolve() != s.data_dir.resolve():
            found += _private(db_file.parent, "the SQLite directory", 0o700, "sqlite")
    return found


def check_public_url(s: Settings) -> list[Finding]:
    parsed = urlparse(s.public_url)
    if parsed.scheme == "https" or is_loopback_host(parsed.hostname or ""):
        return []
    return [_problem(
        "public-url",
        f"DUNNING_PUBLIC_URL={s.public_url} is not https: providers would post messages, "
        "phone numbers and signatures in the clear; put TLS in front and use https://",
    )]


def check_smtp(s: Settings) -> list[Finding]:
    if s.email_backend != "smtp" or not s.smtp_username or s.smtp_starttls:
        return []
    if s.smtp_port == 465 or is_loopback_host(s.smtp_host):
        return []
    return [_problem(
        "smtp",
        f"SMTP logs in to {s.smtp_host}:{s.smtp_port} without TLS: set "
        "DUNNING_SMTP_STARTTLS=true or use port 465",
    )]


CHECKS: dict[str, Callable[[Settings], list[Finding]]] = {
    "codec-server": check_codec_server,
    "temporal-tls": check_temporal,
    "files": check_files,
    "public-url": check_public_url,
    "smtp": check_smtp,
}


# Every check id a finding may carry.
CHECKED = ["settings", "plivo", "codec-server", "temporal-tls", "data-dir", "sqlite",
           "public-url", "smtp"]


def examine(settings: Settings) -> Report:
    findings: list[Finding] = []
    for check in CHECKS.values():
        findings += check(settings)
    return Report(findings, CHECKED)


def examine_environment() -> Report:
    """Load the settings as every command does; a setting that stops the engine is a problem."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        check = "plivo" if "PLIVO_" in str(exc) else "settings"
        return Report([_problem(check, str(exc))], ["settings", "plivo"])
    return examine(settings)


__all__ = ["CHECKS", "Finding", "Report", "examine", "examine_environment"]
