"""`dunning doctor`: each insecure production setting is found, a clean one passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dunning.platform.doctor import examine
from dunning.platform.settings import Settings

DUNNING = str(Path(sys.executable).parent / "dunning")


def private_data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir(mode=0o700, parents=True)
    data.chmod(0o700)
    db = data / "dunning.db"
    db.write_bytes(b"")
    db.chmod(0o600)
    return data


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"data_dir": private_data_dir(tmp_path)}
    values.update(overrides)
    return Settings(_env_file=None, **values)


def checks_of(s: Settings) -> set[str]:
    return {f.check for f in examine(s).problems}


def test_a_private_local_setup_is_clean(tmp_path: Path) -> None:
    report = examine(settings(tmp_path))
    assert report.is_clean and report.problems == []
    assert {"codec-server", "temporal-tls", "data-dir", "sqlite", "public-url"} <= set(
        report.checked)


def test_codec_server_without_auth_beyond_loopback(tmp_path: Path) -> None:
    assert checks_of(settings(tmp_path, codec_host="0.0.0.0")) == {"codec-server"}
    token = "t" * 40
    assert checks_of(settings(tmp_path / "b", codec_host="0.0.0.0",
                              codec_auth_token=token)) == set()
    assert checks_of(settings(tmp_path / "c", codec_auth_token="short")) == {"codec-server"}
    jwt_only = examine(settings(tmp_path / "d", codec_host="10.0.0.4",
                                codec_jwks_url="https://idp.test/jwks",
                                codec_jwt_audience="ui", codec_jwt_issuer="https://idp.test/"))
    assert jwt_only.is_clean and [n.check for n in jwt_only.notes] == ["codec-server"]


@pytest.mark.parametrize("address", ["temporal.internal:7233", "10.0.0.9:7233",
                                     "ns.tmprl.cloud:7233"])
def test_plain_text_temporal_beyond_loopback(tmp_path: Path, address: str) -> None:
    report = examine(settings(tmp_path, temporal_address=address))
    assert [p.check for p in report.problems] == ["temporal-tls"]
    assert address in report.problems[0].message
    assert any("DUNNING_CODEC_KEYS" in n.message for n in report.notes)  # keys per machine
    shared = examine(settings(tmp_path / "keys", temporal_address=address, temporal_tls=True,
                              codec_keys="k1:" + "ab" * 32))
    assert shared.is_clean and shared.notes == []
    assert checks_of(settings(tmp_path / "tls", temporal_address=address,
                              temporal_tls=True)) == set()
    assert checks_of(settings(tmp_path / "key", temporal_address=address,
                              temporal_api_key="k" * 30)) == set()  # implies TLS


def test_api_key_without_tls(tmp_path: Path) -> None:
    s = settings(tmp_path, temporal_api_key="k" * 30, temporal_tls=False)
    report = examine(s)
    assert checks_of(s) == {"temporal-tls"}
    assert "k" * 30 not in json.dumps(report.as_json())


def test_files_open_to_other_users(tmp_path: Path) -> None:
    s = settings(tmp_path)
    s.data_dir.chmod(0o755)
    (s.data_dir / "dunning.db").chmod(0o644)
    wal = s.data_dir / "dunning.db-wal"
    wal.write_bytes(b"")
    wal.chmod(0o644)
    key = s.data_dir / "codec.key"
    key.write_text("k1:" + "0" * 64 + "\n")
    key.chmod(0o640)
    problems = examine(s).problems
    assert {p.check for p in problems} == {"data-dir", "sqlite"}
    text = " ".join(p.message for p in problems)
    assert "mode 755" in text and "dunning.db " in text and "dunning.db-wal" in text
    assert "codec.key" in text and "chmod 600" in text and "chmod 700" in text
    s.data_dir.chmod(0o700)
    for path in (s.data_dir / "dunning.db", wal, key):
        path.chmod(0o600)
    assert examine(s).is_clean


def test_sqlite_outside_the_data_dir(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir(mode=0o755)
    other.chmod(0o755)
    (other / "x.db").write_bytes(b"")
    (other / "x.db").chmod(0o600)
    s = settings(tmp_path, database_url=f"sqlite:///{other / 'x.db'}")
    assert checks_of(s) == {"sqlite"}
    pg = settings(tmp_path / "pg", database_url="postgresql+psycopg://u@db.internal/dunning")
    assert checks_of(pg) == set()


@pytest.mark.parametrize(("url", "bad"), [
    ("http://hooks.example.com", True), ("https://hooks.example.com", False),
    ("http://127.0.0.1:8000", False), ("http://localhost:8000", False),
])
def test_public_url_must_be_https(tmp_path: Path, url: str, bad: bool) -> None:
    assert (checks_of(settings(tmp_path, public_url=url)) == {"public-url"}) is bad


def test_smtp_login_in_plain_text(tmp_path: Path) -> None:
    base = {"email_backend": "smtp", "smtp_host": "smtp.example.com", "smtp_username": "u",
            "smtp_password": "p"}
    # Plain text to a non-loopback host no longer even loads (the settings refuse it, naming
    # the variable); doctor reports a configuration that fails to load as a problem.
    with pytest.raises(ValueError, match="DUNNING_SMTP_STARTTLS"):
        settings(tmp_path, **base)
    assert checks_of(settings(tmp_path / "a", **base, smtp_starttls=True)) == set()
    assert checks_of(settings(tmp_path / "b", **base, smtp_port=465)) == set()


# --- the command ------------------------------------------------------------------------------


def run_doctor(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("DUNNING_", "PLIVO_", "TEMPORAL_"))}
    clean.update(env)
    return subprocess.run([DUNNING, "doctor", *args], env=clean, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


def test_doctor_command_exit_status_and_json(tmp_path: Path) -> None:
    data = private_data_dir(tmp_path)
    ok = run_doctor(tmp_path, "--json", DUNNING_DATA_DIR=str(data))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    assert run_doctor(tmp_path, DUNNING_DATA_DIR=str(data)).returncode == 0

    bad = run_doctor(tmp_path, "--json", DUNNING_DATA_DIR=str(data),
                     DUNNING_TEMPORAL_ADDRESS="temporal.prod:7233",
                     DUNNING_CODEC_HOST="0.0.0.0", DUNNING_PUBLIC_URL="http://hooks.example.com")
    assert bad.returncode == 1
    body = json.loads(bad.stdout)
    assert body["ok"] is False
    assert {p["check"] for p in body["problems"]} == {"temporal-tls", "codec-server",
                                                      "public-url"}
    text = run_doctor(tmp_path, DUNNING_DATA_DIR=str(data), DUNNING_CODEC_HOST="0.0.0.0")
    assert text.returncode == 1 and "codec-server" in text.stdout and "Traceback" not in (
        text.stdout + text.stderr)


def test_doctor_reports_missing_plivo_credentials(tmp_path: Path) -> None:
    data = private_data_dir(tmp_path)
    result = run_doctor(tmp_path, "--json", DUNNING_DATA_DIR=str(data),
                        DUNNING_SMS_BACKEND="plivo")
    assert result.returncode == 1
    [problem] = json.loads(result.stdout)["problems"]
    assert problem["check"] == "plivo" and "PLIVO_AUTH_ID" in problem["message"]
