"""A real SMTP server (aiosmtpd) on loopback that keeps what it receives."""

from __future__ import annotations

import socket
import threading
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Handler:
    def __init__(self, box: SmtpSink) -> None:
        self.box = box

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: Any) -> str:
        if address in self.box.reject:
            return "550 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.box.lock:
            if self.box.down or self.box.fail_next:
                self.box.fail_next = max(0, self.box.fail_next - 1)
                return "451 try again later"
            msg = message_from_bytes(envelope.content)
            self.box.messages.append(msg)
            hook = self.box.on_data
        if hook is not None:  # fault hooks (e.g. kill the sender before it hears "250")
            hook(msg)
        with self.box.lock:
            if self.box.drop_after_data:
                # The message is taken, and the line drops before the client hears "250".
                self.box.drop_after_data -= 1
                server.transport.abort()
        return "250 Message accepted"


class SmtpSink:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.reject: set[str] = set()
        self.fail_next = 0
        self.down = False  # answer every DATA with 451 (a long outage)
        self.drop_after_data = 0  # take the next N messages, then drop the line unanswered
        self.on_data: Any = None  # called with each message taken, before the answer
        self.lock = threading.Lock()
        self.port = free_port()
        self.controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def to(self, addr: str) -> list[Message]:
        with self.lock:
            return [m for m in self.messages if m["To"] == addr]

    def reset(self) -> None:
        with self.lock:
            self.messages.clear()
            self.reject.clear()
            self.fail_next = 0
            self.down = False
            self.drop_after_data = 0
            self.on_data = None
