"""Secrets at rest: the secret box, Settings that never show a secret, database URLs masked
in errors, private data directories and SQLite files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dunning.platform.codec import CodecKey
from dunning.platform.db import Database
from dunning.platform.secret_box import SecretBox, SecretUnreadable, secret_box_for
from dunning.platform.settings import Settings, SettingsError, ensure_data_dir, load_settings


def test_secret_box_round_trip_context_rotation_and_legacy() -> None:
    old, new = CodecKey("old", b"\x01" * 32), CodecKey("new", b"\x02" * 32)
    box = SecretBox([old])
    sealed = box.seal("whsec_abc", context="stripe:acme")
    assert sealed.startswith("enc:v1:old:") and "whsec_abc" not in sealed
    assert box.seal("whsec_abc", context="stripe:acme") != sealed  # fresh nonce
    assert box.open(sealed, context="stripe:acme") == "whsec_abc"
    with pytest.raises(SecretUnreadable, match="another row"):
        box.open(sealed, context="stripe:evil")  # copied to another account's row
    rotated = SecretBox([new, old])
    assert rotated.open(sealed, context="stripe:acme") == "whsec_abc"
    assert rotated.seal("x", context="c").startswith("enc:v1:new:")
    with pytest.raises(SecretUnreadable, match="'old'") as err:
        SecretBox([new]).open(sealed, context="stripe:acme")
    assert "01" * 8 not in str(err.value)
    assert box.open("whsec_legacy", context="stripe:acme") == "whsec_legacy"
    assert box.open(None, context="x") is None


def test_secret_box_key_from_the_environment_or_a_private_file(tmp_path: Path) -> None:
    cfg = Settings(data_dir=tmp_path / "d", secret_keys="k1:" + "ab" * 32, _env_file=None)
    assert secret_box_for(cfg).seal("s", context="c").startswith("enc:v1:k1:")
    assert not (tmp_path / "d").exists()
    generated = secret_box_for(Settings(data_dir=tmp_path / "d", _env_file=None))
    assert not (tmp_path / "d").exists()  # nothing created until a key is needed
    sealed = generated.seal("s", context="c")
    key_file = tmp_path / "d" / "secrets.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o700
    again = secret_box_for(Settings(data_dir=tmp_path / "d", _env_file=None))
    assert again.open(sealed, context="c") == "s"
    with pytest.raises(SettingsError, match="DUNNING_SECRET_KEYS"):
        load_settings(secret_keys="k1:nothex", _env_file=None)


def test_repr_of_settings_shows_no_secret() -> None:
    cfg = Settings(plivo_auth_token="plivo-tok-123", smtp_password="smtp-pw-456",
                   codec_keys="k1:" + "cd" * 32, secret_keys="k2:" + "ef" * 32,
                   database_url="postgresql+psycopg://app:db-pw-789@db/dunning", _env_file=None)
    for text in (repr(cfg), str(cfg)):
        for secret in ("plivo-tok-123", "smtp-pw-456", "cdcdcd", "efefef", "db-pw-789"):
            assert secret not in text


@pytest.mark.parametrize("url", [
    "postgresql+psycopg://app:db-pw-789@db:notaport/dunning",
    "postgres ql://app:db-pw-789@db/dunning",
    "postgresql+psycopg//app:db-pw-789@db/dunning",
])
def test_a_malformed_database_url_is_never_echoed_with_its_password(url: str) -> None:
    with pytest.raises(SettingsError, match="DUNNING_DATABASE_URL") as err:
        load_settings(database_url=url, _env_file=None)
    assert "db-pw-789" not in str(err.value) and "app:***@db" in str(err.value)


def test_secrets_are_never_echoed_in_setting_errors() -> None:
    with pytest.raises(SettingsError, match="PLIVO_AUTH_TOKEN") as err:
        load_settings(plivo_auth_token=["tok-in-a-list"], _env_file=None)
    assert "tok-in-a-list" not in str(err.value)


def test_data_dir_and_sqlite_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)  # a typical umask: files would be 644, directories 755
    try:
        cfg = Settings(data_dir=tmp_path / "fresh" / "data", _env_file=None)
        data = ensure_data_dir(cfg)
        db = Database(cfg.effective_database_url)
        db.upgrade()  # alembic creates the schema through the same engine
        with db.session() as s:
            s.execute(__import__("sqlalchemy").text("SELECT 1"))
        db.dispose()
        # A database in a directory that does not exist yet (created by the engine).
        other = Database(f"sqlite:///{tmp_path / 'elsewhere' / 'x.db'}")
        other.upgrade()
        other.dispose()
    finally:
        os.umask(old)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = [p for p in data.iterdir() if p.name.startswith("dunning.db")]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), [
        (p.name, oct(p.stat().st_mode)) for p in files]
    assert stat.S_IMODE((tmp_path / "elsewhere").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "elsewhere" / "x.db").stat().st_mode) == 0o600


def test_an_existing_open_data_dir_is_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    (data / "dunning.db").touch()
    os.chmod(data / "dunning.db", 0o644)
    cfg = Settings(data_dir=data, _env_file=None)
    ensure_data_dir(cfg)
    Database(cfg.effective_database_url).dispose()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "dunning.db").stat().st_mode) == 0o600


def test_the_dev_server_database_is_kept_private(tmp_path: Path) -> None:
    """The dev server creates its own file (an empty file made for it beforehand reads as a
    database without tables, and the server does not start): its directory is 0700, and an
    existing file open to others is tightened."""
    from dunning.platform.temporal import dev_server_command

    cfg = Settings(data_dir=tmp_path / "dev", _env_file=None)
    cmd = dev_server_command(cfg)
    db_file = Path(cmd[cmd.index("--db-filename") + 1])
    assert not db_file.exists()  # left for the server to create
    assert stat.S_IMODE(db_file.parent.stat().st_mode) == 0o700
    db_file.write_bytes(b"")
    os.chmod(db_file, 0o644)
    dev_server_command(cfg)
    assert stat.S_IMODE(db_file.stat().st_mode) == 0o600


def test_alembic_on_its_own_creates_a_private_sqlite_file(tmp_path: Path) -> None:
    from alembic import command

    from dunning.platform.db.engine import alembic_config

    old = os.umask(0o022)
    try:
        url = f"sqlite:///{tmp_path / 'new' / 'alembic.db'}"
        command.upgrade(alembic_config(url), "head")  # no connection handed over: env.py's
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new" / "alembic.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
