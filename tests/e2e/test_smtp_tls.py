"""SMTP: implicit TLS (SMTPS, port 465 or DUNNING_SMTP_SSL) against a real TLS server on
loopback, and no login over plain text to a host other than loopback."""

from __future__ import annotations

from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from dunning.platform.providers import PermanentProviderError, TransientProviderError
from dunning.platform.providers.email import OutgoingEmail, SmtpEmailProvider
from dunning.platform.providers.factory import email_provider
from dunning.platform.settings import Settings, SettingsError, load_settings
from tests.fakes.smtp import SmtpSink, free_port
from tests.fakes.tls import LoopbackCerts, make_loopback_certs


class _Box:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.logins: list[tuple[str, str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 Message accepted"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                     auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=auth_data.password == b"s3cret")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> LoopbackCerts:
    return make_loopback_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def smtps(certs: LoopbackCerts) -> Iterator[tuple[_Box, int]]:
    """An SMTP server speaking TLS from the first byte (as on port 465), with AUTH."""
    box, port = _Box(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port,
                            ssl_context=certs.server_context(), authenticator=box.authenticate,
                            auth_require_tls=False)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


def _email(to: str = "jane@example.com") -> OutgoingEmail:
    return OutgoingEmail(sender="billing@acme.test", to=to, subject="Reminder", body="Pay.")


def test_implicit_tls_delivers_with_login(smtps: tuple[_Box, int], certs: LoopbackCerts) -> None:
    box, port = smtps
    provider = SmtpEmailProvider("127.0.0.1", port, "billing", "s3cret", implicit_tls=True,
                                 tls_context=certs.client_context())
    provider.send(_email())
    assert [m["To"] for m in box.messages] == ["jane@example.com"]
    assert box.logins == [("billing", "s3cret")]


def test_a_plain_client_cannot_talk_to_the_tls_server(smtps: tuple[_Box, int]) -> None:
    box, port = smtps
    plain = SmtpEmailProvider("127.0.0.1", port, timeout=2, implicit_tls=False)
    with pytest.raises(TransientProviderError):
        plain.send(_email())
    assert box.messages == []


def test_an_untrusted_certificate_is_refused(smtps: tuple[_Box, int]) -> None:
    _, port = smtps
    provider = SmtpEmailProvider("127.0.0.1", port, "billing", "s3cret", implicit_tls=True)
    with pytest.raises(TransientProviderError, match="TLS"):
        provider.send(_email())


def test_port_465_means_implicit_tls_and_the_setting_wins() -> None:
    assert SmtpEmailProvider("smtp.example.com", 465).implicit_tls
    assert not SmtpEmailProvider("smtp.example.com", 587).implicit_tls
    assert Settings(smtp_port=465, _env_file=None).smtp_implicit_tls
    assert not Settings(smtp_port=465, smtp_ssl=False, _env_file=None).smtp_implicit_tls
    assert Settings(smtp_port=2465, smtp_ssl=True, _env_file=None).smtp_implicit_tls
    built = email_provider(Settings(email_backend="smtp", smtp_host="smtp.example.com",
                                    smtp_port=465, smtp_username="u", smtp_password="p",
                                    _env_file=None))
    assert isinstance(built, SmtpEmailProvider) and built.implicit_tls
    assert built.password == "p"


def test_no_login_over_plain_text_to_another_host() -> None:
    with pytest.raises(SettingsError, match=r"DUNNING_SMTP_STARTTLS.*plain text"):
        load_settings(email_backend="smtp", smtp_host="smtp.example.com", smtp_port=25,
                      smtp_username="billing", smtp_password="pw", _env_file=None)
    # Loopback (a local relay) and encrypted connections are fine.
    load_settings(email_backend="smtp", smtp_host="127.0.0.1", smtp_username="u",
                  _env_file=None)
    load_settings(email_backend="smtp", smtp_host="smtp.example.com", smtp_port=587,
                  smtp_starttls=True, smtp_username="u", _env_file=None)
    with pytest.raises(SettingsError, match="DUNNING_SMTP_SSL"):
        load_settings(smtp_ssl=True, smtp_starttls=True, _env_file=None)
    # The provider refuses too, before connecting anywhere.
    provider = SmtpEmailProvider("smtp.example.com", 25, "billing", "pw")
    with pytest.raises(PermanentProviderError, match="plain text"):
        provider.send(_email())


def test_a_name_with_line_breaks_still_sends_on_one_subject_line(smtp_server: SmtpSink) -> None:
    provider = SmtpEmailProvider("127.0.0.1", smtp_server.port)
    provider.send(OutgoingEmail(sender="billing@acme.test", to="crlf@example.com",
                                subject="Reminder for Jane\r\nBcc: victim@example.com",
                                body="Pay."))
    [msg] = smtp_server.to("crlf@example.com")
    assert msg["Subject"] == "Reminder for Jane Bcc: victim@example.com"
    assert msg["Bcc"] is None
