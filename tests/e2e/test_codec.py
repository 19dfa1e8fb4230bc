"""The payload codec: PII never reaches Temporal in clear text.

Unit tests for the AES-256-GCM codec, its keys and the codec server, and one end-to-end test on
the real dev server that reads raw workflow history and looks for the email and phone number.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.testclient import TestClient
from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload, Payloads, WorkflowExecution
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import History
from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryRequest
from temporalio.client import Client
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from dunning.platform import codec as codec_mod
from dunning.platform.codec import (
    ENCODING,
    KEY_FILE_NAME,
    CodecError,
    CodecKey,
    EncryptionCodec,
    UnknownKeyError,
    codec_for,
    converter_for,
    load_or_create_key_file,
    parse_keys,
)
from dunning.platform.codec_server import create_codec_app
from dunning.platform.settings import Settings, SettingsError

EMAIL = "alice.codec-test@example.com"
PHONE = "+14155550123"
CONTACT = {"customer_id": "cust-1", "email": EMAIL, "phone": PHONE}

KEY_A = "a" * 64
KEY_B = "0123456789abcdef" * 4


def settings_for(tmp_path: Path, codec_keys: str = "") -> Settings:
    return Settings(data_dir=tmp_path / "data", codec_keys=codec_keys, _env_file=None)


def json_payload(value: Any) -> Payload:
    return DataConverter.default.payload_converter.to_payloads([value])[0]


# --- codec ------------------------------------------------------------------------------------


async def test_round_trip_hides_the_plain_text() -> None:
    codec = EncryptionCodec(parse_keys(f"k1:{KEY_A}"))
    plain = json_payload(CONTACT)
    [sealed] = await codec.encode([plain])
    assert sealed.metadata["encoding"] == ENCODING == b"binary/encrypted"
    assert sealed.metadata["encryption-key-id"] == b"k1"
    raw = sealed.SerializeToString()
    assert EMAIL.encode() not in raw and PHONE.encode() not in raw
    assert b"json/plain" not in raw  # the inner metadata is encrypted too
    [opened] = await codec.decode([sealed])
    assert opened == plain
    # A fresh nonce each time: the same value never encrypts to the same bytes.
    [again] = await codec.encode([plain])
    assert again.data != sealed.data


async def test_converter_encrypts_values_and_failures(tmp_path: Path) -> None:
    converter = converter_for(settings_for(tmp_path, f"k1:{KEY_A}"))
    assert isinstance(converter.payload_codec, EncryptionCodec)
    assert isinstance(converter.failure_converter, DefaultFailureConverterWithEncodedAttributes)
    payloads = await converter.encode([CONTACT])
    assert all(EMAIL.encode() not in p.SerializeToString() for p in payloads)
    assert await converter.decode(payloads, [dict]) == [CONTACT]

    failure = Failure()
    await converter.encode_failure(ApplicationError(f"mail to {EMAIL} bounced", PHONE), failure)
    raw = failure.SerializeToString()
    assert EMAIL.encode() not in raw and PHONE.encode() not in raw
    error = await converter.decode_failure(failure)
    assert isinstance(error, ApplicationError)
    assert EMAIL in error.message and list(error.details) == [PHONE]


async def test_rotation_old_key_decrypts_new_key_encrypts() -> None:
    old = EncryptionCodec(parse_keys(f"old:{KEY_A}"))
    rotated = EncryptionCodec(parse_keys(f"new:{KEY_B},old:{KEY_A}"))
    assert rotated.encrypting_key_id == "new" and rotated.key_ids == ["new", "old"]
    plain = json_payload(CONTACT)
    [by_old] = await old.encode([plain])
    [by_new] = await rotated.encode([plain])
    assert by_new.metadata["encryption-key-id"] == b"new"
    assert await rotated.decode([by_old, by_new]) == [plain, plain]
    # A process that has not been given the new key yet says exactly what is missing.
    with pytest.raises(UnknownKeyError) as info:
        await old.decode([by_new])
    assert info.value.key_id == "new"
    assert "'new'" in str(info.value) and "DUNNING_CODEC_KEYS" in str(info.value)


async def test_unknown_key_id_is_a_clear_error() -> None:
    codec = EncryptionCodec(parse_keys(f"k1:{KEY_A}"))
    stranger = EncryptionCodec([CodecKey("k9", bytes(32))])
    [sealed] = await stranger.encode([json_payload("x")])
    with pytest.raises(UnknownKeyError, match=r"codec key 'k9'.*known: k1"):
        await codec.decode([sealed])


async def test_same_key_id_with_another_key_fails_authentication() -> None:
    mine = EncryptionCodec(parse_keys(f"k1:{KEY_A}"))
    impostor = EncryptionCodec(parse_keys(f"k1:{KEY_B}"))
    [sealed] = await impostor.encode([json_payload("x")])
    with pytest.raises(CodecError, match="failed authentication"):
        await mine.decode([sealed])
    [good] = await mine.encode([json_payload("x")])
    tampered = Payload()
    tampered.CopyFrom(good)
    tampered.data = good.data[:-1] + bytes([good.data[-1] ^ 1])
    with pytest.raises(CodecError, match="failed authentication"):
        await mine.decode([tampered])
    tampered.data = good.data[:10]
    with pytest.raises(CodecError, match="truncated"):
        await mine.decode([tampered])


async def test_unencrypted_payloads_pass_through_decode() -> None:
    codec = EncryptionCodec(parse_keys(f"k1:{KEY_A}"))
    plain = [json_payload({"account_id": "acme"}), json_payload(None), Payload(data=b"x")]
    decoded = await codec.decode(plain)
    assert decoded == plain
    # ... and a converter with the codec reads what the `temporal` CLI sends (plain JSON).
    converter = dataclasses.replace(DataConverter.default, payload_codec=codec)
    assert await converter.decode(plain[:1], [dict]) == [{"account_id": "acme"}]


# --- settings ---------------------------------------------------------------------------------


def test_parse_keys_accepts_spaces_and_a_trailing_comma() -> None:
    keys = parse_keys(f" k1 : {KEY_A} , k2:{KEY_B.upper()},")
    assert [k.key_id for k in keys] == ["k1", "k2"]
    assert keys[0].key == bytes.fromhex(KEY_A) and keys[1].key == bytes.fromhex(KEY_B)
    assert KEY_A not in repr(keys[0])  # keys never show up in reprs or logs


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (",", "no keys"),
        (KEY_A, "not id:hex"),
        (f":{KEY_A}", "not id:hex"),
        (f"k1:{KEY_A[:-2]}", "64 hex characters"),
        (f"k1:{KEY_A}00", "64 hex characters"),
        (f"k1:{'g' * 64}", "non-hex"),
        (f"k1:{KEY_A},k1:{KEY_B}", "appears twice"),
        (f"bad id:{KEY_A}", "letters, digits"),
        (f"k1:{KEY_A};k2:{KEY_B}", "64 hex characters"),
    ],
)
def test_bad_codec_keys_setting(tmp_path: Path, value: str, hint: str) -> None:
    with pytest.raises(SettingsError) as info:
        converter_for(settings_for(tmp_path, value))
    message = str(info.value)
    assert message.startswith("invalid setting DUNNING_CODEC_KEYS: ")
    assert hint in message
    assert "\n" not in message
    assert KEY_A not in message and KEY_B not in message  # never echo key material
    assert not (tmp_path / "data" / KEY_FILE_NAME).exists()


# --- the generated default key ----------------------------------------------------------------


def test_default_key_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    key_file = tmp_path / "data" / KEY_FILE_NAME
    assert not key_file.exists()
    first = codec_for(settings)
    assert key_file.exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    content = key_file.read_text()
    [key] = parse_keys(content)
    assert content == key.line() + "\n"
    assert first.key_ids == [key.key_id]
    second = codec_for(settings)
    assert second.key_ids == first.key_ids
    assert key_file.read_text() == content
    assert [p.name for p in key_file.parent.iterdir()] == [KEY_FILE_NAME]  # no temp files left


async def test_default_key_decrypts_across_converters(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    payloads = await converter_for(settings).encode([CONTACT])
    assert await converter_for(settings).decode(payloads, [dict]) == [CONTACT]


def test_existing_key_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE_NAME
    key = load_or_create_key_file(path)
    codec_mod._create_key_file(path)  # a process that lost the race publishes nothing
    assert load_or_create_key_file(path) == key


def test_key_file_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: object, dst: object) -> None:
        raise PermissionError("hard links not supported here")

    monkeypatch.setattr(codec_mod.os, "link", no_links)
    path = tmp_path / KEY_FILE_NAME
    key = load_or_create_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    codec_mod._create_key_file(path)
    assert load_or_create_key_file(path) == key
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE_NAME]


def test_malformed_key_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "data" / KEY_FILE_NAME
    path.parent.mkdir()
    path.write_text("not a key\n")
    with pytest.raises(SettingsError, match=r"invalid codec key file .*codec\.key"):
        converter_for(settings_for(tmp_path))
    path.write_text(f"k1:{KEY_A}\nk2:{KEY_B}\n")
    with pytest.raises(SettingsError, match="DUNNING_CODEC_KEYS"):
        converter_for(settings_for(tmp_path))


def test_concurrent_first_use_agrees_on_one_key(tmp_path: Path) -> None:
    """Several processes start at once on an empty data dir: one key wins, all use it."""
    path = tmp_path / "data" / KEY_FILE_NAME
    go = tmp_path / "go"
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from dunning.platform.codec import load_or_create_key_file
        go = Path({str(go)!r})
        Path(sys.argv[1]).touch()
        while not go.exists():
            time.sleep(0.001)
        print(load_or_create_key_file(Path({str(path)!r})).line())
        """
    )
    ready = [tmp_path / f"ready-{i}" for i in range(6)]
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(r)], stdout=subprocess.PIPE, text=True)
        for r in ready
    ]
    try:
        # Wait until every process has imported and sits at the barrier, then release them.
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in ready) and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()
        outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs)
    assert len(set(outputs)) == 1, outputs
    assert path.read_text().strip() == outputs[0]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == [KEY_FILE_NAME]


