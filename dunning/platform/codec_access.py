"""Who may use the codec server: a static bearer token, JWT access tokens, namespaces.

The codec server decrypts every payload it is sent, so it admits a request only when:

1. the caller is authenticated, by either
   - `Authorization: Bearer <DUNNING_CODEC_AUTH_TOKEN>` (constant-time compare; for the
     `temporal` CLI's `--codec-auth "Bearer <token>"` and scripts), or
   - `Authorization: Bearer <JWT>`: an access token the Temporal UI forwards
     (`TEMPORAL_CODEC_PASS_ACCESS_TOKEN=true`), verified against the identity provider's JWKS
     (`DUNNING_CODEC_JWKS_URL`, fetched once and cached), with `exp`, `aud`
     (`DUNNING_CODEC_JWT_AUDIENCE`) and `iss` (`DUNNING_CODEC_JWT_ISSUER`) checked and, when
     `DUNNING_CODEC_ALLOWED_SUBJECTS` is set, its `sub` or (verified) `email` on that list;
   - or no authentication is configured at all, which the server allows on loopback only;
2. its `X-Namespace` is one of `DUNNING_CODEC_NAMESPACES`.

Refusals carry a generic message (`Refusal.public`) for the caller and a specific one
(`Refusal.reason`) for the server's log: a caller who is not let in learns nothing about
tokens, keys or namespaces.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from jwt import PyJWKClient

from dunning.platform.settings import Settings, split_list

log = logging.getLogger("dunning.codec_server")

# Asymmetric algorithms only: a JWKS publishes public keys; HMAC and "none" are never accepted.
JWT_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)
JWKS_CACHE_SECONDS = 300.0
# At most one JWKS re-fetch per this many seconds for tokens naming an unknown key id, so
# forged tokens cannot make the server hammer the identity provider.
JWKS_REFRESH_COOLDOWN = 30.0
JWT_LEEWAY_SECONDS = 30
JWKS_RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class Caller:
    """Who is calling: `who` is what the access log shows (never a token)."""

    who: str
    authenticated: bool


class Refusal(Exception):
    """A request that is not let in: `status` and `public` go to the caller, `reason` to the
    log only."""

    def __init__(self, status: int, public: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.public = public
        self.reason = reason


UNAUTHORIZED = "unauthorized"
FORBIDDEN = "forbidden"


def _unauthorized(reason: str) -> Refusal:
    return Refusal(401, UNAUTHORIZED, reason)


class JwtVerifier:
    """Verifies JWT access tokens against a JWKS (cached), audience and issuer."""

    def __init__(
        self, jwks_url: str, *, audience: str, issuer: str, timeout: float = 5.0,
        cache_seconds: float = JWKS_CACHE_SECONDS,
        refresh_cooldown: float = JWKS_REFRESH_COOLDOWN,
    ) -> None:
        self.audience = audience
        self.issuer = issuer
        self._down_until = 0.0
        self._jwks = PyJWKClient(
            jwks_url, cache_jwk_set=True, lifespan=cache_seconds, timeout=timeout,
            cooldown_duration=refresh_cooldown,
        )

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims; raises jwt.PyJWTError when it is not valid (blocking: the JWKS
        may be fetched). After a failed fetch, calls fail fast for JWKS_RETRY_SECONDS instead of
        each waiting on an unreachable identity provider."""
        if time.monotonic() < self._down_until:
            raise jwt.PyJWKClientConnectionError("JWKS unreachable (retrying shortly)")
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError:
            self._down_until = time.monotonic() + JWKS_RETRY_SECONDS
            raise
        claims: dict[str, Any] = jwt.decode(
            token, key=key, algorithms=list(JWT_ALGORITHMS), audience=self.audience,
            issuer=self.issuer, leeway=JWT_LEEWAY_SECONDS,
            options={"require": ["exp", "iss", "aud"], "verify_signature": True},
        )
        return claims


