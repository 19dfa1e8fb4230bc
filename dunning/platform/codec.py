"""Payload conversion: everything the engine hands to Temporal is encrypted (AES-256-GCM).

Customer emails, phone numbers and names travel in workflow arguments, activity inputs, signals
and results; Temporal stores all of them in its history. `EncryptionCodec` encrypts each payload
before it leaves the process, so the Temporal server (and its database, and anyone reading raw
history) only ever sees ciphertext. Failure messages and stack traces are moved into an encoded
payload too (`DefaultFailureConverterWithEncodedAttributes`), because exception texts can carry
PII as well. Workflow ids and search attributes are never encoded by Temporal: keep PII out of
them (the domain layer does).

Keys: `DUNNING_CODEC_KEYS=id:hex,id:hex...` (64 hex characters = 32 bytes each). The first key
encrypts; every key decrypts, so rotation is "put a new key in front, keep the old ones until
no open history needs them". Without the setting, one key is generated on first use and kept in
`$DUNNING_DATA_DIR/codec.key` (mode 0600), which is enough for a single machine (`dunning up`).
Several machines or containers must share `DUNNING_CODEC_KEYS`.

Wire format (the same as Temporal's encryption samples, so their codec servers interoperate):
metadata `encoding=binary/encrypted`, `encryption-key-id=<id>`; data = 12-byte nonce followed
by the AES-GCM ciphertext and tag of the serialized inner `Payload`. Payloads that are not
encrypted (plain JSON from the `temporal` CLI or another SDK) pass through decode unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

from dunning.errors import SettingsError

log = logging.getLogger("dunning.codec")

ENCODING = b"binary/encrypted"
METADATA_ENCODING = "encoding"
METADATA_KEY_ID = "encryption-key-id"
KEY_FILE_NAME = "codec.key"
SETTING = "DUNNING_CODEC_KEYS"
NONCE_SIZE = 12
KEY_SIZE = 32

_KEY_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]*$")


class CodecError(Exception):
    """A payload could not be decrypted."""


class UnknownKeyError(CodecError):
    """A payload names a key id that is not configured."""

    def __init__(self, key_id: str, known: Sequence[str]) -> None:
        super().__init__(
            f"payload was encrypted with codec key {key_id!r}, which is not configured "
            f"(known: {', '.join(known)}); add that key to {SETTING} to read it"
        )
        self.key_id = key_id


@dataclass(frozen=True)
class CodecKey:
    key_id: str
    key: bytes = field(repr=False)

    def line(self) -> str:
        return f"{self.key_id}:{self.key.hex()}"

    @classmethod
    def generate(cls, key_id: str | None = None) -> CodecKey:
        return cls(key_id or f"k{secrets.token_hex(4)}", secrets.token_bytes(KEY_SIZE))


def parse_keys(text: str, *, source: str = f"invalid setting {SETTING}") -> list[CodecKey]:
    """Parse `id:hex,id:hex...`. Errors raise SettingsError("<source>: ...") and never echo
    key material."""

    def fail(message: str) -> SettingsError:
        return SettingsError(f"{source}: {message}")

    entries = [e.strip() for e in text.split(",")]
    while entries and not entries[-1]:
        entries.pop()  # tolerate a trailing comma
    if not entries:
        raise fail("no keys given; expected id:hex,id:hex... (64 hex characters per key)")
    keys: list[CodecKey] = []
    seen: set[str] = set()
    for number, entry in enumerate(entries, start=1):
        key_id, sep, hex_key = entry.partition(":")
        key_id, hex_key = key_id.strip(), hex_key.strip()
        if not sep or not key_id:
            raise fail(f"entry {number} is not id:hex (expected id:hex,id:hex...)")
        if not _KEY_ID_RE.match(key_id):
            raise fail(
                f"key id {key_id[:64]!r} (entry {number}) may hold only letters, digits "
                "and _ . - (at most 64 characters)"
            )
        if key_id in seen:
            raise fail(f"key id {key_id!r} appears twice")
        if len(hex_key) != 2 * KEY_SIZE or not _HEX_RE.match(hex_key):
            raise fail(
                f"key {key_id!r} must be {2 * KEY_SIZE} hex characters (a 32-byte AES-256 "
                f"key), got {len(hex_key)} characters"
                + ("" if _HEX_RE.match(hex_key) else " including non-hex ones")
            )
        seen.add(key_id)
        keys.append(CodecKey(key_id, bytes.fromhex(hex_key)))
    return keys


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over whole payloads; the first key encrypts, all keys decrypt."""

    def __init__(self, keys: Sequence[CodecKey]) -> None:
        if not keys:
            raise ValueError("EncryptionCodec needs at least one key")
        ids = [k.key_id for k in keys]
        if len(set(ids)) != len(ids):
            raise ValueError("EncryptionCodec key ids must be unique")
        self._key_id = keys[0].key_id
        self._key_id_bytes = self._key_id.encode()
        self._ciphers = {k.key_id: AESGCM(k.key) for k in keys}

    @property
    def encrypting_key_id(self) -> str:
        return self._key_id

    @property
    def key_ids(self) -> list[str]:
        return list(self._ciphers)

    def encrypt_payload(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_SIZE)
        sealed = self._ciphers[self._key_id].encrypt(nonce, payload.SerializeToString(), None)
        return Payload(
            metadata={METADATA_ENCODING: ENCODING, METADATA_KEY_ID: self._key_id_bytes},
            data=nonce + sealed,
        )

    def decrypt_payload(self, payload: Payload) -> Payload:
        if payload.metadata.get(METADATA_ENCODING) != ENCODING:
            return payload
        key_id = payload.metadata.get(METADATA_KEY_ID, b"").decode("utf-8", "replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise UnknownKeyError(key_id, self.key_ids)
        data = payload.data
        if len(data) < NONCE_SIZE + 16:
            raise CodecError(f"encrypted payload (key {key_id!r}) is truncated")
        try:
            plain = cipher.decrypt(data[:NONCE_SIZE], data[NONCE_SIZE:], None)
        except InvalidTag:
            raise CodecError(
                f"encrypted payload failed authentication with codec key {key_id!r}: "
                "the key is wrong or the payload was altered"
            ) from None
        return Payload.FromString(plain)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt_payload(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt_payload(p) for p in payloads]


# --- the generated default key ---------------------------------------------------------------


def key_file_path(data_dir: Path) -> Path:
    return data_dir / KEY_FILE_NAME


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _create_exclusive(path: Path, content: str) -> None:
    """Fallback where hard links are unsupported: O_EXCL create (readers wait for the newline)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def _create_key_file(path: Path) -> None:
    """Publish a new key at `path` unless one exists. Atomic: the key is written and synced to
    a private temporary file, then hard-linked into place, which fails if another process got
    there first; every process then reads whatever won."""
    path.parent.mkdir(parents=True, exist_ok=True)
    content = CodecKey.generate().line() + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{KEY_FILE_NAME}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:
            _create_exclusive(path, content)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(path.parent)


def _is_fresh(path: Path, seconds: float = 5.0) -> bool:
    """Just written (maybe still being written)? A hand-made file without a final newline is
    old and read at once."""
    try:
        return time.time() - path.stat().st_mtime < seconds
    except OSError:
        return False


def load_or_create_key_file(path: Path, *, wait_seconds: float = 5.0) -> CodecKey:
    """The key kept at `path`, generated on first use (safe when processes race)."""
    deadline = time.monotonic() + wait_seconds
    created = 0
    while True:
        try:
            text = path.read_text(encoding="ascii")
        except FileNotFoundError:
            if created >= 3:
                raise SettingsError(
                    f"invalid codec key file {path}: it vanishes after being created; "
                    f"set {SETTING} instead"
                ) from None
            created += 1
            try:
                _create_key_file(path)
            except OSError as exc:
                raise SettingsError(
                    f"cannot create the codec key file {path} ({exc}); check DUNNING_DATA_DIR "
                    f"or set {SETTING}"
                ) from None
            continue
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(
                f"invalid codec key file {path}: cannot read it ({exc}); fix it or set {SETTING}"
            ) from None
        if not text.endswith("\n") and time.monotonic() < deadline and _is_fresh(path):
            time.sleep(0.02)  # only the O_EXCL fallback can expose a half-written file
            continue
        keys = parse_keys(
            text, source=f"invalid codec key file {path} (or set {SETTING} instead)"
        )
        if len(keys) != 1:
            raise SettingsError(
                f"invalid codec key file {path}: expected one id:hex line; put several keys "
                f"in {SETTING} instead"
            )
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("codec key file %s is readable by others (mode %o); chmod 600 it",
                        path, mode)
        return keys[0]


class KeySource(Protocol):
    """Where the keys come from: the text of DUNNING_CODEC_KEYS (plain, or a secret with
    `get_secret_value()` such as pydantic's SecretStr) and DUNNING_DATA_DIR (the settings have
    both; the codec does not depend on the settings module)."""

    @property
    def codec_keys(self) -> Any: ...

    @property
    def data_dir(self) -> Path: ...


def _keys_text(value: Any) -> str:
    reveal = getattr(value, "get_secret_value", None)
    return str(reveal() if callable(reveal) else (value or ""))


def load_keys(keys_text: str, data_dir: Path) -> list[CodecKey]:
    """Keys from `keys_text` (DUNNING_CODEC_KEYS), else the generated key under `data_dir`."""
    if keys_text.strip():
        return parse_keys(keys_text)
    return [load_or_create_key_file(key_file_path(data_dir))]


def keys_for(source: KeySource) -> list[CodecKey]:
    """The configured keys of `source` (settings): DUNNING_CODEC_KEYS, else the key file."""
    return load_keys(_keys_text(source.codec_keys), source.data_dir)


def codec_for(source: KeySource) -> EncryptionCodec:
    return EncryptionCodec(keys_for(source))


def converter_for(source: KeySource) -> DataConverter:
    """The default converter with the encrypting codec, failures (message and stack trace)
    encoded too."""
    return dataclasses.replace(
        DataConverter.default,
        payload_codec=codec_for(source),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


__all__ = [
    "ENCODING",
    "KEY_FILE_NAME",
    "METADATA_KEY_ID",
    "CodecError",
    "CodecKey",
    "EncryptionCodec",
    "KeySource",
    "UnknownKeyError",
    "codec_for",
    "converter_for",
    "key_file_path",
    "keys_for",
    "load_keys",
    "load_or_create_key_file",
    "parse_keys",
]
