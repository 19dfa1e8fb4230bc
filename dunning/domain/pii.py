"""Masking personal data (phone numbers, email addresses) for logs, message rows and console
output: the one place with these rules. Pure (stdlib only).

- `mask_phone` / `mask_email`: a value the code knows is a phone number or an address.
- `redact`: free text (log messages, exception texts) with anything that looks like an E.164
  number, a bare 11-15 digit run (as providers send numbers) or an address masked.
- `redact_numbers`: free text from a customer (an SMS reply) with every number-like run
  replaced by `[number]`.
"""

from __future__ import annotations

import re

_PHONE_RE = re.compile(r"(?<![\w+])\+\d{8,15}\b|(?<![\w+])\d{11,15}\b")
_EMAIL_RE = re.compile(r"[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_NUMBER_LIKE = re.compile(r"\+?\d[\d\s().\-]{4,}\d")


def mask_phone(e164: str | None) -> str:
    """+14155550123 -> +1******0123: enough for an operator, never the whole number."""
    if not e164:
        return ""
    if len(e164) <= 6:
        return "*" * len(e164)
    return e164[:2] + "*" * (len(e164) - 6) + e164[-4:]


def mask_email(addr: str | None) -> str:
    if not addr or "@" not in addr:
        return ""
    local, domain = addr.split("@", 1)
    return f"{local[:1]}***@{domain}"


def _e164(digits: str) -> str:
    return digits if digits.startswith("+") else f"+{digits}"


def redact(text: str) -> str:
    """`text` with phone numbers and email addresses masked."""
    if "@" in text:
        text = _EMAIL_RE.sub(lambda m: mask_email(m.group(0)), text)
    if any(c.isdigit() for c in text):
        text = _PHONE_RE.sub(lambda m: mask_phone(_e164(m.group(0))), text)
    return text


def redact_numbers(text: str) -> str:
    """Replace anything that looks like a phone number (for log lines of inbound texts)."""
    return _NUMBER_LIKE.sub("[number]", text)


__all__ = ["mask_email", "mask_phone", "redact", "redact_numbers"]
