"""Secrets at rest: what the engine stores for others (Stripe endpoint signing secrets) is
encrypted with AES-256-GCM under a key from the environment, so a copy of the database (a
backup, a readable SQLite file) does not hand out the means to forge billing events.

Keys work like the payload codec's (`dunning.platform.codec`): `DUNNING_SECRET_KEYS=id:hex,...`
(64 hex characters per key); the first encrypts, every key decrypts, so rotation is "put a new
key in front, run `dunning stripe reseal`, then drop the old key". Without the setting a key is
generated on first use in `$DUNNING_DATA_DIR/secrets.key` (0600), enough for one machine;
several machines (PostgreSQL) must share DUNNING_SECRET_KEYS.

Stored form: `enc:v1:<key id>:<base64url(nonce + ciphertext + tag)>`, with the row's context
(e.g. `stripe:<account id>`) as associated data: a sealed value copied to another account's row
does not open. A value without the prefix is a plaintext one stored before encryption existed:
it is still read, and `dunning stripe reseal` encrypts it.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dunning.platform.codec import CodecKey, parse_keys
from dunning.platform.files import private_dir
from dunning.platform.settings import Settings, SettingsError, secret_value

PREFIX = "enc:v1:"
SETTING = "DUNNING_SECRET_KEYS"
KEY_FILE_NAME = "secrets.key"
NONCE_SIZE = 12


class SecretUnreadable(Exception):
    """A stored secret cannot be decrypted with the configured keys (its key id is named; the
    key itself never is)."""


class SecretBox:
    """Seals and opens stored secrets. `keys` may be a loader, called at the first seal or
    open of a sealed value (so a process that only meets legacy values creates no key file)."""

    def __init__(self, keys: Sequence[CodecKey] | Callable[[], Sequence[CodecKey]]) -> None:
        self._loader = keys if callable(keys) else (lambda: keys)
        self._loaded: dict[str, AESGCM] | None = None
        self._first = ""

    @property
    def _keys(self) -> dict[str, AESGCM]:
        if self._loaded is None:
            keys = list(self._loader())
            if not keys:
                raise SettingsError(f"invalid setting {SETTING}: no keys")
            self._loaded = {k.key_id: AESGCM(k.key) for k in keys}
            self._first = keys[0].key_id
        return self._loaded

    @property
    def _current(self) -> str:
        _ = self._keys
        return self._first

    @staticmethod
    def is_sealed(stored: str | None) -> bool:
        return bool(stored) and str(stored).startswith(PREFIX)

    def seal(self, plaintext: str, *, context: str) -> str:
        nonce = secrets.token_bytes(NONCE_SIZE)
        data = self._keys[self._current].encrypt(nonce, plaintext.encode(), context.encode())
        token = base64.urlsafe_b64encode(nonce + data).decode("ascii").rstrip("=")
        return f"{PREFIX}{self._current}:{token}"

    def open(self, stored: str | None, *, context: str) -> str | None:
        """The plaintext of a stored value (a legacy plaintext value as it is); None for None."""
        if not stored:
            return None
        if not stored.startswith(PREFIX):
            return stored
        key_id, _, token = stored[len(PREFIX):].partition(":")
        aead = self._keys.get(key_id)
        if aead is None:
            raise SecretUnreadable(
                f"a stored secret was encrypted with key {key_id!r}, which is not in {SETTING}"
            )
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            plain = aead.decrypt(raw[:NONCE_SIZE], raw[NONCE_SIZE:], context.encode())
        except (InvalidTag, ValueError):
            raise SecretUnreadable(
                f"a stored secret does not decrypt with key {key_id!r} (damaged, or moved "
                "from another row)"
            ) from None
        return plain.decode()


def _load_or_create_key(path: Path) -> CodecKey:
    """The key kept at `path` (0600), generated atomically on first use."""
    if not path.exists():
        private_dir(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{KEY_FILE_NAME}.", dir=path.parent)  # 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(CodecKey.generate().line() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # fails if another process got there first
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"cannot read the secrets key file {path} ({exc}); set {SETTING}"
                            ) from None
    keys = parse_keys(text, source=f"invalid secrets key file {path} (or set {SETTING})")
    return keys[0]


def secret_box_for(settings: Settings) -> SecretBox:
    """The box for DUNNING_SECRET_KEYS, else for the generated key under DUNNING_DATA_DIR."""
    text = secret_value(settings.secret_keys)
    if text.strip():
        return SecretBox(parse_keys(text, source=f"invalid setting {SETTING}"))
    path = settings.data_dir / KEY_FILE_NAME
    return SecretBox(lambda: [_load_or_create_key(path)])


def stripe_context(account_id: str) -> str:
    return f"stripe:{account_id}"


__all__ = ["SecretBox", "SecretUnreadable", "secret_box_for", "stripe_context"]
