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

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from dunning.errors import SettingsError as SettingsError  # re-exported (its old home)


def _alias(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


def split_list(text: str) -> list[str]:
    """`a, b,,c` -> ["a", "b", "c"] (comma-separated settings)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def is_loopback_host(host: str) -> bool:
    """`localhost`, 127.0.0.0/8 or ::1 (brackets allowed); anything else, including 0.0.0.0
    and other names, is not."""
    import ipaddress

    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    data_dir: Path = Field(Path("./.dunning"), validation_alias=_alias("DUNNING_DATA_DIR"))
    # May hold a password: never in repr, and errors show it masked (`mask_url`).
    database_url: str = Field("", repr=False, validation_alias=_alias("DUNNING_DATABASE_URL"))

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
    plivo_auth_token: SecretStr = Field(SecretStr(""), validation_alias=_alias("PLIVO_AUTH_TOKEN"))
    plivo_api_url: str = Field(
        "https://api.plivo.com", validation_alias=_alias("DUNNING_PLIVO_API_URL")
    )
    plivo_timeout: float = Field(10.0, validation_alias=_alias("DUNNING_PLIVO_TIMEOUT"))
    # Which Plivo webhook signatures are accepted: `v2,v3`, or `v3` (refuses V2-only requests;
    # a request with both is always checked against both).
    plivo_signatures: Literal["v2,v3", "v3"] = Field(
        "v2,v3", validation_alias=_alias("DUNNING_PLIVO_SIGNATURES")
    )

    email_backend: Literal["console", "smtp"] = Field(
        "console", validation_alias=_alias("DUNNING_EMAIL_BACKEND")
    )
    smtp_host: str = Field("localhost", validation_alias=_alias("DUNNING_SMTP_HOST"))
    smtp_port: int = Field(25, validation_alias=_alias("DUNNING_SMTP_PORT"))
    smtp_username: str | None = Field(None, validation_alias=_alias("DUNNING_SMTP_USERNAME"))
    smtp_password: SecretStr | None = Field(
        None, validation_alias=_alias("DUNNING_SMTP_PASSWORD")
    )
    smtp_starttls: bool = Field(False, validation_alias=_alias("DUNNING_SMTP_STARTTLS"))
    # Implicit TLS (SMTPS); unset: on for port 465.
    smtp_ssl: bool | None = Field(None, validation_alias=_alias("DUNNING_SMTP_SSL"))
    smtp_timeout: float = Field(10.0, validation_alias=_alias("DUNNING_SMTP_TIMEOUT"))
    email_from: str = Field("billing@localhost", validation_alias=_alias("DUNNING_EMAIL_FROM"))

    http_host: str = Field("127.0.0.1", validation_alias=_alias("DUNNING_HTTP_HOST"))
    http_port: int = Field(8000, validation_alias=_alias("DUNNING_HTTP_PORT"))
    # Webhook server: a request must arrive whole within this many seconds of its first byte;
    # at most this many connections and requests at once (more get 503).
    http_read_timeout: float = Field(
        10.0, gt=0, validation_alias=_alias("DUNNING_HTTP_READ_TIMEOUT")
    )
    http_max_connections: int = Field(
        100, ge=1, validation_alias=_alias("DUNNING_HTTP_MAX_CONNECTIONS")
    )
    # Warnings about refused webhook requests: at most this many a minute (the rest counted).
    http_refusal_logs_per_minute: int = Field(
        30, ge=1, validation_alias=_alias("DUNNING_HTTP_REFUSAL_LOGS_PER_MINUTE")
    )
    public_url: str = Field(
        "http://127.0.0.1:8000", validation_alias=_alias("DUNNING_PUBLIC_URL")
    )
    codec_keys: SecretStr = Field(SecretStr(""), validation_alias=_alias("DUNNING_CODEC_KEYS"))
    # Keys that encrypt secrets stored in the database (Stripe signing secrets), `id:hex,...`
    # like DUNNING_CODEC_KEYS; unset: a key generated under DUNNING_DATA_DIR (one machine only).
    secret_keys: SecretStr = Field(SecretStr(""), validation_alias=_alias("DUNNING_SECRET_KEYS"))

    # Auto-refill through Stripe (dunning.credits.gateways); the SDK's own name works too.
    stripe_api_key: SecretStr = Field(
        SecretStr(""),
        validation_alias=AliasChoices("DUNNING_STRIPE_API_KEY", "dunning_stripe_api_key",
                                      "STRIPE_API_KEY", "stripe_api_key"),
    )
    stripe_api_url: str = Field(
        "https://api.stripe.com", validation_alias=_alias("DUNNING_STRIPE_API_URL")
    )

    # Logs (dunning.platform.logs): level, and `json`, `text` or `auto` (text on a terminal).
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", validation_alias=_alias("DUNNING_LOG_LEVEL")
    )
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", validation_alias=_alias("DUNNING_LOG_FORMAT")
    )

    # The operator console and HTTP API (`dunning console`).
    console_host: str = Field("127.0.0.1", validation_alias=_alias("DUNNING_CONSOLE_HOST"))
    console_port: int = Field(8100, ge=1, le=65535,
                              validation_alias=_alias("DUNNING_CONSOLE_PORT"))
    # Signs the console's session cookies; empty: a key generated under DUNNING_DATA_DIR.
    console_secret: str = Field("", validation_alias=_alias("DUNNING_CONSOLE_SECRET"))
    # The Temporal Web UI the console links each case to.
    temporal_ui_url: str = Field(
        "http://localhost:8233", validation_alias=_alias("DUNNING_TEMPORAL_UI_URL")
    )

    # Engine tuning (not part of the contract's table, documented in README).
    activity_workers: int = Field(32, validation_alias=_alias("DUNNING_ACTIVITY_WORKERS"))
    # SMS sends per second across ALL workers (the SMS task queue's rate limit); 0 = no limit.
    sms_rate_limit: float = Field(5.0, ge=0, validation_alias=_alias("DUNNING_SMS_RATE_LIMIT"))
    metrics_address: str = Field("", validation_alias=_alias("DUNNING_METRICS_ADDRESS"))
    # How often the worker counts the cases paused for credits (the paused-cases gauge).
    metrics_sample_seconds: float = Field(
        15.0, gt=0, validation_alias=_alias("DUNNING_METRICS_SAMPLE_SECONDS")
    )
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

    @field_validator("plivo_signatures", mode="before")
    @classmethod
    def _normalize_schemes(cls, v: object) -> object:
        if isinstance(v, str):
            return ",".join(sorted({p.strip().lower() for p in v.split(",") if p.strip()}))
        return v

    # --- security: who may use the codec server, how Temporal is reached (SECURITY.md) ---
    # The codec server's address (`dunning codec-server`; `--host/--port` override). Without
    # authentication it serves loopback addresses only.
    codec_host: str = Field("127.0.0.1", validation_alias=_alias("DUNNING_CODEC_HOST"))
    codec_port: int = Field(8081, ge=1, le=65535, validation_alias=_alias("DUNNING_CODEC_PORT"))
    # Static bearer token for the CLI and scripts (`temporal ... --codec-auth "Bearer <token>"`).
    codec_auth_token: SecretStr = Field(
        SecretStr(""), validation_alias=_alias("DUNNING_CODEC_AUTH_TOKEN")
    )
    # JWT access tokens forwarded by the Temporal UI: verified against this JWKS.
    codec_jwks_url: str = Field("", validation_alias=_alias("DUNNING_CODEC_JWKS_URL"))
    codec_jwt_audience: str = Field("", validation_alias=_alias("DUNNING_CODEC_JWT_AUDIENCE"))
    codec_jwt_issuer: str = Field("", validation_alias=_alias("DUNNING_CODEC_JWT_ISSUER"))
    # Comma-separated `sub` or `email` claims allowed to use it; empty: any valid token.
    codec_allowed_subjects: str = Field(
        "", validation_alias=_alias("DUNNING_CODEC_ALLOWED_SUBJECTS")
    )
    # Comma-separated namespaces it serves (the `X-Namespace` header); others get 403.
    codec_namespaces: str = Field("default", validation_alias=_alias("DUNNING_CODEC_NAMESPACES"))
    # Largest request body; a bigger one is refused (413) while it is being read.
    codec_max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, validation_alias=_alias("DUNNING_CODEC_MAX_BODY_BYTES")
    )
    # TLS to the Temporal frontend: unset = on when a CA, client certificate, server name or
    # API key is given; `off` with any of those is refused.
    temporal_tls: bool | None = Field(None, validation_alias=_alias("DUNNING_TEMPORAL_TLS"))
    temporal_tls_ca: Path | None = Field(None, validation_alias=_alias("DUNNING_TEMPORAL_TLS_CA"))
    temporal_tls_cert: Path | None = Field(
        None, validation_alias=_alias("DUNNING_TEMPORAL_TLS_CERT")
    )
    temporal_tls_key: Path | None = Field(
        None, validation_alias=_alias("DUNNING_TEMPORAL_TLS_KEY")
    )
    temporal_tls_server_name: str = Field(
        "", validation_alias=_alias("DUNNING_TEMPORAL_TLS_SERVER_NAME")
    )
    # Sent as `authorization: Bearer <key>` (Temporal Cloud API keys); implies TLS.
    temporal_api_key: SecretStr = Field(
        SecretStr(""), validation_alias=_alias("DUNNING_TEMPORAL_API_KEY")
    )

    @field_validator("codec_jwks_url")
    @classmethod
    def _check_jwks_url(cls, v: str) -> str:
        v = v.strip()
        if v:
            parsed = urlparse(v)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ValueError("must be an https URL such as https://idp.example.com/jwks")
            if parsed.scheme == "http" and not is_loopback_host(parsed.hostname):
                raise ValueError("must be https (http only for a loopback host)")
        return v

    @field_validator("codec_namespaces")
    @classmethod
    def _check_codec_namespaces(cls, v: str) -> str:
        if not split_list(v):
            raise ValueError("name at least one namespace, e.g. default")
        return v

    @field_validator("temporal_tls_ca", "temporal_tls_cert", "temporal_tls_key")
    @classmethod
    def _check_tls_file(cls, v: Path | None) -> Path | None:
        if v is None or str(v) == "" or str(v) == ".":
            return None
        if not v.is_file():
            raise ValueError(f"no such file: {v}")
        return v

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        if self.codec_jwks_url and not (self.codec_jwt_audience and self.codec_jwt_issuer):
            raise ValueError(
                "DUNNING_CODEC_JWT_AUDIENCE: DUNNING_CODEC_JWKS_URL needs both "
                "DUNNING_CODEC_JWT_AUDIENCE and DUNNING_CODEC_JWT_ISSUER (tokens for other "
                "applications of the same identity provider must not pass)"
            )
        if (self.temporal_tls_cert is None) != (self.temporal_tls_key is None):
            missing = "KEY" if self.temporal_tls_key is None else "CERT"
            raise ValueError(
                f"DUNNING_TEMPORAL_TLS_{missing}: a client certificate needs both "
                "DUNNING_TEMPORAL_TLS_CERT and DUNNING_TEMPORAL_TLS_KEY"
            )
        if self.temporal_tls is False:
            given = [env for env, value in (
                ("DUNNING_TEMPORAL_TLS_CA", self.temporal_tls_ca),
                ("DUNNING_TEMPORAL_TLS_CERT", self.temporal_tls_cert),
                ("DUNNING_TEMPORAL_TLS_SERVER_NAME", self.temporal_tls_server_name),
            ) if value]
            if given:
                raise ValueError(
                    f"DUNNING_TEMPORAL_TLS: is off but {given[0]} is set; switch TLS on or "
                    "remove it"
                )
        return self

    @property
    def temporal_tls_enabled(self) -> bool:
        """Whether connections to Temporal use TLS (see `temporal_tls`)."""
        if self.temporal_tls is not None:
            return self.temporal_tls
        return bool(
            self.temporal_tls_ca or self.temporal_tls_cert or self.temporal_tls_server_name
            or self.temporal_api_key.get_secret_value()
        )

    @property
    def codec_auth_configured(self) -> bool:
        """Whether the codec server authenticates its callers (a token or JWTs)."""
        return bool(self.codec_auth_token.get_secret_value() or self.codec_jwks_url)
    # --- end of security settings ---
    # Outbound events (dunning.events): the receiver's answer timeout, how often the worker
    # looks for new deliveries, the longest wait between retries, and how long an endpoint may
    # keep failing before it is disabled.
    events_timeout: float = Field(10.0, gt=0, validation_alias=_alias("DUNNING_EVENTS_TIMEOUT"))
    events_poll_seconds: float = Field(
        2.0, gt=0, validation_alias=_alias("DUNNING_EVENTS_POLL_SECONDS")
    )
    events_max_backoff_seconds: int = Field(
        3600, ge=1, validation_alias=_alias("DUNNING_EVENTS_MAX_BACKOFF_SECONDS")
    )
    events_give_up_seconds: int = Field(
        3 * 86400, ge=60, validation_alias=_alias("DUNNING_EVENTS_GIVE_UP_SECONDS")
    )


    @field_validator("database_url")
    @classmethod
    def _check_db_url(cls, v: str) -> str:
        if not v:
            return v
        if not re.match(r"^[a-z][a-z0-9+]*://", v):
            raise ValueError(
                f"{mask_url(v)!r} is not a SQLAlchemy URL such as "
                "postgresql+psycopg://user@host/db"
            )
        from sqlalchemy.engine import make_url

        try:
            make_url(v)
        except Exception:  # the driver's message may quote the URL: never shown
            raise ValueError(
                f"{mask_url(v)!r} is not a valid SQLAlchemy URL (check the port and the "
                "escaping of special characters in the password)"
            ) from None
        return v

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _any_case(cls, v: object, info: ValidationInfo) -> object:
        if not isinstance(v, str):
            return v
        v = v.strip() or ("INFO" if info.field_name == "log_level" else "auto")
        return v.upper() if info.field_name == "log_level" else v.lower()

    @field_validator("plivo_api_url", "public_url", "stripe_api_url", "temporal_ui_url")
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

    @field_validator("console_secret")
    @classmethod
    def _check_console_secret(cls, v: str) -> str:
        if v and len(v) < 32:
            raise ValueError("must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        return v

    @model_validator(mode="after")
    def _check_plivo(self) -> Settings:
        if self.sms_backend == "plivo":
            if not self.plivo_auth_id:
                raise ValueError("PLIVO_AUTH_ID: required when DUNNING_SMS_BACKEND=plivo")
            if not self.plivo_auth_token.get_secret_value():
                raise ValueError("PLIVO_AUTH_TOKEN: required when DUNNING_SMS_BACKEND=plivo")
        return self

    @model_validator(mode="after")
    def _check_smtp(self) -> Settings:
        if self.smtp_ssl and self.smtp_starttls:
            raise ValueError(
                "DUNNING_SMTP_SSL: implicit TLS and DUNNING_SMTP_STARTTLS exclude each other"
            )
        if (self.email_backend == "smtp" and self.smtp_username and not self.smtp_starttls
                and not self.smtp_implicit_tls):
            from dunning.domain.contract import is_loopback_host

            if not is_loopback_host(self.smtp_host):
                raise ValueError(
                    "DUNNING_SMTP_STARTTLS: refusing to log in to "
                    f"{self.smtp_host} over plain text; set DUNNING_SMTP_STARTTLS=true, or "
                    "DUNNING_SMTP_SSL=true (implicit TLS, port 465)"
                )
        return self

    @property
    def smtp_implicit_tls(self) -> bool:
        """TLS from the first byte: DUNNING_SMTP_SSL, by default on for port 465."""
        return self.smtp_port == 465 if self.smtp_ssl is None else self.smtp_ssl

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


# Settings that are secrets (SecretStr): never echoed in errors, never in repr.
_SECRET_FIELDS = {
    name for name, field in Settings.model_fields.items()
    if field.annotation in (SecretStr, SecretStr | None)
}
_URL_PASSWORD_RE = re.compile(r"(?<=[:/])([^:/@\s]*):[^\s]*@")


def mask_url(url: str) -> str:
    """`url` with the password (user:PASSWORD@) replaced by ***."""
    return _URL_PASSWORD_RE.sub(r"\1:***@", url, count=1)


def secret_value(secret: SecretStr | None) -> str:
    """The plain value of a secret setting ('' when unset)."""
    return secret.get_secret_value() if secret is not None else ""


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
        if loc in _SECRET_FIELDS or loc == "database_url" or re.search(
            r"SECRET|PASSWORD|TOKEN|_KEYS?$", var
        ):
            shown = ""  # secrets are never echoed; the URL's validator shows it masked
        raise SettingsError(f"invalid setting {var}: {msg}{shown}") from None
    if settings.codec_keys.get_secret_value():
        from dunning.platform.codec import parse_keys

        parse_keys(settings.codec_keys.get_secret_value())  # SettingsError naming the setting
    if settings.secret_keys.get_secret_value():
        from dunning.platform.codec import parse_keys

        parse_keys(settings.secret_keys.get_secret_value(),
                   source="invalid setting DUNNING_SECRET_KEYS")
    return settings


@functools.cache
def get_settings() -> Settings:
    return load_settings()


def reset_settings_cache() -> None:
    get_settings.cache_clear()


def ensure_data_dir(settings: Settings) -> Path:
    """The data directory, private to this user (0700)."""
    from dunning.platform.files import private_dir

    return private_dir(settings.data_dir)


__all__ = [
    "Settings",
    "SettingsError",
    "ensure_data_dir",
    "env_name",
    "get_settings",
    "is_loopback_host",
    "load_settings",
    "mask_url",
    "reset_settings_cache",
    "secret_value",
    "split_list",
]
