"""Production signals: Prometheus metrics (Temporal's and the engine's) from a real worker process,
structured logs without personal data, and a provider's 429 backing off."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from dunning.platform import logs, metrics
from dunning.platform.codec import converter_for
from dunning.platform.db import Database
from dunning.platform.db.models import Message
from dunning.platform.settings import Settings
from tests.fakes.plivo import FakePlivo, Scripted
from tests.fakes.smtp import SmtpSink
from tests.helpers import (
    add_customer,
    case_input,
    make_account,
    real_activities,
    running_worker,
    sms_paused,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
KEY = "m1:" + "cd" * 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} from a Prometheus text endpoint."""
    body = httpx.get(url, timeout=5).text
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float:
    """Sum of the samples of `name` (with or without a _total suffix) matching `labels`."""
    total = 0.0
    for (sample, sample_labels), value in samples.items():
        if sample in (name, f"{name}_total") and set(labels.items()) <= sample_labels:
            total += value
    return total


@pytest.mark.slow
async def test_worker_exports_engine_metrics_and_masked_json_logs(
    temporal_env: WorkflowEnvironment, uid: str, tmp_path: Path,
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'metrics.db'}")
    db.upgrade()
    paid, dry = f"paid-{uid}", f"dry-{uid}"
    phone, email = "+14155557001", f"pat.{uid}@example.com"
    make_account(db, paid, schedule="0s", grace="0s", balance=10)
    make_account(db, dry, schedule="0s,60s", grace="1s", balance=0)
    add_customer(db, paid, "c1", phone=phone, email=email)
    add_customer(db, dry, "c1", phone="+14155557002", email=f"dry.{uid}@example.com")
    port, queue = _free_port(), f"metrics-{uid}"
    address = temporal_env.client.service_client.config.target_host
    out_path = tmp_path / "worker.out"
    env = {
        **os.environ, "DUNNING_TEMPORAL_ADDRESS": address, "DUNNING_TASK_QUEUE": queue,
        "DUNNING_DATABASE_URL": db.url, "DUNNING_DATA_DIR": str(tmp_path),
        "DUNNING_CODEC_KEYS": KEY, "DUNNING_SMS_BACKEND": "console",
        "DUNNING_EMAIL_BACKEND": "console", "DUNNING_METRICS_ADDRESS": f"127.0.0.1:{port}",
        "DUNNING_METRICS_SAMPLE_SECONDS": "0.2", "DUNNING_LOG_FORMAT": "json",
    }
    url = f"http://127.0.0.1:{port}/metrics"
    with out_path.open("wb") as out:
        worker = subprocess.Popen([sys.executable, str(ROOT / "worker.py")], env=env, cwd=ROOT,
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        def up() -> bool:
            try:
                return httpx.get(url, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_for(lambda: asyncio.to_thread(up), timeout=30, interval=0.2)
        client = await Client.connect(
            address, data_converter=converter_for(Settings(codec_keys=KEY, data_dir=tmp_path))
        )
        done = await client.start_workflow(
            "DunningWorkflow", case_input(paid, "inv1", "c1"), id=f"dunning-{paid}-inv1",
            task_queue=queue,
        )
        assert (await done.result())["outcome"] == "exhausted"
        waiting = await client.start_workflow(
            "DunningWorkflow", case_input(dry, "inv1", "c1"), id=f"dunning-{dry}-inv1",
            task_queue=queue,
        )
        await wait_for(lambda: sms_paused(waiting), timeout=20)

        def gauge() -> float:
            return _value(_scrape(url), metrics.SMS_PAUSED_CASES)

        await wait_for(lambda: asyncio.to_thread(lambda: gauge() == 1), timeout=10)
        await waiting.signal("payment_recovered", {"amount": 1234})
        assert (await waiting.result())["outcome"] == "recovered"
        await wait_for(lambda: asyncio.to_thread(lambda: gauge() == 0), timeout=10)
        samples = await asyncio.to_thread(_scrape, url)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
        db.dispose()

    ours = {"task_queue": queue}
    # Case 1: both reminders sent, one credit. Case 2: email sent, SMS paused then the case
    # recovered: its step-1 SMS and both step-2 reminders were skipped.
    assert _value(samples, metrics.REMINDERS, channel="email", outcome="sent", **ours) == 2
    assert _value(samples, metrics.REMINDERS, channel="sms", outcome="sent", **ours) == 1
    assert _value(samples, metrics.REMINDERS, channel="sms", outcome="skipped", **ours) == 2
    assert _value(samples, metrics.REMINDERS, channel="email", outcome="skipped", **ours) == 1
    assert _value(samples, metrics.CREDITS_SPENT, **ours) == 1
    assert _value(samples, metrics.SMS_PAUSES, **ours) == 1
    assert _value(samples, metrics.SMS_RESUMES, **ours) == 1
    assert _value(samples, metrics.CASES_STARTED, **ours) == 2
    assert _value(samples, metrics.CASES_FINISHED, outcome="exhausted", **ours) == 1
    assert _value(samples, metrics.CASES_FINISHED, outcome="recovered", **ours) == 1
    assert _value(samples, metrics.RECOVERIES, **ours) == 1
    assert _value(samples, metrics.RECOVERED_AMOUNT, currency="USD", **ours) == 1234
    assert any(name.startswith("temporal_") for name, _ in samples), "SDK metrics missing"

    text = out_path.read_text()
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    sent = [r for r in records if r.get("msg") == "reminder sent"]
    assert {(r["case"], r["channel"]) for r in sent} == {
        (f"dunning-{paid}-inv1", "email"), (f"dunning-{paid}-inv1", "sms"),
        (f"dunning-{dry}-inv1", "email"),
    }
    assert all(r["level"] == "INFO" and r["ts"].endswith("Z") for r in sent)
    assert any(r.get("case") == f"dunning-{dry}-inv1" and r["msg"].startswith("SMS paused")
               for r in records)
    assert any(r.get("case") == f"dunning-{paid}-inv1" and r["msg"].startswith("case exhausted")
               for r in records)
    for secret in (phone, phone.lstrip("+"), email, f"dry.{uid}@example.com"):
        assert secret not in text


def test_log_formatter_masks_what_callers_forgot() -> None:
    import logging

    record = logging.LogRecord("dunning.x", logging.INFO, __file__, 1,
                               "to %s / %s / plivo %s", ("+447700900123", "ann@example.org",
                                                         "14155550100"), None)
    record.case = "dunning-a-i1"
    record.to = "+447700900123"
    fields = logs.fields_of(record)
    assert fields["case"] == "dunning-a-i1"
    assert fields["msg"] == "to +4*******0123 / a***@example.org / plivo +1******0100"
    assert fields["to"] == "+4*******0123"
    line = logs.KeyValueFormatter().format(record)
    assert 'case=dunning-a-i1' in line and "ann@" not in line and "447700900123" not in line


async def test_provider_429_backs_off_and_delivers_once(
    temporal_env: WorkflowEnvironment, sqlite_db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    account, queue = f"r429-{uid}", f"r429-q-{uid}"
    phone = "+1415558" + str(int(uid[:4], 16) % 10000).zfill(4)
    make_account(sqlite_db, account, schedule="0s", grace="0s", balance=5)
    add_customer(sqlite_db, account, "c1", phone=phone)
    too_many = {"api_id": "x", "error": "too many requests"}
    with plivo_server.lock:  # answers scripted by earlier tests and never used must not interfere
        plivo_server.script.clear()
    plivo_server.push(Scripted(status=429, body=too_many), Scripted(status=429, body=too_many))
    acts = real_activities(sqlite_db, plivo_server, smtp_server)
    async with running_worker(temporal_env.client, queue, acts):
        handle = await temporal_env.client.start_workflow(
            "DunningWorkflow", case_input(account, "inv1", "c1"),
            id=f"dunning-{account}-inv1", task_queue=queue,
        )
        result = await handle.result()
    got = [r for r in plivo_server.requests if r.dst == phone.lstrip("+")]
    assert [r.accepted for r in got] == [False, False, True]
    assert result["sms_sent"] == 1 and result["credits_spent"] == 1
    history = await handle.fetch_history()
    attempts = [e.activity_task_started_event_attributes.attempt for e in history.events
                if e.HasField("activity_task_started_event_attributes")]
    assert max(attempts) == 3  # the SMS activity: two 429s retried by Temporal, third delivered
    with sqlite_db.session() as s:
        rows = s.scalars(select(Message).where(
            Message.account_id == account, Message.channel == "sms")).all()
    assert [(r.status, r.attempts) for r in rows] == [("sent", 3)]


def test_paused_cases_counts_the_queue_not_the_cases_already_served(db: Database, uid: str):
    from dunning.accounts.accounts import AccountOptions, create_account
    from dunning.credits import ledger

    before = metrics.paused_cases(db)
    with db.session() as s:
        create_account(s, uid, AccountOptions(company_name="Gauge Co"))
    for wf in ("w1", "w2", "w3"):
        with db.session() as s:
            assert not ledger.reserve(s, uid, 1, workflow_id=wf, step=1, enqueue=True).ok
    assert metrics.paused_cases(db) == before + 3
    with db.session() as s:
        ledger.top_up(s, uid, 2)
    with db.session() as s:
        assert len(ledger.grant(s, uid).workflow_ids) == 2
    assert metrics.paused_cases(db) == before + 1
