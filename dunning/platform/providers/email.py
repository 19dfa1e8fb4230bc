"""Email providers: SMTP and a console backend that prints and sends nothing."""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Protocol

from dunning.platform.providers import (
    AmbiguousProviderError,
    PermanentProviderError,
    TransientProviderError,
    mask_email,
)

_ADDRESS = re.compile(r"[^\s<>@\"']+@[^\s<>@\"']+")


@dataclass(frozen=True)
class OutgoingEmail:
    sender: str
    to: str
    subject: str
    body: str
    message_id: str | None = None  # stable id: the same reminder always carries the same one
    html: str | None = None  # the HTML alternative (multipart/alternative with `body`)


class EmailProvider(Protocol):
    name: str

    def send(self, email: OutgoingEmail) -> str:
        """Deliver to the mail server; return the Message-ID. Raises a ProviderError."""
        ...


def build_message(email: OutgoingEmail) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = email.sender
    msg["To"] = email.to
    msg["Subject"] = email.subject
    msg["Message-ID"] = email.message_id or make_msgid(domain="dunning.local")
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(email.body)
    if email.html:
        msg.add_alternative(email.html, subtype="html")
    return msg


def _reply(code: int, text: bytes | str) -> str:
    """`550 5.1.1 mailbox unavailable`: the server's own words, one line, masked of addresses."""
    words = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    words = " ".join(words.split())
    words = _ADDRESS.sub(lambda m: mask_email(m.group(0)), words)
    return f"{code} {words}"[:300]


class ConsoleEmailProvider:
    name = "console"

    def __init__(self, echo: bool = True) -> None:
        self._lock = threading.Lock()
        self.echo = echo
        self.sent: list[OutgoingEmail] = []

    def send(self, email: OutgoingEmail) -> str:
        msg = build_message(email)
        with self._lock:
            self.sent.append(email)
        if self.echo:
            print(f"[email] to {mask_email(email.to)}: {email.subject}", flush=True)
        return str(msg["Message-ID"])


class SmtpEmailProvider:
    name = "smtp"

    def __init__(
        self,
        host: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        timeout: float = 10.0,
    ) -> None:
        self.host, self.port = host, port
        self.username, self.password = username, password
        self.starttls, self.timeout = starttls, timeout

    def send(self, email: OutgoingEmail) -> str:
        msg = build_message(email)
        try:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        except (ConnectionError, socket.gaierror, TimeoutError, OSError) as exc:
            raise TransientProviderError(f"cannot reach SMTP server: {exc}") from None
        try:
            with smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.username:
                    smtp.login(self.username, self.password or "")
                refused = smtp.send_message(msg)
        except smtplib.SMTPAuthenticationError as exc:
            raise PermanentProviderError(f"SMTP authentication failed: {exc.smtp_code}") from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = {code for code, _ in exc.recipients.values()}
            said = "; ".join(
                _reply(code, text) for code, text in exc.recipients.values()
            )
            if any(400 <= c < 500 for c in codes):
                raise TransientProviderError(f"recipient deferred: {said}") from None
            raise PermanentProviderError(f"recipient refused: {said}") from None
        except smtplib.SMTPSenderRefused as exc:
            said = _reply(exc.smtp_code, exc.smtp_error)
            if 400 <= exc.smtp_code < 500:
                raise TransientProviderError(f"sender deferred: {said}") from None
            raise PermanentProviderError(f"sender refused: {said}") from None
        except smtplib.SMTPDataError as exc:
            said = _reply(exc.smtp_code, exc.smtp_error)
            if 400 <= exc.smtp_code < 500:
                raise TransientProviderError(f"message deferred: {said}") from None
            raise PermanentProviderError(f"message refused: {said}") from None
        except smtplib.SMTPServerDisconnected as exc:
            raise AmbiguousProviderError(f"SMTP server disconnected: {exc}") from None
        except TimeoutError as exc:
            raise AmbiguousProviderError(f"SMTP timeout: {exc}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientProviderError(f"SMTP error: {exc}") from None
        if refused:
            raise PermanentProviderError("recipient refused")
        return str(msg["Message-ID"])
