"""`dunning codec-server`: Temporal's remote codec endpoints, so the Temporal UI and the `temporal`
CLI can show the engine's encrypted payloads in clear text (and encode what they send).

Protocol (Temporal's "codec server"): `POST /decode` and `POST /encode` with a JSON body
`{"payloads": [...]}` (protobuf JSON of `temporal.api.common.v1.Payloads`, bytes as base64) and an
`X-Namespace` header; the answer has the same shape. The UI calls the endpoint from the browser,
so the UI's origin must be allowed by CORS (`cors_origins`). Point the UI at it with
`TEMPORAL_CODEC_ENDPOINT` (or `temporal server start-dev --ui-codec-endpoint URL`), the CLI with
`temporal workflow show --codec-endpoint URL`.

Anyone who can reach this server can decrypt payloads: bind it to loopback (the default) or put
it behind the same access control as the UI. `auth_token` makes it require
`Authorization: Bearer <token>` (the CLI sends it with `--codec-auth "Bearer <token>"`; the UI
can forward its own OIDC access token with `TEMPORAL_CODEC_PASS_ACCESS_TOKEN=true`).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Sequence

import uvicorn
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payload, Payloads

from dunning.platform.codec import CodecError, codec_for
from dunning.platform.settings import Settings

log = logging.getLogger("dunning.codec_server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8081
DEFAULT_CORS_ORIGINS: tuple[str, ...] = ("http://localhost:8233", "http://127.0.0.1:8233")
ALLOWED_HEADERS = ("content-type", "x-namespace", "authorization")
MAX_BODY_BYTES = 64 * 1024 * 1024

PayloadFn = Callable[[Sequence[Payload]], Awaitable[list[Payload]]]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _check_origins(origins: Sequence[str]) -> list[str]:
    cleaned = [o.strip().rstrip("/") for o in origins if o.strip()]
    if "*" in cleaned:
        raise ValueError(
            "codec server CORS origin '*' is refused: it would let any web page decrypt "
            "payloads through a browser that can reach this server; list the UI's origin"
        )
    return cleaned


def create_codec_app(
    settings: Settings,
    *,
    cors_origins: Sequence[str] = DEFAULT_CORS_ORIGINS,
    auth_token: str | None = None,
) -> Starlette:
    """The ASGI app. Keys are loaded now, so bad keys fail at start, not on the first request."""
    codec = codec_for(settings)
    origins = _check_origins(cors_origins)
    expected_auth = f"Bearer {auth_token}".encode() if auth_token else None

    async def apply(request: Request, fn: PayloadFn) -> Response:
        if expected_auth is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected_auth):
                return _error(401, "missing or wrong Authorization bearer token")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _error(413, "request body too large")
        try:
            payloads = json_format.Parse(body or b"{}", Payloads(), ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError, UnicodeDecodeError) as exc:
            return _error(400, f'body must be {{"payloads": [...]}} in protobuf JSON: {exc}')
        try:
            result = await fn(payloads.payloads)
        except CodecError as exc:
            log.warning("codec request failed (namespace %s): %s",
                        request.headers.get("x-namespace", "?"), exc)
            return _error(400, str(exc))
        return Response(
            json.dumps(json_format.MessageToDict(Payloads(payloads=result))),
            media_type="application/json",
        )

    async def encode(request: Request) -> Response:
        return await apply(request, codec.encode)

    async def decode(request: Request) -> Response:
        return await apply(request, codec.decode)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
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


def build_codec_server(
    settings: Settings,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    cors_origins: Sequence[str] = DEFAULT_CORS_ORIGINS,
    auth_token: str | None = None,
    log_level: str = "info",
) -> uvicorn.Server:
    """A uvicorn server for the codec app; `await server.serve()` runs it in an existing loop
    (e.g. inside `dunning up`), `server.should_exit = True` stops it."""
    app = create_codec_app(settings, cors_origins=cors_origins, auth_token=auth_token)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, server_header=False, access_log=False
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
    server = build_codec_server(
        settings, host, port, cors_origins=cors_origins, auth_token=auth_token
    )
    log.info("codec server on http://%s:%d (CORS origins: %s)", host, port,
             ", ".join(cors_origins) or "none")
    server.run()


__all__ = [
    "DEFAULT_CORS_ORIGINS",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "build_codec_server",
    "create_codec_app",
    "run_codec_server",
]
