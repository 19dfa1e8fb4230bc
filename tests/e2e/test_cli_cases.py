"""The `dunning` command as a user runs it (a subprocess): cases, credits, settings errors."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from dunning.platform.db import Database
from tests.fakes.plivo import FakePlivo
from tests.fakes.smtp import SmtpSink
from tests.helpers import add_customer, real_activities, running_worker, wait_for

DUNNING = str(Path(sys.executable).parent / "dunning")


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DUNNING, *args], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=60)


async def arun(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`run` off the event loop, so the in-process worker keeps answering meanwhile."""
    return await asyncio.to_thread(run, args, env)


@pytest.fixture
def cli_env(tmp_path: Path, sqlite_db: Database, temporal_env: WorkflowEnvironment,
            uid: str) -> dict[str, str]:
    return {
        "DUNNING_DATA_DIR": str(tmp_path),
        "DUNNING_DATABASE_URL": sqlite_db.url,
        "DUNNING_TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "DUNNING_TASK_QUEUE": f"cli-{uid}",
        "DUNNING_CODEC_KEYS": "cli:" + "7f" * 32,
    }


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("DUNNING_SMS_BACKEND", "carrier-pigeon"),
        ("DUNNING_DATABASE_URL", "not a url"),
        ("DUNNING_PUBLIC_URL", "ftp://example.com"),
        ("DUNNING_TEMPORAL_ADDRESS", "no-port"),
        ("DUNNING_CODEC_KEYS", "k1:abcd"),
    ],
)
def test_bad_settings_stop_with_one_line_naming_the_variable(tmp_path, var, value):
    result = run(["account", "show", "x"], {"DUNNING_DATA_DIR": str(tmp_path), var: value})
    assert result.returncode == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert var in lines[0]
    assert "Traceback" not in result.stderr


def test_plivo_backend_needs_credentials(tmp_path):
    result = run(["account", "show", "x"],
                 {"DUNNING_DATA_DIR": str(tmp_path), "DUNNING_SMS_BACKEND": "plivo",
                  "PLIVO_AUTH_ID": "", "PLIVO_AUTH_TOKEN": ""})
    assert result.returncode == 1
    assert "PLIVO_AUTH_ID" in result.stderr


def test_usage_errors_exit_2_and_help_exits_0(tmp_path):
    env = {"DUNNING_DATA_DIR": str(tmp_path)}
    assert run(["start", "--account", "a"], env).returncode == 2
    helped = run(["start", "--help"], env)
    assert helped.returncode == 0 and "--billing-link" in helped.stdout


def test_db_upgrade_is_idempotent(tmp_path):
    env = {"DUNNING_DATA_DIR": str(tmp_path)}
    first = run(["db", "upgrade", "--json"], env)
    second = run(["db", "upgrade", "--json"], env)
    assert first.returncode == second.returncode == 0
    assert json.loads(second.stdout)["status"] == "up to date"
    assert (tmp_path / "dunning.db").exists()


async def test_case_lifecycle_through_the_cli(cli_env, sqlite_db, plivo_server: FakePlivo,
                                              smtp_server: SmtpSink, uid, temporal_env):
    acct = f"cli-{uid}"
    created = run(["account", "create", acct, "--company-name", "Cli Co", "--schedule",
                   "0s,30s", "--grace", "1s", "--sms-sender", "+14155550100", "--json"],
                  cli_env)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["schedule"] == "0d,30s"
    add_customer(sqlite_db, acct, "cus1", email=f"cli{uid}@example.com")
    start_args = ["start", "--account", acct, "--customer", "cus1", "--invoice", "inv1",
                  "--amount", "4900", "--currency", "USD", "--billing-link",
                  "https://pay.example.com/inv1", "--json"]
    acts = real_activities(sqlite_db, plivo_server, smtp_server)
    from dunning.platform.codec import converter_for
    from dunning.platform.settings import Settings

    client = temporal_env.client
    coded = type(client)(client.service_client, namespace="default",
                         data_converter=converter_for(Settings(codec_keys=cli_env[
                             "DUNNING_CODEC_KEYS"])))
    async with running_worker(coded, cli_env["DUNNING_TASK_QUEUE"], acts):
        first = await arun(start_args, cli_env)
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)["started"] is True
        again = await arun(start_args, cli_env)
        assert again.returncode == 0 and json.loads(again.stdout)["started"] is False
        await wait_for(lambda: len(smtp_server.to(f"cli{uid}@example.com")) == 1)

        status = await arun(["status", "--account", acct, "--invoice", "inv1", "--json"],
                            cli_env)
        data = json.loads(status.stdout)
        assert data["state"] == "active"
        email1 = next(r for r in data["reminders"] if r["step"] == 1 and r["channel"] == "email")
        assert email1["status"] == "sent" and email1["delivery"] == "accepted"
        sms1 = next(r for r in data["reminders"] if r["step"] == 1 and r["channel"] == "sms")
        assert sms1["status"] == "skipped" and sms1["reason"] == "SMS is off for this account"

        recovered = await arun(["recover", "--account", acct, "--invoice", "inv1", "--json"],
                               cli_env)
        assert recovered.returncode == 0, recovered.stderr
        async def recovered_state() -> bool:
            out = await arun(["status", "--account", acct, "--invoice", "inv1", "--json"],
                             cli_env)
            return bool(json.loads(out.stdout)["state"] == "recovered")

        await wait_for(recovered_state)
        late = await arun(["recover", "--account", acct, "--invoice", "inv1"], cli_env)
        assert late.returncode == 1 and "no running case" in late.stderr

    missing = await arun(["status", "--account", acct, "--invoice", "nope"], cli_env)
    assert missing.returncode == 1 and "no case" in missing.stderr
    bad_amount = await arun([*start_args[:8], "49.00", *start_args[9:]], cli_env)
    assert bad_amount.returncode == 1 and "minor units" in bad_amount.stderr
    unknown = await arun(["start", "--account", "nobody", *start_args[3:]], cli_env)
    assert unknown.returncode == 1 and "unknown account" in unknown.stderr


def test_temporal_unreachable_is_a_clear_error(tmp_path, sqlite_db, uid):
    env = {"DUNNING_DATA_DIR": str(tmp_path), "DUNNING_DATABASE_URL": sqlite_db.url,
           "DUNNING_TEMPORAL_ADDRESS": "127.0.0.1:9"}
    run(["account", "create", f"u{uid}", "--company-name", "U"], env)
    result = run(["status", "--account", f"u{uid}", "--invoice", "i1"], env)
    assert result.returncode == 1
    assert "cannot reach Temporal at DUNNING_TEMPORAL_ADDRESS=127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr
