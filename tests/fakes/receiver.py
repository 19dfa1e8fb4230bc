"""A loopback HTTP server receiving outbound events, verifying each with the `standardwebhooks`
package (the reference implementation of the spec) and recording what it accepted.

`down = True` makes it answer 503 (an outage); requests with a bad signature get 401 and are
counted in `rejected`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Received:
    webhook_id: str
    type: str
    case_id: str | None
    body: dict[str, Any]
    headers: dict[str, str]


class EventReceiver:
    def __init__(self) -> None:
        self.secret: str | None = None
        self.down = False
        self.delay = 0.0  # seconds before answering an accepted event (widens crash windows)
        self.accepted: list[Received] = []
        self.refused = 0  # answered 503 while down
        self.rejected = 0  # bad or missing signature
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver.lock:
                    if receiver.down:
                        receiver.refused += 1
                        self._answer(503)
                        return
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    try:
                        assert receiver.secret is not None
                        body = Webhook(receiver.secret).verify(raw, headers)
                    except (WebhookVerificationError, AssertionError, ValueError):
                        receiver.rejected += 1
                        self._answer(401)
                        return
                    receiver.accepted.append(Received(
                        headers["webhook-id"], body["type"], body["data"].get("case_id"), body,
                        headers,
                    ))
                if receiver.delay:
                    time.sleep(receiver.delay)
                self._answer(204)

            def _answer(self, code: int) -> None:
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def unique(self) -> list[Received]:
        """Accepted events, each webhook-id once (deliveries are at least once)."""
        seen: set[str] = set()
        out = []
        with self.lock:
            for r in self.accepted:
                if r.webhook_id not in seen:
                    seen.add(r.webhook_id)
                    out.append(r)
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def body_json(r: Received) -> str:
    return json.dumps(r.body)
