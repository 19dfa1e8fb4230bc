"""A loopback HTTP server that answers like Plivo's message API.

The real `plivo` SDK is pointed at it (DUNNING_PLIVO_API_URL). It records every message request it
receives, and can be told to answer the next requests with errors, delays or dropped connections.

Like Plivo, it keeps a message list of what it accepted: `GET /v1/Account/{id}/Message/` with
`message_direction`, `from_number`, `to_number`, `message_time__gte` (and the other
`message_time` bounds), `limit` (1-20) and `offset`, newest first, `meta.next` naming the next
page; `GET /v1/Account/{id}/Message/{uuid}/` fetches one. A message accepted with a dropped
answer (`Scripted(drop_after_accept=True)`) is in the list although its sender never heard back.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Scripted:
    status: int = 202
    body: dict[str, Any] | None = None
    delay: float = 0.0
    drop: bool = False  # close the connection without answering (nothing taken)
    drop_after_accept: bool = False  # take the message, then close without answering


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
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


class FakePlivo:
    def __init__(self, auth_id: str = "MAFAKEAUTHID00000001", auth_token: str = "fake-token"):
        self.auth_id = auth_id
        self.auth_token = auth_token
        self.requests: list[ReceivedMessage] = []
        self.script: deque[Scripted] = deque()
        self.lock = threading.Lock()
        self.list_requests = 0
        self.arrived = 0  # message requests received, counted before any scripted delay
        self.arrived_to: list[str] = []  # their destinations, in order of arrival
        self.down = False  # answer every request (sends and lists) with 503
        self.on_message: Any = None  # called with each accepted ReceivedMessage (fault hooks)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                fake._handle(self, body)

            def do_GET(self) -> None:
                fake._handle_get(self)

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
            self.arrived_to.clear()
            self.down = False
            self.on_message = None

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
            self.arrived += 1
            self.arrived_to.append(str(payload.get("dst")))
            step = self.script.popleft() if self.script and not self.down else Scripted()
        if step.delay:
            time.sleep(step.delay)
        accepted = step.status == 202 and not step.drop and not self.down
        msg_uuid = str(uuid.uuid4())
        received = ReceivedMessage(
            parts[2], str(payload.get("src")), str(payload.get("dst")),
            str(payload.get("text")), payload.get("url"), payload.get("method"),
            msg_uuid, accepted, payload,
        )
        with self.lock:
            self.requests.append(received)
        if accepted and self.on_message is not None:
            self.on_message(received)
        if step.drop or step.drop_after_accept:
            h.close_connection = True
            h.connection.close()
            return
        if self.down:
            self._reply(h, 503, {"api_id": str(uuid.uuid4()), "error": "service unavailable"})
            return
        if step.status == 202:
            self._reply(h, 202, step.body or {
                "api_id": str(uuid.uuid4()), "message": "message(s) queued",
                "message_uuid": [msg_uuid],
            })
        else:
            self._reply(h, step.status, step.body or {"api_id": str(uuid.uuid4()),
                                                     "error": f"scripted {step.status}"})

    # --- the message list ----------------------------------------------------------------

    def _authorized(self, h: BaseHTTPRequestHandler, account: str) -> bool:
        expected = "Basic " + base64.b64encode(
            f"{self.auth_id}:{self.auth_token}".encode()
        ).decode()
        if h.headers.get("Authorization", "") != expected or account != self.auth_id:
            self._reply(h, 401, {"error": "authentication failed"})
            return False
        return True

    def _handle_get(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        parts = [p for p in url.path.split("/") if p]
        if len(parts) < 4 or parts[:2] != ["v1", "Account"] or parts[3] != "Message":
            self._reply(h, 404, {"error": "not found"})
            return
        if not self._authorized(h, parts[2]):
            return
        with self.lock:
            self.list_requests += 1
        if self.down:
            self._reply(h, 503, {"api_id": str(uuid.uuid4()), "error": "service unavailable"})
            return
        if len(parts) == 5:
            found = [r for r in self.accepted() if r.message_uuid == parts[4]]
            if not found:
                self._reply(h, 404, {"api_id": str(uuid.uuid4()), "error": "not found"})
                return
            self._reply(h, 200, {"api_id": str(uuid.uuid4()), **_record(found[0])})
            return
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            limit = int(query.get("limit", "20"))
            offset = int(query.get("offset", "0"))
            bounds = {op: _parse_time(query[f"message_time__{op}"])
                      for op in ("gt", "gte", "lt", "lte") if f"message_time__{op}" in query}
        except ValueError as exc:
            self._reply(h, 400, {"api_id": str(uuid.uuid4()), "error": str(exc)})
            return
        if not 0 < limit <= 20 or offset < 0:
            self._reply(h, 400, {"api_id": str(uuid.uuid4()), "error": "invalid limit/offset"})
            return
        if query.get("message_direction", "outbound") != "outbound":
            rows: list[ReceivedMessage] = []  # this fake receives no inbound messages
        else:
            rows = [
                r for r in self.accepted()
                if query.get("from_number", r.src) == r.src
                and query.get("to_number", r.dst) == r.dst
                and _within(r.at, bounds)
            ]
        rows.sort(key=lambda r: r.at, reverse=True)  # newest first, as Plivo lists them
        page = rows[offset:offset + limit]
        base = f"/v1/Account/{self.auth_id}/Message/"
        more = offset + limit < len(rows)
        self._reply(h, 200, {
            "api_id": str(uuid.uuid4()),
            "meta": {
                "limit": limit, "offset": offset,
                "next": f"{base}?limit={limit}&offset={offset + limit}" if more else None,
                "previous": (f"{base}?limit={limit}&offset={max(0, offset - limit)}"
                             if offset else None),
            },
            "objects": [_record(r) for r in page],
        })


def _parse_time(text: str) -> datetime:
    """Plivo's filter format: YYYY-MM-DD HH:MM[:SS[.ffffff]], UTC."""
    for fmt in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise ValueError(f"message_time must be YYYY-MM-DD HH:MM[:SS[.ffffff]], got {text!r}")


def _within(at: datetime, bounds: dict[str, datetime]) -> bool:
    return (("gt" not in bounds or at > bounds["gt"])
            and ("gte" not in bounds or at >= bounds["gte"])
            and ("lt" not in bounds or at < bounds["lt"])
            and ("lte" not in bounds or at <= bounds["lte"]))


def _record(r: ReceivedMessage) -> dict[str, Any]:
    return {
        "message_uuid": r.message_uuid,
        "message_time": r.at.strftime("%Y-%m-%d %H:%M:%S.%f") + "+00:00",
        "message_direction": "outbound",
        "message_state": "sent",
        "message_type": "sms",
        "from_number": r.src,
        "to_number": r.dst,
        "units": 1,
        "total_amount": "0.00500",
        "total_rate": "0.00500",
        "error_code": None,
        "resource_uri": f"/v1/Account/{r.auth_id}/Message/{r.message_uuid}/",
    }
