"""Build the providers the settings ask for."""

from __future__ import annotations

from dunning.platform.providers.email import ConsoleEmailProvider, EmailProvider, SmtpEmailProvider
from dunning.platform.providers.sms import ConsoleSmsProvider, PlivoSmsProvider, SmsProvider
from dunning.platform.settings import Settings, secret_value


def sms_provider(settings: Settings) -> SmsProvider:
    if settings.sms_backend == "plivo":
        return PlivoSmsProvider(
            settings.plivo_auth_id, secret_value(settings.plivo_auth_token),
            settings.plivo_api_url,
            timeout=settings.plivo_timeout,
        )
    return ConsoleSmsProvider()


def email_provider(settings: Settings) -> EmailProvider:
    if settings.email_backend == "smtp":
        return SmtpEmailProvider(
            settings.smtp_host, settings.smtp_port, settings.smtp_username,
            secret_value(settings.smtp_password) or None, settings.smtp_starttls,
            settings.smtp_timeout, implicit_tls=settings.smtp_implicit_tls,
        )
    return ConsoleEmailProvider()