# --- codec server -----------------------------------------------------------------------------

UI_ORIGIN = "http://localhost:8233"


@pytest.fixture
def codec_client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_codec_app(settings_for(tmp_path, f"k1:{KEY_A}"))) as client:
        yield client


def payloads_json(payloads: list[Payload]) -> dict[str, Any]:
    return json_format.MessageToDict(Payloads(payloads=payloads))


def payloads_from(body: dict[str, Any]) -> list[Payload]:
    return list(json_format.ParseDict(body, Payloads()).payloads)


def test_codec_server_encode_then_decode(codec_client: TestClient) -> None:
    plain = json_payload(CONTACT)
    headers = {"X-Namespace": "default", "Origin": UI_ORIGIN}
    resp = codec_client.post("/encode", json=payloads_json([plain]), headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["access-control-allow-origin"] == UI_ORIGIN
    [sealed] = payloads_from(resp.json())
    assert sealed.metadata["encoding"] == ENCODING
    assert EMAIL not in resp.text and EMAIL not in base64.b64decode(
        resp.json()["payloads"][0]["data"]
    ).decode("latin-1")

    resp = codec_client.post("/decode", json=resp.json(), headers=headers)
    assert resp.status_code == 200, resp.text
    [opened] = payloads_from(resp.json())
    assert opened == plain
    assert json.loads(opened.data) == CONTACT


async def test_codec_server_decodes_what_the_worker_wrote(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, f"k1:{KEY_A}")
    sealed = await converter_for(settings).encode([CONTACT, "plain?"])
    unencrypted = json_payload({"from": "temporal CLI"})
    with TestClient(create_codec_app(settings)) as client:
        resp = client.post("/decode", json=payloads_json([*sealed, unencrypted]),
                           headers={"X-Namespace": "default"})
    assert resp.status_code == 200
    values = [json.loads(p.data) for p in payloads_from(resp.json())]
    assert values == [CONTACT, "plain?", {"from": "temporal CLI"}]


def test_codec_server_cors_preflight(codec_client: TestClient) -> None:
    for path in ("/decode", "/encode"):
        resp = codec_client.options(
            path,
            headers={
                "Origin": UI_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-namespace",
            },
        )
        assert resp.status_code == 200, resp.text
        assert resp.headers["access-control-allow-origin"] == UI_ORIGIN
        assert "POST" in resp.headers["access-control-allow-methods"]
        allow_headers = resp.headers["access-control-allow-headers"]
        allowed = {h.strip().lower() for h in allow_headers.split(",")}
        assert {"content-type", "x-namespace"} <= allowed
    resp = codec_client.options(
        "/decode",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert resp.status_code == 400
    assert "access-control-allow-origin" not in resp.headers
    resp = codec_client.post(
        "/decode", json={"payloads": []}, headers={"Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in resp.headers


def test_codec_server_configurable_origins_refuse_wildcard(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, f"k1:{KEY_A}")
    app = create_codec_app(settings, cors_origins=["http://localhost:8080/"])
    with TestClient(app) as client:
        resp = client.options(
            "/decode",
            headers={"Origin": "http://localhost:8080", "Access-Control-Request-Method": "POST"},
        )
        assert resp.headers["access-control-allow-origin"] == "http://localhost:8080"
    with pytest.raises(ValueError, match="'\\*'"):
        create_codec_app(settings, cors_origins=["*"])


def test_codec_server_errors(codec_client: TestClient, tmp_path: Path) -> None:
    ns = {"X-Namespace": "default"}
    resp = codec_client.post("/decode", content=b"{not json", headers=ns)
    assert resp.status_code == 400 and "payloads" in resp.json()["error"]
    resp = codec_client.post("/decode", json={"payloads": []}, headers=ns)
    assert resp.status_code == 200 and payloads_from(resp.json()) == []
    stranger = EncryptionCodec([CodecKey("k9", bytes(32))])
    sealed = asyncio.run(stranger.encode([json_payload("x")]))
    # Anonymous callers (no auth configured: loopback only) get no key ids...
    resp = codec_client.post("/decode", json=payloads_json(sealed), headers=ns)
    assert resp.status_code == 400 and "k9" not in resp.json()["error"]
    # ...an authenticated operator gets the specific error.
    app = create_codec_app(settings_for(tmp_path, f"k1:{KEY_A}"), auth_token="t")
    with TestClient(app) as client:
        resp = client.post("/decode", json=payloads_json(sealed),
                           headers={**ns, "Authorization": "Bearer t"})
    assert resp.status_code == 400 and "'k9'" in resp.json()["error"]
    assert codec_client.get("/decode").status_code == 405
    assert codec_client.get("/healthz").json() == {"status": "ok"}


def test_codec_server_bearer_token(tmp_path: Path) -> None:
    app = create_codec_app(settings_for(tmp_path, f"k1:{KEY_A}"), auth_token="s3cret")
    body = payloads_json([json_payload("x")])
    with TestClient(app) as client:
        assert client.post("/encode", json=body).status_code == 401
        wrong = {"Authorization": "Bearer nope", "X-Namespace": "default"}
        assert client.post("/encode", json=body, headers=wrong).status_code == 401
        right = {"Authorization": "Bearer s3cret", "X-Namespace": "default"}
        assert client.post("/encode", json=body, headers=right).status_code == 200


def test_codec_server_refuses_bad_keys_at_start(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="DUNNING_CODEC_KEYS"):
        create_codec_app(settings_for(tmp_path, "k1:abc"))


# --- end to end: raw history on a real Temporal server ---------------------------------------


@activity.defn(name="codec_test_echo")
async def echo_contact(contact: dict[str, str]) -> dict[str, str]:
    return dict(contact)


@activity.defn(name="codec_test_bounce")
async def bounce_contact(contact: dict[str, str]) -> None:
    raise ApplicationError(
        f"mail to {contact['email']} bounced; try {contact['phone']}",
        contact,
        non_retryable=True,
    )


@workflow.defn(name="CodecTestWorkflow")
class CodecTestWorkflow:
    def __init__(self) -> None:
        self._signalled: dict[str, str] | None = None

    @workflow.signal(name="contact_changed")
    def contact_changed(self, contact: dict[str, str]) -> None:
        self._signalled = contact

    @workflow.run
    async def run(self, contact: dict[str, str]) -> dict[str, Any]:
        timeout = timedelta(seconds=10)
        echoed = await workflow.execute_activity(
            echo_contact, contact, start_to_close_timeout=timeout
        )
        try:
            await workflow.execute_activity(bounce_contact, contact, start_to_close_timeout=timeout)
            bounce = ""
        except ActivityError as err:
            bounce = str(err.cause)
        await workflow.wait_condition(lambda: self._signalled is not None)
        return {"echoed": echoed, "signalled": self._signalled, "bounce": bounce}


def iter_payloads(message: Message) -> Iterator[Payload]:
    """Every Payload anywhere inside a protobuf message (inputs, results, failures, memos...)."""
    if isinstance(message, Payload):
        yield message
        return
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is not None:
                for item in value.values():
                    yield from iter_payloads(item)
        elif field.is_repeated:
            for item in value:
                yield from iter_payloads(item)
        else:
            yield from iter_payloads(value)


async def raw_history(client: Client, workflow_id: str, run_id: str) -> list[History]:
    """The history exactly as the server stores and serves it: no converter, no codec."""
    pages: list[History] = []
    token = b""
    while True:
        resp = await client.workflow_service.get_workflow_execution_history(
            GetWorkflowExecutionHistoryRequest(
                namespace=client.namespace,
                execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id),
                next_page_token=token,
            )
        )
        pages.append(resp.history)
        token = resp.next_page_token
        if not token:
            return pages


async def run_contact_workflow(client: Client) -> tuple[str, str, dict[str, Any]]:
    task_queue = f"codec-test-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[CodecTestWorkflow],
        activities=[echo_contact, bounce_contact],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        handle = await client.start_workflow(
            CodecTestWorkflow.run,
            CONTACT,
            id=f"codec-test-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
            memo={"contact": CONTACT},
            execution_timeout=timedelta(seconds=60),
        )
        await handle.signal(CodecTestWorkflow.contact_changed, CONTACT)
        result = await asyncio.wait_for(handle.result(), timeout=60)
    assert handle.result_run_id
    return handle.id, handle.result_run_id, result


def history_bytes(pages: list[History]) -> bytes:
    return b"".join(page.SerializeToString() for page in pages)


async def test_no_pii_in_raw_workflow_history(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, f"k1:{KEY_A}")
    service = temporal_env.client.service_client
    namespace = temporal_env.client.namespace
    raw_client = Client(service, namespace=namespace)  # the default converter: no codec
    client = Client(service, namespace=namespace, data_converter=converter_for(settings))

    # Control: without the codec the same workflow leaves the PII in history, so the search
    # below can see it when it is there.
    wf_id, run_id, _ = await run_contact_workflow(raw_client)
    leaky = history_bytes(await raw_history(raw_client, wf_id, run_id))
    assert EMAIL.encode() in leaky and PHONE.encode() in leaky

    wf_id, run_id, result = await run_contact_workflow(client)
    assert result["echoed"] == CONTACT and result["signalled"] == CONTACT
    assert EMAIL in result["bounce"]  # the failure message survives the round trip

    pages = await raw_history(raw_client, wf_id, run_id)
    raw = history_bytes(pages)
    as_json = "".join(json_format.MessageToJson(page) for page in pages)
    for secret in (EMAIL, PHONE, PHONE.removeprefix("+1"), "alice.codec-test"):
        assert secret.encode() not in raw, f"{secret!r} found in raw history"
        assert secret not in as_json
    # The history's input, activity inputs and results, signal, memo, failure and result are
    # all there, encrypted.
    payloads = [p for page in pages for p in iter_payloads(page)]
    assert len(payloads) >= 7
    assert all(p.metadata.get("encoding") == ENCODING for p in payloads)
    failures = [e for page in pages for e in page.events if e.HasField(
        "activity_task_failed_event_attributes")]
    assert failures
    failure = failures[0].activity_task_failed_event_attributes.failure
    assert failure.message == "Encoded failure" and not failure.stack_trace

    # The same history read through the codec shows everything.
    codec = codec_for(settings)
    decoded = b"".join(p.data for p in await codec.decode(payloads))
    assert EMAIL.encode() in decoded and PHONE.encode() in decoded
    assert f"mail to {EMAIL} bounced".encode() in decoded

    # And a client with the codec reads the memo back.
    description = await client.get_workflow_handle(wf_id, run_id=run_id).describe()
    assert await description.memo_value("contact") == CONTACT

    # The raw client cannot: it sees ciphertext only.
    raw_description = await raw_client.get_workflow_handle(wf_id, run_id=run_id).describe()
    assert EMAIL not in repr(raw_description.raw_description)



def test_hand_written_key_file_without_newline(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE_NAME
    path.write_text(f"mine:{KEY_A}")
    os.utime(path, (time.time() - 60, time.time() - 60))
    path.chmod(0o600)
    started = time.monotonic()
    assert load_or_create_key_file(path) == CodecKey("mine", bytes.fromhex(KEY_A))
    assert time.monotonic() - started < 1
