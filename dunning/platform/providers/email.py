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

from dunning.domain.contract import is_loopback_host
from dunning.domain.pii import redact_urls
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


_LINE_BREAKS_RE = re.compile(r"[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]+")


def header_text(value: str) -> str:
    """A header value on one line: CR, LF and other line breaks (from a customer's name, say)
    become one space, so no header can be injected and the message is never refused."""
    return _LINE_BREAKS_RE.sub(" ", value).strip()


def build_message(email: OutgoingEmail) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = header_text(email.sender)
    msg["To"] = header_text(email.to)
    msg["Subject"] = header_text(email.subject)
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
            print(f"[email] to {mask_email(email.to)}: {redact_urls(email.subject)}",
                  flush=True)
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
        *,
        implicit_tls: bool | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        """`implicit_tls`: TLS from the first byte (SMTPS); None = on for port 465. A login
        (`username`) over plain text to a host other than loopback is refused."""
        self.host, self.port = host, port
        self.username, self.password = username, password
        self.starttls, self.timeout = starttls, timeout
        self.implicit_tls = port == 465 if implicit_tls is None else implicit_tls
        self.tls_context = tls_context

    @property
    def is_encrypted(self) -> bool:
        return self.implicit_tls or self.starttls

    def _connect(self) -> smtplib.SMTP:
        if self.implicit_tls:
            return smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                    context=self.tls_context or ssl.create_default_context())
        return smtplib.SMTP(self.host, self.port, timeout=self.timeout)

    def send(self, email: OutgoingEmail) -> str:
        msg = build_message(email)
        if self.username and not self.is_encrypted and not is_loopback_host(self.host):
            raise PermanentProviderError(
                f"refusing to log in to SMTP server {self.host} over plain text: set "
                "DUNNING_SMTP_STARTTLS=true or DUNNING_SMTP_SSL=true (port 465)"
            )
        try:
            smtp = self._connect()
        except ssl.SSLError as exc:
            raise TransientProviderError(f"TLS with the SMTP server failed: {exc}") from None
        except (ConnectionError, socket.gaierror, TimeoutError, OSError) as exc:
            raise TransientProviderError(f"cannot reach SMTP server: {exc}") from None
        try:
            with smtp:
                if self.starttls and not self.implicit_tls:
                    smtp.starttls(context=self.tls_context or ssl.create_default_context())
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
