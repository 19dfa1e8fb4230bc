"""A loopback HTTP server answering like Stripe's API for what a case asks of it: retrieve an
invoice, mark it uncollectible, pay it, cancel or pause (update) its subscription. The real
`stripe` SDK is pointed at it (DUNNING_STRIPE_API_URL).

Like Stripe, a write repeated with the same `Idempotency-Key` gets the first answer again and
has no further effect: `effects` lists the writes that took effect, `requests` every request.
`script` holds answers (status, body) for the next writes, e.g. a 500 or a 402 decline.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass
class StripeRequest:
    method: str
    path: str
    idempotency_key: str | None
    form: dict[str, str] = field(default_factory=dict)


class FakeStripeApi:
    def __init__(self) -> None:
        self.requests: list[StripeRequest] = []
        self.effects: list[StripeRequest] = []
        self.script: deque[tuple[int, dict[str, Any]]] = deque()
        self.subscriptions: dict[str, str] = {}  # invoice id -> subscription id
        self.customers: dict[str, str] = {}  # invoice id -> customer id
        self._answers: dict[str, tuple[int, dict[str, Any]]] = {}
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode() if length else ""
                form = {k: v[0] for k, v in parse_qs(raw).items()}
                path = urlparse(self.path).path
                key = self.headers.get("Idempotency-Key")
                req = StripeRequest(method, path, key, form)
                with fake.lock:
                    fake.requests.append(req)
                    if method != "GET" and key and key in fake._answers:
                        status, body = fake._answers[key]
                    else:
                        status, body = fake._answer(req)
                        if method != "GET" and key and status < 500:
                            fake._answers[key] = (status, body)
                        if method != "GET" and status < 300:
                            fake.effects.append(req)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _answer(self, req: StripeRequest) -> tuple[int, dict[str, Any]]:
        parts = req.path.strip("/").split("/")  # v1, kind, id, [verb]
        if req.method != "GET" and self.script:
            status, body = self.script.popleft()
            if status >= 300:
                return status, body
        if len(parts) < 3:
            return 404, {"error": {"type": "invalid_request_error", "message": "not found"}}
        kind, obj_id = parts[1], parts[2]
        verb = parts[3] if len(parts) > 3 else ""
        if kind == "invoices":
            sub = self.subscriptions.get(obj_id)
            invoice: dict[str, Any] = {
                "id": obj_id, "object": "invoice", "status": "open",
                "customer": self.customers.get(obj_id, "cus_fake"),
                "parent": ({"type": "subscription_details",
                            "subscription_details": {"subscription": sub}} if sub else None),
            }
            if verb == "mark_uncollectible":
                invoice["status"] = "uncollectible"
            elif verb == "pay":
                invoice["status"] = "paid"
            return 200, invoice
        if kind == "subscriptions":
            sub_body: dict[str, Any] = {"id": obj_id, "object": "subscription",
                                        "status": "active"}
            if req.method == "DELETE":
                sub_body["status"] = "canceled"
            elif "pause_collection[behavior]" in req.form:
                sub_body["pause_collection"] = {"behavior": req.form["pause_collection[behavior]"]}
            return 200, sub_body
        return 404, {"error": {"type": "invalid_request_error", "message": "not found"}}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def decline(code: str = "card_declined", decline_code: str = "insufficient_funds"
            ) -> tuple[int, dict[str, Any]]:
    """Stripe's answer to a declined payment."""
    return 402, {"error": {"type": "card_error", "code": code, "decline_code": decline_code,
                           "message": "Your card was declined."}}


def server_error() -> tuple[int, dict[str, Any]]:
    return 500, {"error": {"type": "api_error", "message": "An unknown error occurred"}}
