"""12-factor settings: environment variables (and a `.env` file in the working directory).

The names are the public contract (see README's configuration table). Invalid values stop the
process at start with one line that names the variable (`SettingsError`).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the environment variable."""


def _alias(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    data_dir: Path = Field(Path("./.dunning"), validation_alias=_alias("DUNNING_DATA_DIR"))
    database_url: str = Field("", validation_alias=_alias("DUNNING_DATABASE_URL"))

    temporal_address: str = Field(
        "localhost:7233", validation_alias=_alias("DUNNING_TEMPORAL_ADDRESS")
    )
    temporal_namespace: str = Field(
        "default", validation_alias=_alias("DUNNING_TEMPORAL_NAMESPACE")
    )
    task_queue: str = Field("dunning", validation_alias=_alias("DUNNING_TASK_QUEUE"))

    sms_backend: Literal["console", "plivo"] = Field(
        "console", validation_alias=_alias("DUNNING_SMS_BACKEND")
    )
    plivo_auth_id: str = Field("", validation_alias=_alias("PLIVO_AUTH_ID"))
    plivo_auth_token: str = Field("", validation_alias=_alias("PLIVO_AUTH_TOKEN"))
    plivo_api_url: str = Field(
        "https://api.plivo.com", validation_alias=_alias("DUNNING_PLIVO_API_URL")
    )
    plivo_timeout: float = Field(10.0, validation_alias=_alias("DUNNING_PLIVO_TIMEOUT"))

    email_backend: Literal["console", "smtp"] = Field(
        "console", validation_alias=_alias("DUNNING_EMAIL_BACKEND")
    )
    smtp_host: str = Field("localhost", validation_alias=_alias("DUNNING_SMTP_HOST"))
    smtp_port: int = Field(25, validation_alias=_alias("DUNNING_SMTP_PORT"))
    smtp_username: str | None = Field(None, validation_alias=_alias("DUNNING_SMTP_USERNAME"))
    smtp_password: str | None = Field(None, validation_alias=_alias("DUNNING_SMTP_PASSWORD"))
    smtp_starttls: bool = Field(False, validation_alias=_alias("DUNNING_SMTP_STARTTLS"))
    smtp_timeout: float = Field(10.0, validation_alias=_alias("DUNNING_SMTP_TIMEOUT"))
    email_from: str = Field("billing@localhost", validation_alias=_alias("DUNNING_EMAIL_FROM"))

    http_host: str = Field("127.0.0.1", validation_alias=_alias("DUNNING_HTTP_HOST"))
    http_port: int = Field(8000, validation_alias=_alias("DUNNING_HTTP_PORT"))
    public_url: str = Field(
        "http://127.0.0.1:8000", validation_alias=_alias("DUNNING_PUBLIC_URL")
    )
    codec_keys: str = Field("", validation_alias=_alias("DUNNING_CODEC_KEYS"))

    # Engine tuning (not part of the contract's table, documented in README).
    activity_workers: int = Field(32, validation_alias=_alias("DUNNING_ACTIVITY_WORKERS"))
    # SMS sends per second across ALL workers (the SMS task queue's rate limit); 0 = no limit.
    sms_rate_limit: float = Field(5.0, ge=0, validation_alias=_alias("DUNNING_SMS_RATE_LIMIT"))
    metrics_address: str = Field("", validation_alias=_alias("DUNNING_METRICS_ADDRESS"))
    # Temporal's workflow sandbox: re-imports the workflow for every case and refuses
    # non-deterministic calls (clock, randomness, I/O) while it runs. On by default (safety
    # first); it costs about a quarter of a worker's CPU per case, so a deployment that has the
    # replay tests in CI may switch it off (`off`) for throughput.
    workflow_sandbox: bool = Field(True, validation_alias=_alias("DUNNING_WORKFLOW_SANDBOX"))
    # SIGTERM: a worker stops taking tasks and lets sends under way finish for this long; the
    # webhook server finishes the requests under way within it.
    shutdown_grace_seconds: float = Field(
        30.0, ge=0, validation_alias=_alias("DUNNING_SHUTDOWN_GRACE_SECONDS")
    )
    # Cases a worker keeps in memory between their steps. A case not in the cache is replayed
    # from its history when it wakes (a signal, a timer): with many cases waking at once (a
    # top-up serving 10,000 paused cases), a cache that holds them all saves those replays.
    max_cached_workflows: int = Field(
        1000, ge=0, validation_alias=_alias("DUNNING_MAX_CACHED_WORKFLOWS")
    )

    @field_validator("database_url")
    @classmethod
    def _check_db_url(cls, v: str) -> str:
        if v and not re.match(r"^[a-z][a-z0-9+]*://", v):
            raise ValueError("must be a SQLAlchemy URL such as postgresql+psycopg://user@host/db")
        return v

    @field_validator("plivo_api_url", "public_url")
    @classmethod
    def _check_http_url(cls, v: str) -> str:
        parsed = urlparse(v)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError("must be an http(s) URL such as https://example.com")
        return v.rstrip("/")

    @field_validator("temporal_address")
    @classmethod
    def _check_address(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9.\-_\[\]:]+:\d+$", v):
            raise ValueError("must be host:port, e.g. localhost:7233")
        return v

    @model_validator(mode="after")
    def _check_plivo(self) -> Settings:
        if self.sms_backend == "plivo":
            if not self.plivo_auth_id:
                raise ValueError("PLIVO_AUTH_ID: required when DUNNING_SMS_BACKEND=plivo")
            if not self.plivo_auth_token:
                raise ValueError("PLIVO_AUTH_TOKEN: required when DUNNING_SMS_BACKEND=plivo")
        return self

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'dunning.db'}"


_ENV_NAMES = {
    name: (field.validation_alias.choices[0] if isinstance(field.validation_alias, AliasChoices)
           else name)
    for name, field in Settings.model_fields.items()
}


def env_name(field: str) -> str:
    """The environment variable behind a settings field."""
    return str(_ENV_NAMES.get(field, field))


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise SettingsError with one clear line."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = str(err["loc"][0]) if err["loc"] else ""
        msg = str(err["msg"]).removeprefix("Value error, ")
        if ":" in msg and msg.split(":", 1)[0].isupper():
            raise SettingsError(f"invalid setting {msg}") from None
        var = env_name(loc) if loc in _ENV_NAMES else loc.upper()
        value = err.get("input")
        shown = f" (got {value!r})" if isinstance(value, str | int | float) and value != "" else ""
        raise SettingsError(f"invalid setting {var}: {msg}{shown}") from None
    if settings.codec_keys:
        from dunning.platform.codec import parse_keys

        parse_keys(settings.codec_keys)  # SettingsError naming DUNNING_CODEC_KEYS
    return settings


@functools.cache
def get_settings() -> Settings:
    return load_settings()


def reset_settings_cache() -> None:
    get_settings.cache_clear()


def ensure_data_dir(settings: Settings) -> Path:
    path = settings.data_dir
    path.mkdir(parents=True, exist_ok=True)
    return path


__all__ = [
    "Settings",
    "SettingsError",
    "ensure_data_dir",
    "env_name",
    "get_settings",
    "load_settings",
    "reset_settings_cache",
]
