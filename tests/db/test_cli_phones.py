"""`dunning phones import|check` through the real command line entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dunning.platform.db import Database
from dunning.platform.db.models import Customer

ROOT = Path(__file__).resolve().parents[2]
Run = Callable[..., tuple[int, str, str]]

GOOD_AND_BAD = (
    "customer_id,phone,email,country\r\n"
    "c1,+44 7400 123456,c1@example.com,\r\n"
    "c2,07400 123457,,GB\r\n"
    "c3,020 7946 0018,,GB\r\n"
    "c4,(201) 555-0123,,\r\n"
    "c1,+44 7400 123458,,\r\n"
    "c5,+33 6 12 34 56 78,not-an-email,\r\n"
)


@pytest.fixture
def account(cli: Run, uid: str) -> str:
    name = f"cli-{uid}"
    code, _, err = cli("account", "create", name, "--company-name", "CLI Co")
    assert code == 0, err
    return name


def count(db: Database, account: str) -> int:
    with db.session() as s:
        return s.scalar(
            select(func.count()).select_from(Customer).where(Customer.account_id == account)
        ) or 0


def write(tmp_path: Path, text: str | bytes, name: str = "customers.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_json_output(cli: Run, account: str, tmp_path: Path, db: Database) -> None:
    path = write(tmp_path, GOOD_AND_BAD)
    code, out, err = cli("phones", "import", str(path), "--account", account,
                         "--default-region", "US", "--json")
    assert code == 0, err
    assert err == ""
    assert out.endswith("\n") and out.count("\n") == 1  # one JSON object, nothing else
    data = json.loads(out)
    assert list(data) == ["imported", "updated", "unchanged", "rejected", "errors"]
    assert (data["imported"], data["updated"], data["unchanged"], data["rejected"]) == (
        3, 0, 0, 3)
    assert data["errors"] == [
        {"line": 4, "customer_id": "c3", "phone": "020 7946 0018",
         "reason": "landline (FIXED_LINE) cannot receive SMS"},
        {"line": 6, "customer_id": "c1", "phone": "+44 7400 123458",
         "reason": "duplicate customer_id (first seen on line 2)"},
        {"line": 7, "customer_id": "c5", "phone": "+33 6 12 34 56 78",
         "reason": "bad email: 'not-an-email' is not an email address"},
    ]
    assert count(db, account) == 3

    code, out, _ = cli("phones", "import", str(path), "--account", account,
                       "--default-region", "US", "--json")
    again = json.loads(out)
    assert code == 0
    assert (again["imported"], again["updated"], again["unchanged"], again["rejected"]) == (
        0, 0, 3, 3)
    assert again["errors"] == data["errors"]


def test_human_output(cli: Run, account: str, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_AND_BAD)
    code, out, err = cli("phones", "import", str(path), "--account", account)
    assert code == 0, err
    assert "imported 2, updated 0, unchanged 0, rejected 4" in out
    assert "rejected rows (4)" in out
    assert "no country" in out  # c4 without --default-region
    assert "landline (FIXED_LINE)" in out
    assert "{" not in out


def test_unknown_account(cli: Run, tmp_path: Path, uid: str, db: Database) -> None:
    path = write(tmp_path, GOOD_AND_BAD)
    code, out, err = cli("phones", "import", str(path), "--account", f"nope-{uid}", "--json")
    assert code == 1
    assert out == ""
    assert f"unknown account 'nope-{uid}'" in err
    assert "Traceback" not in err
    assert count(db, f"nope-{uid}") == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"customer_id,phone\nc1,+44 7400 123456\nc2,+44 7400 1234\xff7\n", "not UTF-8 text"),
        (b"", "the file is empty"),
        (b"id,number\nc1,+44 7400 123456\n", "no customer_id and no phone column"),
        (b"\x00\x01\x02\x03binary", "binary file"),
    ],
)
def test_bad_file_exits_1_and_stores_nothing(cli: Run, account: str, tmp_path: Path,
                                              db: Database, content: bytes,
                                              message: str) -> None:
    path = write(tmp_path, content)
    for extra in ([], ["--json"]):
        code, out, err = cli("phones", "import", str(path), "--account", account, *extra)
        assert code == 1
        assert out == ""
        assert message in err
        assert "Traceback" not in err
    assert count(db, account) == 0


def test_missing_file(cli: Run, account: str, tmp_path: Path) -> None:
    code, out, err = cli("phones", "import", str(tmp_path / "missing.csv"), "--account", account)
    assert code == 1
    assert out == ""
    assert "cannot open" in err


def test_usage_error_exits_2(cli: Run, tmp_path: Path) -> None:
    code, _, _ = cli("phones", "import", str(write(tmp_path, GOOD_AND_BAD)))  # no --account
    assert code == 2


def test_check(cli: Run) -> None:
    code, out, err = cli("phones", "check", "07400 123456", "--region", "GB", "--json")
    assert code == 0, err
    assert json.loads(out) == {"e164": "+447400123456", "region": "GB", "type": "MOBILE",
                               "time_zones": ["Europe/Guernsey", "Europe/Isle_of_Man",
                                              "Europe/Jersey", "Europe/London"]}
    code, out, err = cli("phones", "check", "020 7946 0018", "--region", "GB")
    assert code == 1
    assert "landline (FIXED_LINE) cannot receive SMS" in err
    code, _, err = cli("phones", "check", "07400 123456")
    assert code == 1
    assert "--region" in err


def test_real_process(db: Database, account: str, tmp_path: Path) -> None:
    """A separate process: exit codes, clean stdout and no traceback, as a script sees them."""
    good = write(tmp_path, GOOD_AND_BAD, "good.csv")
    bad = write(tmp_path, "customer_id,phone\nc9,+44 7400 123456\n".encode("utf-16"), "bad.csv")
    env = dict(os.environ, DUNNING_DATABASE_URL=db.url, DUNNING_DATA_DIR=str(tmp_path / "d"))
    base = [sys.executable, "-c", "from dunning.cli import main; main()", "phones", "import"]
    ok = subprocess.run([*base, str(good), "--account", account, "--default-region", "US",
                         "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["imported"] == 3
    failed = subprocess.run([*base, str(bad), "--account", account, "--json"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert "UTF-16" in failed.stderr
    assert "Traceback" not in failed.stderr
