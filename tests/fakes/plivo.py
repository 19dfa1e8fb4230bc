"""A loopback HTTP server that answers like Plivo's message API.

The real `plivo` SDK is pointed at it (DUNNING_PLIVO_API_URL). It records every message request it
receives, and can be told to answer the next requests with errors, delays or dropped connections.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Scripted:
    status: int = 202
    body: dict[str, Any] | None = None
    delay: float = 0.0
    drop: bool = False  # close the connection without answering


@dataclass
class ReceivedMessage:
    auth_id: str
    src: str
    dst: str
    text: str
    url: str | None
    method: str | None
    message_uuid: str
    accepted: bool
    raw: dict[str, Any] = field(default_factory=dict)


class FakePlivo:
    def __init__(self, auth_id: str = "MAFAKEAUTHID00000001", auth_token: str = "fake-token"):
        self.auth_id = auth_id
        self.auth_token = auth_token
        self.requests: list[ReceivedMessage] = []
        self.script: deque[Scripted] = deque()
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                fake._handle(self, body)

        class QuietServer(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                return  # a client that hung up mid-answer (killed worker, timeout) is expected

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakePlivo:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def push(self, *items: Scripted) -> None:
        with self.lock:
            self.script.extend(items)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.script.clear()

    def accepted(self, dst: str | None = None) -> list[ReceivedMessage]:
        with self.lock:
            return [r for r in self.requests if r.accepted and (dst is None or r.dst == dst)]

    def _reply(self, h: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _handle(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        parts = [p for p in h.path.split("/") if p]
        # /v1/Account/{auth_id}/Message/
        if len(parts) < 4 or parts[0] != "v1" or parts[1] != "Account" or parts[3] != "Message":
            self._reply(h, 404, {"error": "not found"})
            return
        auth = h.headers.get("Authorization", "")
        expected = "Basic " + base64.b64encode(
            f"{self.auth_id}:{self.auth_token}".encode()
        ).decode()
        if auth != expected or parts[2] != self.auth_id:
            self._reply(h, 401, {"error": "authentication failed"})
            return
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            self._reply(h, 400, {"error": "invalid JSON"})
            return
        with self.lock:
            step = self.script.popleft() if self.script else Scripted()
        if step.delay:
            time.sleep(step.delay)
        accepted = step.status == 202 and not step.drop
        msg_uuid = str(uuid.uuid4())
        with self.lock:
            self.requests.append(
                ReceivedMessage(
                    parts[2], str(payload.get("src")), str(payload.get("dst")),
                    str(payload.get("text")), payload.get("url"), payload.get("method"),
                    msg_uuid, accepted, payload,
                )
            )
        if step.drop:
            h.close_connection = True
            h.connection.close()
            return
        if step.status == 202:
            self._reply(h, 202, step.body or {
                "api_id": str(uuid.uuid4()), "message": "message(s) queued",
                "message_uuid": [msg_uuid],
            })
        else:
            self._reply(h, step.status, step.body or {"api_id": str(uuid.uuid4()),
                                                     "error": f"scripted {step.status}"})
