"""Who may decrypt: the codec server's access control, tried from outside.

A real `dunning codec-server` process on loopback, called over real HTTP: a static bearer token,
JWTs from a loopback identity provider (good, forged, expired, for another audience or issuer,
for a subject that is not allowed), namespaces, a 300 MiB body (the server's peak memory is read
from /proc), the access log, and the `temporal` CLI decoding through it with `--codec-auth`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from google.protobuf import json_format
from starlette.testclient import TestClient
from temporalio.api.common.v1 import Payloads
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.testing import WorkflowEnvironment

from dunning.domain.contract import WORKFLOW_TYPE
from dunning.platform.codec import CodecKey, EncryptionCodec, converter_for, parse_keys
from dunning.platform.codec_access import CodecGate, JwtVerifier
from dunning.platform.codec_server import (
    InsecureCodecServer,
    check_bind,
    create_codec_app,
)
from dunning.platform.settings import Settings, SettingsError, load_settings
from dunning.platform.temporal import temporal_binary
from tests.fakes.identity import FakeIdentityProvider, SigningKey

DUNNING = str(Path(sys.executable).parent / "dunning")
EMAIL = "jane.codec-access@example.com"
KEYS = "k1:" + "5e" * 32
TOKEN = "static-" + uuid.uuid4().hex
MiB = 1024 * 1024


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DUNNING_", "PLIVO_", "TEMPORAL_"))}
    env.update(extra)
    return env


def sealed_body(value: Any = None) -> dict[str, Any]:
    codec = EncryptionCodec(parse_keys(KEYS))
    plain = DataConverter.default.payload_converter.to_payloads(
        [value or {"email": EMAIL, "billing_link": "https://pay.test/x"}]
    )[0]
    sealed = codec.encrypt_payload(plain)
    return json_format.MessageToDict(Payloads(payloads=[sealed]))


def rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


class CodecProcess:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def post(self, path: str, body: Any = None, *, auth: str | None = None,
             namespace: str | None = "default", **kw: Any) -> httpx.Response:
        headers = {"content-type": "application/json"}
        if auth is not None:
            headers["authorization"] = auth
        if namespace is not None:
            headers["x-namespace"] = namespace
        return httpx.post(self.url + path, json=body if body is not None else sealed_body(),
                          headers=headers, timeout=30, **kw)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_codec_process(tmp: Path, env: dict[str, str], *args: str) -> CodecProcess:
    port = free_port()
    log = tmp / f"codec-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([DUNNING, "codec-server", "--port", str(port), *args],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return CodecProcess(proc, url, log)
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"codec server did not start: {log.read_text()}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def idp() -> Iterator[FakeIdentityProvider]:
    provider = FakeIdentityProvider().start()
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def codec_proc(tmp_path_factory: pytest.TempPathFactory,
               idp: FakeIdentityProvider) -> Iterator[CodecProcess]:
    tmp = tmp_path_factory.mktemp("codec-access")
    env = clean_env(
        DUNNING_DATA_DIR=str(tmp / "data"), DUNNING_CODEC_KEYS=KEYS,
        DUNNING_CODEC_AUTH_TOKEN=TOKEN, DUNNING_CODEC_JWKS_URL=idp.jwks_url,
        DUNNING_CODEC_JWT_AUDIENCE=idp.audience, DUNNING_CODEC_JWT_ISSUER=idp.issuer,
        DUNNING_CODEC_ALLOWED_SUBJECTS="user-1, ops@example.test",
        DUNNING_CODEC_NAMESPACES="default,billing", DUNNING_LOG_FORMAT="json",
    )
    server = start_codec_process(tmp, env)
    yield server
    server.proc.terminate()
    try:
        server.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.proc.kill()


def decoded_email(resp: httpx.Response) -> str:
    payloads = json_format.ParseDict(resp.json(), Payloads())
    return str(DataConverter.default.payload_converter.from_payloads(
        list(payloads.payloads), [dict])[0]["email"])


def assert_refused(resp: httpx.Response, status: int) -> None:
    assert resp.status_code == status, resp.text
    assert EMAIL not in resp.text and "k1" not in resp.text and "key" not in resp.text.lower()
    assert resp.json() == {"error": "unauthorized" if status == 401 else "forbidden"}


# --- static token -------------------------------------------------------------------------


def test_unauthenticated_calls_are_refused(codec_proc: CodecProcess) -> None:
    for path in ("/decode", "/encode"):
        resp = codec_proc.post(path)
        assert_refused(resp, 401)
        assert resp.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("auth", [
    "Bearer wrong-token", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer",
    f"Bearer {TOKEN[:-1]}",
])
def test_wrong_token_is_refused(codec_proc: CodecProcess, auth: str) -> None:
    assert_refused(codec_proc.post("/decode", auth=auth), 401)
    assert_refused(codec_proc.post("/encode", {"payloads": []}, auth=auth), 401)


def test_static_token_decodes_and_encodes(codec_proc: CodecProcess) -> None:
    resp = codec_proc.post("/decode", auth=f"Bearer {TOKEN}")
    assert resp.status_code == 200, resp.text
    assert decoded_email(resp) == EMAIL
    plain = DataConverter.default.payload_converter.to_payloads(["hello"])[0]
    body = json_format.MessageToDict(Payloads(payloads=[plain]))
    enc = codec_proc.post("/encode", body, auth=f"bearer {TOKEN}")
    assert enc.status_code == 200
    [sealed] = json_format.ParseDict(enc.json(), Payloads()).payloads
    assert sealed.metadata["encoding"] == b"binary/encrypted"


# --- JWTs forwarded by the UI --------------------------------------------------------------


def test_jwt_from_the_identity_provider_decodes(
    codec_proc: CodecProcess, idp: FakeIdentityProvider
) -> None:
    resp = codec_proc.post("/decode", auth=f"Bearer {idp.token(sub='user-1')}")
    assert resp.status_code == 200, resp.text
    assert decoded_email(resp) == EMAIL
    # Allowed by its (verified) email instead of its subject.
    token = idp.token(sub="u-9", email="OPS@example.test", email_verified=True)
    assert codec_proc.post("/decode", auth=f"Bearer {token}").status_code == 200


def test_jwt_signed_by_another_key_is_refused(
    codec_proc: CodecProcess, idp: FakeIdentityProvider
) -> None:
    impostor_same_kid = SigningKey(kid=idp.key.kid)
    impostor_own_kid = SigningKey()
    for key in (impostor_same_kid, impostor_own_kid):
        assert_refused(codec_proc.post("/decode", auth=f"Bearer {idp.token(key=key)}"), 401)


def test_expired_jwt_is_refused(codec_proc: CodecProcess, idp: FakeIdentityProvider) -> None:
    token = idp.token(expires_in=-120)  # beyond the 30 s leeway
    assert_refused(codec_proc.post("/decode", auth=f"Bearer {token}"), 401)
    no_exp = idp.token(exp=None)
    assert_refused(codec_proc.post("/decode", auth=f"Bearer {no_exp}"), 401)


@pytest.mark.parametrize("claims", [
    {"aud": "some-other-app"}, {"iss": "https://evil.test/"}, {"aud": None}, {"iss": None},
])
def test_jwt_for_another_audience_or_issuer_is_refused(
    codec_proc: CodecProcess, idp: FakeIdentityProvider, claims: dict[str, Any]
) -> None:
    assert_refused(codec_proc.post("/decode", auth=f"Bearer {idp.token(**claims)}"), 401)


def test_jwt_with_symmetric_or_no_algorithm_is_refused(
    codec_proc: CodecProcess, idp: FakeIdentityProvider
) -> None:
    claims = {"iss": idp.issuer, "aud": idp.audience, "sub": "user-1",
              "exp": int(time.time()) + 300}

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    body = b64(json.dumps(claims).encode())
    # The classic confusion: HMAC keyed with the (public) RSA key the JWKS publishes.
    public_pem = idp.key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    hs_header = b64(json.dumps({"alg": "HS256", "kid": idp.key.kid}).encode())
    mac = hmac.new(public_pem, f"{hs_header}.{body}".encode(), hashlib.sha256).digest()
    forged_hs = f"{hs_header}.{body}.{b64(mac)}"
    none_header = b64(json.dumps({"alg": "none", "kid": idp.key.kid}).encode())
    for token in (forged_hs, f"{none_header}.{body}."):
        assert_refused(codec_proc.post("/decode", auth=f"Bearer {token}"), 401)


def test_subject_not_allowed_is_forbidden(
    codec_proc: CodecProcess, idp: FakeIdentityProvider
) -> None:
    assert_refused(codec_proc.post("/decode", auth=f"Bearer {idp.token(sub='mallory')}"), 403)
    # An unverified email claim does not count.
    token = idp.token(sub="u-7", email="ops@example.test", email_verified=False)
    assert_refused(codec_proc.post("/decode", auth=f"Bearer {token}"), 403)


def test_jwks_is_cached(codec_proc: CodecProcess, idp: FakeIdentityProvider) -> None:
    codec_proc.post("/decode", auth=f"Bearer {idp.token()}")  # fetched by now
    before = idp.jwks_fetches
    for _ in range(5):
        assert codec_proc.post("/decode", auth=f"Bearer {idp.token()}").status_code == 200
    for _ in range(5):  # unknown key ids: at most one forced re-fetch (cooldown)
        codec_proc.post("/decode", auth=f"Bearer {idp.token(key=SigningKey())}")
    assert idp.jwks_fetches - before <= 1


def test_identity_provider_down_is_503_without_details(tmp_path: Path) -> None:
    provider = FakeIdentityProvider().start()
    provider.down = True
    try:
        gate = CodecGate(verifier=JwtVerifier(provider.jwks_url, audience=provider.audience,
                                              issuer=provider.issuer, timeout=2))
        settings = Settings(data_dir=tmp_path, codec_keys=KEYS, _env_file=None)
        with TestClient(create_codec_app(settings, gate=gate)) as client:
            for _ in range(3):
                resp = client.post("/decode", json=sealed_body(), headers={
                    "x-namespace": "default", "authorization": f"Bearer {provider.token()}"})
                assert resp.status_code == 503
                assert resp.json() == {"error": "authentication is unavailable, try again later"}
        # Calls right after a failed fetch fail fast instead of each waiting on the provider.
        assert provider.jwks_fetches == 1
    finally:
        provider.stop()


def test_browser_preflight_and_healthz_need_no_token(codec_proc: CodecProcess) -> None:
    """The UI's browser sends a CORS preflight without credentials before each call."""
    resp = httpx.options(codec_proc.url + "/decode", headers={
        "Origin": "http://localhost:8233", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-namespace"})
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == "http://localhost:8233"
    assert "authorization" in resp.headers["access-control-allow-headers"].lower()
    assert httpx.get(codec_proc.url + "/healthz").json() == {"status": "ok"}
    evil = httpx.options(codec_proc.url + "/decode", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in evil.headers


# --- namespaces ----------------------------------------------------------------------------


def test_other_namespaces_are_forbidden(codec_proc: CodecProcess) -> None:
    auth = f"Bearer {TOKEN}"
    resp = codec_proc.post("/decode", auth=auth, namespace="payments-prod")
    assert resp.status_code == 403 and EMAIL not in resp.text
    assert "not served" in resp.json()["error"]
    assert codec_proc.post("/decode", auth=auth, namespace=None).status_code == 403
    assert codec_proc.post("/encode", {"payloads": []}, auth=auth,
                           namespace="payments-prod").status_code == 403
    resp = codec_proc.post("/decode", auth=auth, namespace="billing")
    assert resp.status_code == 200 and decoded_email(resp) == EMAIL
    # Unauthenticated callers learn nothing about namespaces.
    assert_refused(codec_proc.post("/decode", namespace="payments-prod"), 401)


# --- body limit ----------------------------------------------------------------------------


def _raw_request(url: str, headers: dict[str, str]) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    lines = ["POST /decode HTTP/1.1", f"Host: {host}:{port}",
             *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    sock.sendall("\r\n".join(lines).encode())
    return sock


def _status_of(sock: socket.socket) -> int | None:
    try:
        head = sock.recv(4096)
    except OSError:
        return None
    return int(head.split()[1]) if head.startswith(b"HTTP/1.1") else None


def _stream_chunks(sock: socket.socket, total: int, chunk: int = MiB) -> int:
    """Send `total` bytes chunked until the server stops taking them; bytes sent."""
    piece = b"A" * chunk
    sent = 0
    try:
        while sent < total:
            sock.sendall(f"{chunk:x}\r\n".encode() + piece + b"\r\n")
            sent += chunk
        sock.sendall(b"0\r\n\r\n")
    except OSError:
        pass
    return sent


def test_declared_huge_body_is_refused_before_reading(codec_proc: CodecProcess) -> None:
    sock = _raw_request(codec_proc.url, {
        "Authorization": f"Bearer {TOKEN}", "X-Namespace": "default",
        "Content-Type": "application/json", "Content-Length": str(300 * MiB)})
    with sock:
        assert _status_of(sock) == 413  # answered with no byte of the body sent
    unauth = _raw_request(codec_proc.url, {"Content-Length": str(300 * MiB)})
    with unauth:
        assert _status_of(unauth) == 401


def test_300_mib_streamed_body_keeps_memory_bounded(codec_proc: CodecProcess) -> None:
    pid = codec_proc.proc.pid
    assert codec_proc.post("/decode", auth=f"Bearer {TOKEN}").status_code == 200  # warm
    peak_before = rss_peak_kib(pid)
    for auth in ({"Authorization": f"Bearer {TOKEN}"}, {}):
        sock = _raw_request(codec_proc.url, {
            **auth, "X-Namespace": "default", "Content-Type": "application/json",
            "Transfer-Encoding": "chunked"})
        with sock:
            sent = _stream_chunks(sock, 300 * MiB)
            status = _status_of(sock)
        assert sent < 300 * MiB, "the server kept reading a body far over its limit"
        assert status in (413, 401, None)  # None: reset before the answer could be read
    growth_mib = (rss_peak_kib(pid) - peak_before) / 1024
    # The limit is 16 MiB; before the fix a 300 MiB body grew the process by ~615 MB.
    assert growth_mib < 48, f"peak RSS grew by {growth_mib:.0f} MiB"
    assert codec_proc.post("/decode", auth=f"Bearer {TOKEN}").status_code == 200  # still up


# --- the access log ------------------------------------------------------------------------


def test_access_log_has_who_namespace_count_and_no_payload_data(
    codec_proc: CodecProcess, idp: FakeIdentityProvider
) -> None:
    marker_ns = "billing"
    body = sealed_body()
    sealed_b64 = body["payloads"][0]["data"]
    jwt_token = idp.token(sub="user-1")
    assert codec_proc.post("/decode", body, auth=f"Bearer {TOKEN}",
                           namespace=marker_ns).status_code == 200
    assert codec_proc.post("/decode", body, auth=f"Bearer {jwt_token}").status_code == 200
    assert codec_proc.post("/decode", body, auth="Bearer nope").status_code == 401
    time.sleep(0.3)
    text = codec_proc.log_text()
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    calls = [r for r in records if r.get("logger") == "dunning.codec_server.access"]
    ok = [r for r in calls if r.get("status") == 200 and r.get("op") == "decode"]
    assert any(r["caller"] == "token" and r["namespace"] == marker_ns and r["payloads"] == 1
               for r in ok)
    assert any(r["caller"] == "jwt:user-1" and r["namespace"] == "default" for r in ok)
    assert any(r.get("status") == 401 and r["caller"] == "?" for r in calls)
    # Never payload contents (clear or sealed), tokens or the JWT.
    for secret in (EMAIL, "pay.test", sealed_b64[:40], TOKEN, jwt_token, "json/plain"):
        assert secret not in text, f"{secret[:20]}... reached the log"


# --- start-up --------------------------------------------------------------------------------


def test_refuses_to_listen_beyond_loopback_without_auth(tmp_path: Path) -> None:
    env = clean_env(DUNNING_DATA_DIR=str(tmp_path), DUNNING_CODEC_KEYS=KEYS)
    result = subprocess.run([DUNNING, "codec-server", "--host", "0.0.0.0", "--port",
                             str(free_port())], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing" in lines[0] and "DUNNING_CODEC_AUTH_TOKEN" in lines[0]
    assert "Traceback" not in result.stderr
    # Via the setting, too.
    env["DUNNING_CODEC_HOST"] = "10.1.2.3"
    result = subprocess.run([DUNNING, "codec-server"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1 and "refusing" in result.stderr


def test_check_bind_rules(tmp_path: Path) -> None:
    open_gate = CodecGate()
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, open_gate)
    for host in ("0.0.0.0", "::", "10.0.0.5", "codec.internal"):
        with pytest.raises(InsecureCodecServer):
            check_bind(host, open_gate)
        check_bind(host, CodecGate(token="t"))


def test_jwks_settings_need_audience_and_issuer(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="DUNNING_CODEC_JWT_AUDIENCE"):
        load_settings(data_dir=tmp_path, codec_jwks_url="https://idp.test/jwks", _env_file=None)
    with pytest.raises(SettingsError, match=r"DUNNING_CODEC_JWKS_URL.*https"):
        load_settings(data_dir=tmp_path, codec_jwks_url="http://idp.test/jwks",
                      codec_jwt_audience="a", codec_jwt_issuer="i", _env_file=None)
    settings = load_settings(data_dir=tmp_path, codec_auth_token="s3cr3t-value",
                             _env_file=None)
    assert "s3cr3t-value" not in repr(settings)


def test_anonymous_loopback_callers_get_generic_errors(tmp_path: Path) -> None:
    """Without auth (loopback only), decode errors never name key ids or echo the body."""
    settings = Settings(data_dir=tmp_path, codec_keys=KEYS, _env_file=None)
    stranger = EncryptionCodec([CodecKey("secret-key-id", bytes(32))])
    plain = DataConverter.default.payload_converter.to_payloads(["x"])[0]
    body = json_format.MessageToDict(Payloads(payloads=[stranger.encrypt_payload(plain)]))
    with TestClient(create_codec_app(settings)) as client:
        resp = client.post("/decode", json=body, headers={"x-namespace": "default"})
        assert resp.status_code == 400
        assert resp.json() == {"error": "a payload could not be decoded"}
        resp = client.post("/decode", content=b'{"payloads": [secret-value',
                           headers={"x-namespace": "default"})
        assert resp.status_code == 400 and "secret" not in resp.text
    with TestClient(create_codec_app(settings, auth_token="t")) as client:
        resp = client.post("/decode", json=body,
                           headers={"x-namespace": "default", "authorization": "Bearer t"})
        assert resp.status_code == 400 and "secret-key-id" in resp.json()["error"]


# --- the temporal CLI -----------------------------------------------------------------------


def history_text(output: str) -> str:
    """The CLI's JSON history with every payload's base64 `data` decoded, as one text."""
    found: list[str] = [output]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("data"), str) and "metadata" in node:
                with contextlib.suppress(ValueError):
                    found.append(base64.b64decode(node["data"]).decode("utf-8", "replace"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    with contextlib.suppress(ValueError):
        walk(json.loads(output))
    return "\n".join(found)


async def test_temporal_cli_decodes_through_it_with_codec_auth(
    codec_proc: CodecProcess, temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, codec_keys=KEYS, _env_file=None)
    address = temporal_env.client.service_client.config.target_host
    client = await Client.connect(address, data_converter=converter_for(settings))
    wid = f"codec-cli-{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow(
        WORKFLOW_TYPE, {"email": EMAIL}, id=wid, task_queue=f"nobody-{wid}")
    try:
        base = [temporal_binary(), "workflow", "show", "--workflow-id", wid, "--address",
                address, "--namespace", "default", "--output", "json",
                "--codec-endpoint", codec_proc.url]
        shown = subprocess.run([*base, "--codec-auth", f"Bearer {TOKEN}"],
                               capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert EMAIL in history_text(shown.stdout)
        refused = subprocess.run([*base, "--codec-auth", "Bearer wrong"],
                                 capture_output=True, text=True, timeout=60)
        assert EMAIL not in history_text(refused.stdout)
    finally:
        await handle.terminate()