def _looks_like_jwt(token: str) -> bool:
    parts = token.split(".")
    return len(parts) == 3 and all(parts[:2])


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _printable(text: str, limit: int = 64) -> str:
    """Caller-supplied text made safe for one log line."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")


class CodecGate:
    """Admits or refuses codec requests (see the module docstring)."""

    def __init__(
        self,
        *,
        token: str = "",
        verifier: JwtVerifier | None = None,
        allowed_subjects: Sequence[str] = (),
        namespaces: Sequence[str] = ("default",),
    ) -> None:
        self._token = token.encode() if token else None
        self._verifier = verifier
        self._subjects = {s.strip() for s in allowed_subjects if s.strip()}
        self._emails = {s.lower() for s in self._subjects if "@" in s}
        self.namespaces = tuple(n.strip() for n in namespaces if n.strip())

    @classmethod
    def from_settings(cls, settings: Settings, *, token: str | None = None) -> CodecGate:
        verifier = None
        if settings.codec_jwks_url:
            verifier = JwtVerifier(
                settings.codec_jwks_url, audience=settings.codec_jwt_audience,
                issuer=settings.codec_jwt_issuer,
            )
        return cls(
            token=token if token is not None else settings.codec_auth_token.get_secret_value(),
            verifier=verifier,
            allowed_subjects=split_list(settings.codec_allowed_subjects),
            namespaces=split_list(settings.codec_namespaces),
        )

    @property
    def requires_auth(self) -> bool:
        return self._token is not None or self._verifier is not None

    @property
    def methods(self) -> list[str]:
        """What it accepts, for the start-up line: `token`, `jwt`, or `none`."""
        found = [name for name, on in (("token", self._token), ("jwt", self._verifier)) if on]
        return found or ["none"]

    async def authenticate(self, authorization: str | None) -> Caller:
        """The caller behind an Authorization header; raises Refusal (401/403/503)."""
        if not self.requires_auth:
            return Caller("anonymous", authenticated=False)
        token = _bearer(authorization)
        if token is None:
            raise _unauthorized("no bearer token")
        if self._token is not None and hmac.compare_digest(token.encode(), self._token):
            return Caller("token", authenticated=True)
        if self._verifier is None:
            raise _unauthorized("wrong bearer token")
        if not _looks_like_jwt(token):
            raise _unauthorized("wrong bearer token (not a JWT)")
        try:
            claims = await asyncio.to_thread(self._verifier.verify, token)
        except jwt.PyJWKClientConnectionError as exc:
            raise Refusal(503, "authentication is unavailable, try again later",
                          f"JWKS unreachable: {_printable(str(exc), 200)}") from None
        except jwt.PyJWTError as exc:
            raise _unauthorized(f"JWT refused: {type(exc).__name__}: "
                                f"{_printable(str(exc), 120)}") from None
        return self._admit_subject(claims)

    def _admit_subject(self, claims: Mapping[str, Any]) -> Caller:
        sub = str(claims.get("sub") or "")
        email = claims.get("email")
        who = f"jwt:{_printable(sub) or '?'}"
        if not self._subjects:
            return Caller(who, authenticated=True)
        if sub and sub in self._subjects:
            return Caller(who, authenticated=True)
        if (isinstance(email, str) and email.lower() in self._emails
                and claims.get("email_verified") is not False):
            return Caller(who, authenticated=True)
        raise Refusal(403, FORBIDDEN, f"subject {who} is not in DUNNING_CODEC_ALLOWED_SUBJECTS")

    def check_namespace(self, namespace: str | None, caller: Caller) -> str:
        """The namespace, if this server serves it; else Refusal(403)."""
        if not namespace:
            raise Refusal(403, "X-Namespace header required" if caller.authenticated
                          else FORBIDDEN, "no X-Namespace header")
        if namespace not in self.namespaces:
            shown = _printable(namespace)
            raise Refusal(
                403,
                f"namespace {shown!r} is not served here" if caller.authenticated else FORBIDDEN,
                f"namespace {shown!r} is not in DUNNING_CODEC_NAMESPACES",
            )
        return namespace


class RefusalLog:
    """Logs refused requests, at most `per_minute` lines a minute (then one summary), so a
    flood of forged requests cannot flood the log."""

    def __init__(self, logger: logging.Logger, per_minute: int = 30) -> None:
        self._log = logger
        self._per_minute = per_minute
        self._window = 0.0
        self._count = 0
        self._dropped = 0

    def refused(self, fields: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self._window >= 60:
            if self._dropped:
                self._log.warning("codec requests refused without a log line in the last "
                                  "minute: %d", self._dropped, extra={"dropped": self._dropped})
            self._window, self._count, self._dropped = now, 0, 0
        self._count += 1
        if self._count > self._per_minute:
            self._dropped += 1
            return
        self._log.warning("codec %s refused (%s): %s", fields.get("op"), fields.get("status"),
                          fields.get("reason"), extra=fields)


__all__ = [
    "FORBIDDEN",
    "JWT_ALGORITHMS",
    "UNAUTHORIZED",
    "Caller",
    "CodecGate",
    "JwtVerifier",
    "Refusal",
    "RefusalLog",
]
