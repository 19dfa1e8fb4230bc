"""Console users, passwords, sessions and lock-out.

- Passwords: argon2id (argon2-cffi); never stored or logged in clear.
- Sessions: a random token in a signed cookie (HMAC-SHA256 with the console secret); the table
  keeps only the token's SHA-256, with the session's CSRF token and its expiry.
- Lock-out: `MAX_FAILED_LOGINS` wrong passwords in a row lock the user for `LOCKOUT`; a
  successful sign-in resets the count.
- Roles: `admin` and `operator` may change things; `viewer` only reads.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from dunning.console import audit
from dunning.domain.contract import InputError
from dunning.platform.db.models import Account, ConsoleSession, ConsoleUser, utcnow
from dunning.platform.settings import Settings, ensure_data_dir

ROLES: Final = ("admin", "operator", "viewer")
MAX_FAILED_LOGINS: Final = 5
LOCKOUT: Final = timedelta(minutes=15)
SESSION_TTL: Final = timedelta(hours=12)
MIN_PASSWORD: Final = 10
MAX_PASSWORD: Final = 1024
_EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")

_hasher = PasswordHasher()
# Verifying against this keeps an unknown email as slow as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Identity:
    """Who is signed in (or which API key calls): what they may see and do."""

    account_id: str
    role: str
    actor: str  # for the audit log: user:<email> or api-key:<id>
    user_id: int | None = None
    csrf_token: str = ""

    @property
    def can_change(self) -> bool:
        return self.role in ("admin", "operator")


# --- users -----------------------------------------------------------------------------------


def normalize_email(email: str) -> str:
    value = email.strip().lower()
    if len(value) > 320 or not _EMAIL_RE.match(value):
        raise InputError("email", f"{email!r} is not an email address")
    return value


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise InputError("password", f"must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise InputError("password", f"must be at most {MAX_PASSWORD} characters")
    return password


def add_user(session: Session, email: str, account_id: str, role: str, password: str,
             *, actor: str = "cli") -> ConsoleUser:
    """Create a user, or reset the password and role of an existing one of the same account."""
    address = normalize_email(email)
    if role not in ROLES:
        raise InputError("role", f"{role!r} is not one of {', '.join(ROLES)}")
    if session.get(Account, account_id) is None:
        raise InputError("account", f"unknown account {account_id!r}")
    check_password(password)
    user = session.scalar(select(ConsoleUser).where(ConsoleUser.email == address))
    if user is not None and user.account_id != account_id:
        raise InputError("email", f"{address} is a user of another account already")
    hashed = _hasher.hash(password)
    if user is None:
        user = ConsoleUser(email=address, account_id=account_id, role=role,
                           password_hash=hashed, failed_logins=0)
        session.add(user)
        action = "user.created"
    else:
        user.role, user.password_hash = role, hashed
        user.failed_logins, user.locked_until = 0, None
        session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == user.id))
        action = "user.updated"
    session.flush()
    audit.record(session, account_id, actor, action, user=address, role=role)
    return user


LOCKED_MESSAGE = "Too many failed sign-ins: this user is locked for a while. Try again later."
WRONG_MESSAGE = "Wrong email or password."


@dataclass(frozen=True)
class SignIn:
    """The outcome of a sign-in attempt: the user, or a message that is safe to show."""

    user: ConsoleUser | None
    error: str | None = None


def authenticate(session: Session, email: str, password: str,
                 now: datetime | None = None) -> SignIn:
    """Check a password. Failures are counted in the caller's transaction, which must commit
    them (nothing is raised), and MAX_FAILED_LOGINS in a row lock the user for LOCKOUT."""
    moment = now or utcnow()
    address = email.strip().lower()
    user = session.scalar(
        select(ConsoleUser).where(ConsoleUser.email == address).with_for_update()
    )
    if user is None:
        try:
            _hasher.verify(_DUMMY_HASH, password[:MAX_PASSWORD])
        except VerificationError:
            pass
        return SignIn(None, WRONG_MESSAGE)
    if user.locked_until is not None and _utc(user.locked_until) > moment:
        return SignIn(None, LOCKED_MESSAGE)
    try:
        _hasher.verify(user.password_hash, password[:MAX_PASSWORD])
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        user.failed_logins = (user.failed_logins or 0) + 1
        if user.failed_logins >= MAX_FAILED_LOGINS:
            user.locked_until = moment + LOCKOUT
            user.failed_logins = 0
            audit.record(session, user.account_id, f"user:{user.email}", "user.locked",
                         minutes=int(LOCKOUT.total_seconds() // 60))
            return SignIn(None, LOCKED_MESSAGE)
        return SignIn(None, WRONG_MESSAGE)
    user.failed_logins, user.locked_until = 0, None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return SignIn(user)


# --- sessions --------------------------------------------------------------------------------


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class CookieSigner:
    """`token.signature` cookies: HMAC-SHA256 of the token with the console secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def sign(self, token: str) -> str:
        mac = hmac.new(self._secret, token.encode(), hashlib.sha256).hexdigest()
        return f"{token}.{mac}"

    def unsign(self, value: str) -> str | None:
        token, _, mac = value.partition(".")
        if not token or not mac or len(value) > 200:
            return None
        expected = hmac.new(self._secret, token.encode(), hashlib.sha256).hexdigest()
        return token if hmac.compare_digest(mac, expected) else None


def console_secret(settings: Settings) -> bytes:
    """DUNNING_CONSOLE_SECRET, or a key generated once under DUNNING_DATA_DIR (mode 0600)."""
    if settings.console_secret:
        return settings.console_secret.encode()
    path = Path(ensure_data_dir(settings)) / "console-secret"
    if not path.exists():
        fd = path.open("x", encoding="ascii")
        path.chmod(0o600)
        with fd:
            fd.write(secrets.token_hex(32))
    return path.read_text(encoding="ascii").strip().encode()


def start_session(session: Session, user: ConsoleUser, now: datetime | None = None) -> str:
    """A new session for `user`; returns the token (for the signed cookie)."""
    moment = now or utcnow()
    token = secrets.token_urlsafe(32)
    session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at < moment))
    session.add(ConsoleSession(token_hash=_sha256(token), user_id=user.id,
                               csrf_token=secrets.token_urlsafe(32),
                               created_at=moment, expires_at=moment + SESSION_TTL))
    return token


def identity_for_session(session: Session, token: str,
                         now: datetime | None = None) -> Identity | None:
    row = session.get(ConsoleSession, _sha256(token))
    if row is None or _utc(row.expires_at) <= (now or utcnow()):
        return None
    user = session.get(ConsoleUser, row.user_id)
    if user is None:
        return None
    return Identity(user.account_id, user.role, f"user:{user.email}", user.id, row.csrf_token)


def end_session(session: Session, token: str) -> None:
    session.execute(delete(ConsoleSession).where(ConsoleSession.token_hash == _sha256(token)))
