"""Secured Temporal connections, for real: a TLS-terminating loopback proxy (tests/fakes) in front
of the dev server, with certificates made here, once plain TLS and once requiring client
certificates (mTLS). Every process connects through `dunning.platform.temporal.connect`."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from dunning.cases.client import CaseNotFound, DunningClient
from dunning.domain.contract import WORKFLOW_TYPE
from dunning.platform.db import Database
from dunning.platform.settings import Settings, SettingsError, load_settings
from dunning.platform.temporal import (
    TemporalConnectError,
    connect,
    connection_options,
)
from dunning.webhooks.app import _temporal_factory
from tests.fakes.plivo import FakePlivo
from tests.fakes.smtp import SmtpSink
from tests.fakes.tls_proxy import Pki, TlsProxy, make_pki
from tests.helpers import add_customer, case_input, make_account, real_activities, running_worker
from worker import connect_worker_client

DUNNING = str(Path(sys.executable).parent / "dunning")
KEYS = "k1:" + "3c" * 32
API_KEY = "tmprl-api-key-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def dev_address(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host


@pytest.fixture(scope="module")
def tls_proxy(temporal_env: WorkflowEnvironment, pki: Pki) -> Iterator[TlsProxy]:
    proxy = TlsProxy(dev_address(temporal_env), pki).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def mtls_proxy(temporal_env: WorkflowEnvironment, pki: Pki) -> Iterator[TlsProxy]:
    proxy = TlsProxy(dev_address(temporal_env), pki, require_client_cert=True).start()
    yield proxy
    proxy.stop()


def settings_for(tmp_path: Path, address: str, **tls: Any) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, codec_keys=KEYS,
                    temporal_address=address, **tls)


async def start_and_describe(client: Client) -> None:
    """A round trip that needs the namespace and writes history."""
    ns = await client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace="default"))
    assert ns.namespace_info.name == "default"
    wid = f"tls-{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow(WORKFLOW_TYPE, {"x": 1}, id=wid,
                                         task_queue=f"nobody-{wid}")
    desc = await handle.describe()
    assert desc.id == wid
    await handle.terminate()


# --- plain TLS --------------------------------------------------------------------------------


async def test_tls_with_the_right_ca_starts_a_case(
    tls_proxy: TlsProxy, pki: Pki, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, tls_proxy.address, temporal_tls=True,
                            temporal_tls_ca=pki.ca)
    before = tls_proxy.accepted
    client = await connect(settings)
    await start_and_describe(client)
    assert tls_proxy.accepted > before  # it really went through the proxy


async def test_tls_on_implied_by_the_ca_and_server_name(
    tls_proxy: TlsProxy, pki: Pki, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, tls_proxy.address, temporal_tls_ca=pki.ca,
                            temporal_tls_server_name="localhost")
    assert settings.temporal_tls_enabled
    await start_and_describe(await connect(settings))


async def test_wrong_ca_fails_with_a_clear_error(
    tls_proxy: TlsProxy, pki: Pki, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, tls_proxy.address, temporal_tls=True,
                            temporal_tls_ca=pki.other_ca)
    with pytest.raises(TemporalConnectError) as info:
        await connect(settings)
    message = str(info.value)
    assert "\n" not in message
    assert tls_proxy.address in message and "TLS" in message
    assert "DUNNING_TEMPORAL_TLS_CA" in message


async def test_plain_text_to_a_tls_port_fails_with_a_clear_error(
    tls_proxy: TlsProxy, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, tls_proxy.address)
    assert not settings.temporal_tls_enabled
    with pytest.raises(TemporalConnectError, match="plain text"):
        await connect(settings)


# --- mTLS -------------------------------------------------------------------------------------


async def test_mtls_with_a_client_certificate_works_for_client_and_worker(
    mtls_proxy: TlsProxy, pki: Pki, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, mtls_proxy.address, temporal_tls=True,
                            temporal_tls_ca=pki.ca, temporal_tls_cert=pki.client_cert,
                            temporal_tls_key=pki.client_key)
    await start_and_describe(await connect(settings))
    worker_client = await connect_worker_client(settings)
    await start_and_describe(worker_client)


async def test_mtls_without_a_client_certificate_fails(
    mtls_proxy: TlsProxy, pki: Pki, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, mtls_proxy.address, temporal_tls=True,
                            temporal_tls_ca=pki.ca)
    accepted = mtls_proxy.accepted
    with pytest.raises(TemporalConnectError) as info:
        await connect(settings)
    assert "DUNNING_TEMPORAL_TLS_CERT" in str(info.value)
    assert mtls_proxy.accepted == accepted  # no connection got past the TLS handshake


async def test_dunning_client_and_webhooks_connect_over_mtls(
    mtls_proxy: TlsProxy, pki: Pki, tmp_path: Path, sqlite_db: Database
) -> None:
    settings = settings_for(tmp_path, mtls_proxy.address, temporal_tls_ca=pki.ca,
                            temporal_tls_cert=pki.client_cert, temporal_tls_key=pki.client_key)
    before = mtls_proxy.accepted
    dunning = await DunningClient.connect(settings)
    with pytest.raises(CaseNotFound):  # the answer came from Temporal, through the proxy
        await dunning.status("acme", f"inv-{uuid.uuid4().hex[:6]}")
    # The webhook server's client (started and signalled on billing events).
    webhooks_client = await _temporal_factory(settings, sqlite_db)()
    await start_and_describe(webhooks_client.client)
    assert mtls_proxy.accepted >= before + 2


async def test_a_whole_case_runs_with_worker_and_client_over_mtls(
    mtls_proxy: TlsProxy, pki: Pki, tmp_path: Path, sqlite_db: Database,
    plivo_server: FakePlivo, smtp_server: SmtpSink, uid: str,
) -> None:
    """The worker polls and the client starts through the client-certificate proxy; the case
    sends its email and SMS and ends."""
    settings = settings_for(tmp_path, mtls_proxy.address, temporal_tls_ca=pki.ca,
                            temporal_tls_cert=pki.client_cert, temporal_tls_key=pki.client_key)
    account, queue, phone = f"tls{uid}", f"tls-q-{uid}", "+1415555" + str(
        int(uid, 16) % 10000).zfill(4)
    make_account(sqlite_db, account, schedule="0s", grace="1s")
    add_customer(sqlite_db, account, "cus1", phone=phone)
    worker_client = await connect_worker_client(settings)
    client = await connect(settings)
    acts = real_activities(sqlite_db, plivo_server, smtp_server)
    async with running_worker(worker_client, queue, acts):
        handle = await client.start_workflow(
            WORKFLOW_TYPE, case_input(account, "inv1", "cus1"), id=f"tls-case-{uid}",
            task_queue=queue)
        result = await asyncio.wait_for(handle.result(), 60)
    assert result["emails_sent"] == 1 and result["sms_sent"] == 1
    assert len(plivo_server.accepted(phone.lstrip("+"))) == 1


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DUNNING_", "PLIVO_", "TEMPORAL_"))}
    env.update(extra)
    return env


def test_the_cli_uses_the_tls_settings(mtls_proxy: TlsProxy, pki: Pki, tmp_path: Path) -> None:
    """`dunning status` (the DunningClient path every CLI command uses) through the mTLS proxy:
    with the certificate it reaches Temporal (the case is simply unknown); without, it fails
    with one line naming the setting."""
    env = clean_env(
        DUNNING_DATA_DIR=str(tmp_path), DUNNING_CODEC_KEYS=KEYS,
        DUNNING_TEMPORAL_ADDRESS=mtls_proxy.address, DUNNING_TEMPORAL_TLS="on",
        DUNNING_TEMPORAL_TLS_CA=str(pki.ca), DUNNING_TEMPORAL_TLS_CERT=str(pki.client_cert),
        DUNNING_TEMPORAL_TLS_KEY=str(pki.client_key),
    )
    args = [DUNNING, "status", "--account", "acme", "--invoice", "inv-tls-1"]
    ok = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 1 and "cannot" not in ok.stderr.lower(), ok.stderr
    assert "inv-tls-1" in ok.stderr, ok.stderr  # "no case ..." from Temporal, over mTLS
    del env["DUNNING_TEMPORAL_TLS_CERT"], env["DUNNING_TEMPORAL_TLS_KEY"]
    refused = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "DUNNING_TEMPORAL_TLS_CERT" in lines[0], refused.stderr
    assert "Traceback" not in refused.stderr


# --- API key ----------------------------------------------------------------------------------


async def test_api_key_is_sent_as_a_bearer_header_and_never_shown(
    tls_proxy: TlsProxy, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = settings_for(tmp_path, tls_proxy.address, temporal_tls_ca=pki.ca,
                            temporal_api_key=API_KEY)
    assert settings.temporal_tls_enabled  # an API key implies TLS
    options = connection_options(settings)
    assert options.api_key == API_KEY
    for shown in (repr(options), str(options), repr(settings), str(settings),
                  options.describe):
        assert API_KEY not in shown
    client = await connect(settings)
    await start_and_describe(client)
    assert f"Bearer {API_KEY}" in tls_proxy.header_values("authorization")
    # A failing connection does not print it either.
    wrong = settings_for(tmp_path, tls_proxy.address, temporal_tls_ca=pki.other_ca,
                         temporal_api_key=API_KEY)
    with pytest.raises(TemporalConnectError) as info:
        await connect(wrong)
    assert API_KEY not in str(info.value) and "API key" in str(info.value)
    engine_records = [r for r in caplog.records if not r.name.startswith("hpack")]
    assert all(API_KEY not in r.getMessage() for r in engine_records)
    assert API_KEY not in caplog.text


# --- settings ---------------------------------------------------------------------------------


def test_tls_settings_are_checked(tmp_path: Path, pki: Pki) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"temporal_tls_ca": tmp_path / "missing.pem"}, "DUNNING_TEMPORAL_TLS_CA"),
        ({"temporal_tls_cert": pki.client_cert}, "DUNNING_TEMPORAL_TLS_KEY"),
        ({"temporal_tls_key": pki.client_key}, "DUNNING_TEMPORAL_TLS_CERT"),
        ({"temporal_tls": False, "temporal_tls_ca": pki.ca}, "DUNNING_TEMPORAL_TLS"),
        ({"temporal_tls": "maybe"}, "DUNNING_TEMPORAL_TLS"),
    ]
    for overrides, variable in cases:
        with pytest.raises(SettingsError, match=variable) as info:
            load_settings(_env_file=None, data_dir=tmp_path, **overrides)
        assert "\n" not in str(info.value)
    plain = load_settings(_env_file=None, data_dir=tmp_path)
    assert not plain.temporal_tls_enabled and connection_options(plain).tls is False
    system_roots = load_settings(_env_file=None, data_dir=tmp_path, temporal_tls="on")
    assert connection_options(system_roots).tls is True
