"""`dunning codec-server`: Temporal's remote codec endpoints, so the Temporal UI and the `temporal`
CLI can show the engine's encrypted payloads in clear text (and encode what they send).

Protocol (Temporal's "codec server"): `POST /decode` and `POST /encode` with a JSON body
`{"payloads": [...]}` (protobuf JSON of `temporal.api.common.v1.Payloads`, bytes as base64) and an
`X-Namespace` header; the answer has the same shape. The UI calls the endpoint from the browser,
so the UI's origin must be allowed by CORS (`cors_origins`). Point the UI at it with
`TEMPORAL_CODEC_ENDPOINT` (or `temporal server start-dev --ui-codec-endpoint URL`), the CLI with
`temporal workflow show --codec-endpoint URL --codec-auth "Bearer <token>"`.

Access control (`dunning.platform.codec_access`): both endpoints require
`Authorization: Bearer <DUNNING_CODEC_AUTH_TOKEN>` or a JWT verified against
`DUNNING_CODEC_JWKS_URL` (what the UI forwards with `TEMPORAL_CODEC_PASS_ACCESS_TOKEN=true`),
and an `X-Namespace` from `DUNNING_CODEC_NAMESPACES`. Without authentication configured the
server refuses to listen on anything but a loopback address. The caller is checked from the
headers before the body is read; the body is read in chunks and refused (413) as soon as it
passes `DUNNING_CODEC_MAX_BODY_BYTES`. Every call leaves one access-log line (caller, namespace,
number of payloads, status), never payload contents.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import uvicorn
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payload, Payloads

from dunning.platform.codec import CodecError, codec_for
from dunning.platform.codec_access import Caller, CodecGate, Refusal, RefusalLog
from dunning.platform.settings import Settings, SettingsError, is_loopback_host

log = logging.getLogger("dunning.codec_server")
access_log = logging.getLogger("dunning.codec_server.access")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8081
DEFAULT_CORS_ORIGINS: tuple[str, ...] = ("http://localhost:8233", "http://127.0.0.1:8233")
ALLOWED_HEADERS = ("content-type", "x-namespace", "authorization")
MAX_BODY_BYTES = 16 * 1024 * 1024

PayloadFn = Callable[[Sequence[Payload]], Awaitable[list[Payload]]]


class InsecureCodecServer(SettingsError):
    """Asked to listen beyond loopback without authentication."""


class BodyTooLarge(Exception):
    pass


def _error(status: int, message: str, *, close: bool = False) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="codec"'} if status == 401 else {}
    if close:
        headers["Connection"] = "close"
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _check_origins(origins: Sequence[str]) -> list[str]:
    cleaned = [o.strip().rstrip("/") for o in origins if o.strip()]
    if "*" in cleaned:
        raise ValueError(
            "codec server CORS origin '*' is refused: it would let any web page decrypt "
            "payloads through a browser that can reach this server; list the UI's origin"
        )
    return cleaned


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, read chunk by chunk; BodyTooLarge as soon as it passes `limit` (a
    declared Content-Length over the limit is refused before anything is read)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


def create_codec_app(
    settings: Settings,
    *,
    cors_origins: Sequence[str] = DEFAULT_CORS_ORIGINS,
    auth_token: str | None = None,
    gate: CodecGate | None = None,
    max_body_bytes: int | None = None,
) -> Starlette:
    """The ASGI app. Keys are loaded now, so bad keys fail at start, not on the first request.
    Access follows the settings (`auth_token` overrides DUNNING_CODEC_AUTH_TOKEN)."""
    codec = codec_for(settings)
    origins = _check_origins(cors_origins)
    gate = gate or CodecGate.from_settings(settings, token=auth_token)
    limit = max_body_bytes or settings.codec_max_body_bytes
    refusals = RefusalLog(access_log)

    async def apply(request: Request, op: str, fn: PayloadFn) -> Response:
        started = time.monotonic()
        client = request.client.host if request.client else "?"
        fields: dict[str, object] = {"op": op, "client": client, "caller": "?",
                                     "namespace": None}
        caller: Caller | None = None
        try:
            caller = await gate.authenticate(request.headers.get("authorization"))
            fields["caller"] = caller.who
            fields["namespace"] = gate.check_namespace(request.headers.get("x-namespace"), caller)
            body = await read_limited(request, limit)
        except Refusal as refusal:
            fields.update(status=refusal.status, reason=refusal.reason)
            refusals.refused(fields)
            return _error(refusal.status, refusal.public, close=refusal.status == 401)
        except BodyTooLarge:
            fields.update(status=413, reason=f"body over {limit} bytes")
            refusals.refused(fields)
            return _error(413, f"request body too large (limit {limit} bytes)", close=True)
        except ClientDisconnect:
            fields.update(status=400, reason="client disconnected")
            refusals.refused(fields)
            return _error(400, "client disconnected", close=True)
        detailed = caller.authenticated
        try:
            payloads = json_format.Parse(body or b"{}", Payloads(), ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError, UnicodeDecodeError) as exc:
            fields.update(status=400, reason="malformed body")
            refusals.refused(fields)
            message = 'body must be {"payloads": [...]} in protobuf JSON'
            return _error(400, f"{message}: {str(exc)[:200]}" if detailed else message)
        fields["payloads"] = len(payloads.payloads)
        try:
            result = await fn(payloads.payloads)
        except CodecError as exc:
            # The key id and cause go to the log; an anonymous caller learns nothing of them.
            fields.update(status=400, reason=str(exc))
            access_log.warning("codec %s failed: %s", op, exc, extra=fields)
            return _error(400, str(exc) if detailed else "a payload could not be decoded")
        fields.update(status=200, ms=round((time.monotonic() - started) * 1000, 1))
        access_log.info("codec %s by %s (namespace %s): %d payloads", op, fields["caller"],
                        fields["namespace"], fields["payloads"], extra=fields)
        return Response(
            json.dumps(json_format.MessageToDict(Payloads(payloads=result))),
            media_type="application/json",
        )

    async def encode(request: Request) -> Response:
        return await apply(request, "encode", codec.encode)

    async def decode(request: Request) -> Response:
        return await apply(request, "decode", codec.decode)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[
            Route("/encode", encode, methods=["POST"]),
            Route("/decode", decode, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=origins,
                allow_methods=["POST", "OPTIONS"],
                allow_headers=list(ALLOWED_HEADERS),
                allow_credentials=True,
                max_age=600,
            )
        ],
    )
    return app


def check_bind(host: str, gate: CodecGate) -> None:
    """Refuse (InsecureCodecServer, one line) to serve beyond loopback without authentication."""
    if not gate.requires_auth and not is_loopback_host(host):
        raise InsecureCodecServer(
            f"refusing to serve the codec server on {host} without authentication (anyone who "
            "reaches it could decrypt payloads): set DUNNING_CODEC_AUTH_TOKEN or "
            "DUNNING_CODEC_JWKS_URL, or listen on 127.0.0.1"
        )


def build_codec_server(
    settings: Settings,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    cors_origins: Sequence[str] = DEFAULT_CORS_ORIGINS,
    auth_token: str | None = None,
    log_level: str = "info",
    gate: CodecGate | None = None,
) -> uvicorn.Server:
    """A uvicorn server for the codec app; `await server.serve()` runs it in an existing loop
    (e.g. inside `dunning up`), `server.should_exit = True` stops it. Raises
    InsecureCodecServer for a non-loopback host without authentication."""
    gate = gate or CodecGate.from_settings(settings, token=auth_token)
    check_bind(host, gate)
    app = create_codec_app(settings, cors_origins=cors_origins, gate=gate)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, server_header=False, access_log=False,
        log_config=None,
    )
    return uvicorn.Server(config)


def run_codec_server(
    settings: Settings,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    cors_origins: Sequence[str] = DEFAULT_CORS_ORIGINS,
    auth_token: str | None = None,
) -> None:
    """`dunning codec-server`: serve until SIGINT/SIGTERM."""
    gate = CodecGate.from_settings(settings, token=auth_token)
    server = build_codec_server(settings, host, port, cors_origins=cors_origins, gate=gate)
    log.info("codec server on http://%s:%d (auth: %s; namespaces: %s; CORS origins: %s)",
             host, port, "+".join(gate.methods), ", ".join(gate.namespaces),
             ", ".join(cors_origins) or "none")
    server.run()


__all__ = [
    "DEFAULT_CORS_ORIGINS",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "InsecureCodecServer",
    "build_codec_server",
    "check_bind",
    "create_codec_app",
    "read_limited",
    "run_codec_server",
]
