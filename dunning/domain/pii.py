"""Masking personal data (phone numbers, email addresses) for logs, message rows and console
output: the one place with these rules. Pure (stdlib only).

- `mask_phone` / `mask_email`: a value the code knows is a phone number or an address.
- `redact`: free text (log messages, exception texts) with anything that looks like an E.164
  number, a bare 11-15 digit run (as providers send numbers), a national format
  (`(415) 555-0123`, `415-555-0123`, `07700 900123`, `020 7946 0958`: every digit but the last
  two becomes `*`) or an address masked. Dates, times, IPv4 addresses and numbers of fewer
  than 9 digits are left alone. `redact_urls` also hides URL paths and queries (billing links
  carry tokens).
- `redact_numbers`: free text from a customer (an SMS reply) with every number-like run
  replaced by `[number]`.
"""

from __future__ import annotations

import re

_PHONE_RE = re.compile(r"(?<![\w+])\+\d{8,15}\b|(?<![\w+])\d{11,15}\b")
_EMAIL_RE = re.compile(r"[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_NUMBER_LIKE = re.compile(r"\+?\d[\d\s().\-]{4,}\d")
# Digit groups joined by spaces, dashes, dots or a parenthesised area code.
_NATIONAL_RE = re.compile(
    r"(?<![\w+\-.])(?:\(\d{1,5}\)\s?|\d{1,5}[ .\-])(?:\d{1,5}[ .\-]){0,4}\d{1,6}(?![\w\-]|\.\d)"
)
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}")
_IPV4_RE = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")
_URL_RE = re.compile(r"(https?://[^/\s?#]+)([^\s]*)")


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


def _national(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = sum(c.isdigit() for c in text)
    if not 9 <= digits <= 15 or _DATE_RE.match(text) or _IPV4_RE.match(text):
        return text
    seen = 0
    out = []
    for c in text:
        if c.isdigit():
            seen += 1
            out.append(c if seen > digits - 2 else "*")
        else:
            out.append(c)
    return "".join(out)


def redact(text: str) -> str:
    """`text` with phone numbers (international and national) and email addresses masked."""
    if "@" in text:
        text = _EMAIL_RE.sub(lambda m: mask_email(m.group(0)), text)
    if any(c.isdigit() for c in text):
        text = _PHONE_RE.sub(lambda m: mask_phone(_e164(m.group(0))), text)
        text = _NATIONAL_RE.sub(_national, text)
    return text


def redact_urls(text: str) -> str:
    """`redact(text)` with every URL cut to its scheme and host (`https://pay.example/…`)."""
    return redact(_URL_RE.sub(lambda m: m.group(1) + ("/…" if m.group(2) else ""), text))


def redact_numbers(text: str) -> str:
    """Replace anything that looks like a phone number (for log lines of inbound texts)."""
    return _NUMBER_LIKE.sub("[number]", text)


__all__ = ["mask_email", "mask_phone", "redact", "redact_numbers", "redact_urls"]
