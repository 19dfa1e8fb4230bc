"""Message templates: `{variable}` placeholders, validation, rendering, the opt-out line."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from decimal import Decimal

from dunning.domain import InputError
from dunning.segments import count_segments

OPT_OUT_LINE = "Reply STOP to unsubscribe."
MAX_SMS_SEGMENTS = 10

VARIABLES = (
    "company_name",
    "billing_link",
    "customer_name",
    "first_name",
    "amount",
    "invoice_id",
    "days_overdue",
    "support_contact",
)

DEFAULT_SMS_TEMPLATE = (
    "{company_name}: your payment of {amount} did not go through. "
    "Update your card here: {billing_link}"
)
DEFAULT_EMAIL_SUBJECT = "{company_name}: your payment of {amount} did not go through"
DEFAULT_EMAIL_BODY = (
    "Hello {customer_name},\n\n"
    "We could not collect your payment of {amount} for invoice {invoice_id}. "
    "It is now {days_overdue} days overdue.\n\n"
    "Please update your payment details here: {billing_link}\n\n"
    "Thank you,\n{company_name}\n"
)

_STOP_ENDING = re.compile(
    r"(reply|text|send)\s+stop\b[^.!\n]*(unsubscribe|opt[\s-]?out|stop|cancel|end)?[^\n]*$",
    re.IGNORECASE,
)

# Symbols and decimal places for common currencies; others fall back to "12.34 XYZ".
_CURRENCY = {
    "USD": ("$", 2, "before"), "CAD": ("CA$", 2, "before"), "AUD": ("A$", 2, "before"),
    "GBP": ("£", 2, "before"), "EUR": ("€", 2, "after"), "JPY": ("¥", 0, "before"),
    "INR": ("₹", 2, "before"), "BRL": ("R$", 2, "before"), "CHF": ("CHF", 2, "before"),
    "SEK": ("kr", 2, "after"), "NOK": ("kr", 2, "after"), "DKK": ("kr.", 2, "after"),
    "MXN": ("MX$", 2, "before"), "NZD": ("NZ$", 2, "before"), "KRW": ("₩", 0, "before"),
}
_ZERO_DECIMAL = {"JPY", "KRW", "VND", "CLP", "ISK", "UGX", "XAF", "XOF", "PYG", "RWF"}


def format_amount(minor: int, currency: str) -> str:
    """4900 USD -> $49.00; 4900 EUR -> 49,00 €; 4900 JPY -> ¥4900."""
    symbol, decimals, position = _CURRENCY.get(
        currency, (currency, 0 if currency in _ZERO_DECIMAL else 2, "after")
    )
    value = Decimal(minor) / (Decimal(10) ** decimals)
    text = f"{value:,.{decimals}f}"
    if position == "after":  # continental style: 1.234,56 €
        text = text.replace(",", "\x00").replace(".", ",").replace("\x00", ".")
        return f"{text} {symbol}"
    return f"{symbol}{text}"


@dataclass(frozen=True)
class TemplateContext:
    company_name: str
    billing_link: str
    customer_name: str
    amount: str
    invoice_id: str
    days_overdue: int
    support_contact: str

    def values(self) -> dict[str, str]:
        first = self.customer_name.split()[0] if self.customer_name.strip() else ""
        return {
            "company_name": self.company_name,
            "billing_link": self.billing_link,
            "customer_name": self.customer_name,
            "first_name": first,
            "amount": self.amount,
            "invoice_id": self.invoice_id,
            "days_overdue": str(self.days_overdue),
            "support_contact": self.support_contact,
        }


SAMPLE_CONTEXT = TemplateContext(
    company_name="Acme Cloud",
    billing_link="https://billing.example.com/pay/inv_123",
    customer_name="Jane Doe",
    amount="$49.00",
    invoice_id="inv_123",
    days_overdue=3,
    support_contact="support@example.com",
)


def template_fields(text: str, field_name: str = "template") -> list[str]:
    """The variables a template uses; InputError for unbalanced braces or unknown names."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise InputError(field_name, f"unbalanced braces ({exc}); write {{{{ and }}}} for a "
                         "literal brace") from None
    names: list[str] = []
    for _literal, name, spec, conv in parsed:
        if name is None:
            continue
        if name not in VARIABLES:
            shown = name or "{}"
            raise InputError(
                field_name,
                f"unknown variable {{{shown}}}; known: "
                + ", ".join("{" + v + "}" for v in VARIABLES),
            )
        if spec or conv:
            raise InputError(field_name, f"variable {{{name}}} takes no format options")
        names.append(name)
    return names


def has_opt_out(text: str) -> bool:
    last = text.strip().splitlines()[-1] if text.strip() else ""
    return bool(_STOP_ENDING.search(last))


def render(text: str, ctx: TemplateContext) -> str:
    return text.format(**ctx.values())


def render_sms(template: str, ctx: TemplateContext) -> str:
    """The message exactly as sent: the template, then the opt-out line unless it has one."""
    body = render(template, ctx).strip()
    if has_opt_out(body):
        return body
    return f"{body} {OPT_OUT_LINE}"


def validate_sms_template(text: str) -> None:
    if not text or not text.strip():
        raise InputError("template", "is empty")
    names = template_fields(text)
    if "billing_link" not in names:
        raise InputError(
            "template",
            "must contain {billing_link}: SMS are transactional payment reminders only",
        )
    info = count_segments(render_sms(text, SAMPLE_CONTEXT))
    if info.segments > MAX_SMS_SEGMENTS:
        raise InputError(
            "template",
            f"is {info.segments} segments long with a sample customer; at most "
            f"{MAX_SMS_SEGMENTS}",
        )


def validate_email_template(subject: str, body: str) -> None:
    template_fields(subject, "subject")
    names = template_fields(body, "body")
    if "billing_link" not in names:
        raise InputError("body", "must contain {billing_link}")
