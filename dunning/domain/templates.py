"""Message templates: `{variable}` placeholders, validation, rendering, the opt-out line.

A template is plain text with variables in braces, e.g. `{company_name}: pay {amount} at
{billing_link}`; `{{` and `}}` stand for literal braces. Rendering is `str.format` with exactly the
variables in `VARIABLES`, so a template that passes `template_fields` always renders.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from decimal import Decimal

from dunning.domain.contract import InputError
from dunning.domain.segments import (
    GSM7_MULTI,
    UCS2_MULTI,
    SegmentInfo,
    count_segments,
)

OPT_OUT_LINE = "Reply STOP to unsubscribe."
MAX_SMS_SEGMENTS = 10
MAX_SUBJECT_LENGTH = 200

VARIABLES = (
    "company_name",
    "billing_link",
    "customer_name",
    "first_name",
    "amount",
    "invoice_id",
    "days_overdue",
    "support_contact",
    "open_invoices",
    "total_due",
    "decline_code",
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

# --- amounts -------------------------------------------------------------------------------

# code -> (symbol, decimal places, style). Styles:
#   "pre"    $1,234.56      (symbol first, English separators)
#   "pre_sp" CHF 1,234.56   (symbol first with a space)
#   "pre_eu" R$ 1.234,56    (symbol first with a space, continental separators)
#   "post"   1.234,56 €     (continental: amount, space, symbol)
#   "post_sp" 1 234,56 kr   (Nordic / Central European: space-grouped)
# Plain spaces only (no U+00A0 / U+202F): a no-break space would turn an SMS into UCS-2.
_CURRENCY: dict[str, tuple[str, int, str]] = {
    "USD": ("$", 2, "pre"),
    "CAD": ("CA$", 2, "pre"),
    "AUD": ("A$", 2, "pre"),
    "NZD": ("NZ$", 2, "pre"),
    "MXN": ("MX$", 2, "pre"),
    "HKD": ("HK$", 2, "pre"),
    "SGD": ("S$", 2, "pre"),
    "GBP": ("£", 2, "pre"),
    "JPY": ("¥", 0, "pre"),
    "CNY": ("CN¥", 2, "pre"),
    "INR": ("₹", 2, "pre"),
    "KRW": ("₩", 0, "pre"),
    "ILS": ("₪", 2, "pre"),
    "ZAR": ("R", 2, "pre"),
    "CHF": ("CHF", 2, "pre_sp"),
    "BRL": ("R$", 2, "pre_eu"),
    "EUR": ("€", 2, "post"),
    "SEK": ("kr", 2, "post_sp"),
    "NOK": ("kr", 2, "post_sp"),
    "DKK": ("kr.", 2, "post"),
    "PLN": ("zł", 2, "post_sp"),
    "CZK": ("Kč", 2, "post_sp"),
}
# ISO 4217 minor units for currencies not in the table above (default 2).
_DECIMALS = {
    **dict.fromkeys(
        ("BIF", "CLP", "DJF", "GNF", "ISK", "KMF", "PYG", "RWF", "UGX", "UYI", "VND", "VUV",
         "XAF", "XOF", "XPF"),
        0,
    ),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
}


def _number(value: Decimal, decimals: int, thousands: str, point: str) -> str:
    text = f"{value:,.{decimals}f}"  # 1,234.56
    return text.replace(",", "\x00").replace(".", point).replace("\x00", thousands)


def currency_decimals(currency: str) -> int:
    code = (currency or "").upper()
    if code in _CURRENCY:
        return _CURRENCY[code][1]
    return _DECIMALS.get(code, 2)


def format_amount(minor: int, currency: str) -> str:
    """An amount in minor units, for people: 4900 USD -> `$49.00`, 4900 EUR -> `49,00 €`,
    4900 JPY -> `¥4,900`, 4900 of an unknown code XYZ -> `XYZ 49.00`."""
    code = (currency or "").upper()
    symbol, decimals, style = _CURRENCY.get(code, (code, _DECIMALS.get(code, 2), "pre_sp"))
    sign = "-" if minor < 0 else ""
    value = Decimal(abs(minor)).scaleb(-decimals)
    if style == "pre":
        return f"{sign}{symbol}{_number(value, decimals, ',', '.')}"
    if style == "pre_sp":
        return f"{sign}{symbol} {_number(value, decimals, ',', '.')}"
    if style == "pre_eu":
        return f"{sign}{symbol} {_number(value, decimals, '.', ',')}"
    if style == "post":
        return f"{sign}{_number(value, decimals, '.', ',')} {symbol}"
    return f"{sign}{_number(value, decimals, ' ', ',')} {symbol}"  # post_sp


# --- context -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateContext:
    company_name: str
    billing_link: str
    customer_name: str
    amount: str
    invoice_id: str
    days_overdue: int
    support_contact: str
    open_invoices: int = 1  # the customer's open cases (this one included)
    total_due: str = ""  # what they owe across them; "" -> `amount`
    decline_code: str = ""  # why the payment failed (Stripe's decline code), if known

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
            "open_invoices": str(self.open_invoices),
            "total_due": self.total_due or self.amount,
            "decline_code": self.decline_code,
        }


SAMPLE_CONTEXT = TemplateContext(
    company_name="Acme Cloud",
    billing_link="https://billing.example.com/pay/inv_123",
    customer_name="Jane Doe",
    amount="$49.00",
    invoice_id="inv_123",
    days_overdue=3,
    support_contact="support@example.com",
    open_invoices=2,
    total_due="$98.00",
    decline_code="insufficient_funds",
)
SAMPLE_AMOUNT = 4900


def sample_context(
    company_name: str | None = None,
    support_contact: str | None = None,
    *,
    currency: str = "USD",
    days_overdue: int = SAMPLE_CONTEXT.days_overdue,
) -> TemplateContext:
    """The sample customer of previews and validation, with an account's own name and contact."""
    return TemplateContext(
        company_name=company_name or SAMPLE_CONTEXT.company_name,
        billing_link=SAMPLE_CONTEXT.billing_link,
        customer_name=SAMPLE_CONTEXT.customer_name,
        amount=format_amount(SAMPLE_AMOUNT, currency),
        invoice_id=SAMPLE_CONTEXT.invoice_id,
        days_overdue=days_overdue,
        support_contact=support_contact if support_contact is not None
        else SAMPLE_CONTEXT.support_contact,
    )


# --- parsing -------------------------------------------------------------------------------

_KNOWN = ", ".join("{" + v + "}" for v in VARIABLES)
_LITERAL_HINT = "write {{ or }} for a literal brace"


def _unknown(field_name: str, name: str) -> InputError:
    close = difflib.get_close_matches(name.strip().lower(), VARIABLES, n=1, cutoff=0.6)
    hint = f" (did you mean {{{close[0]}}}?)" if close else ""
    return InputError(
        field_name, f"unknown variable {{{name}}}{hint}; known variables: {_KNOWN}"
    )


def template_fields(text: str, field_name: str = "template") -> list[str]:
    """The variables a template uses, in order; InputError naming the problem for unbalanced
    braces, empty braces, unknown variables or format options."""
    names: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "}":
            if text.startswith("}}", i):
                i += 2
                continue
            raise InputError(
                field_name,
                f"unbalanced braces: the '}}' at character {i + 1} has no matching '{{' "
                f"({_LITERAL_HINT})",
            )
        if ch != "{":
            i += 1
            continue
        if text.startswith("{{", i):
            i += 2
            continue
        end = i + 1
        while end < n and text[end] not in "{}":
            end += 1
        if end >= n:
            raise InputError(
                field_name,
                f"unbalanced braces: the '{{' at character {i + 1} is never closed "
                f"({_LITERAL_HINT})",
            )
        if text[end] == "{":
            raise InputError(
                field_name,
                f"unbalanced braces: the '{{' at character {i + 1} is not closed before the "
                f"next '{{' at character {end + 1} ({_LITERAL_HINT})",
            )
        name = text[i + 1 : end]
        if not name.strip():
            raise InputError(
                field_name,
                f"empty braces {{{name}}} at character {i + 1}: put a variable name inside, "
                f"e.g. {{billing_link}} ({_LITERAL_HINT})",
            )
        base = re.split(r"[.\[!:]", name, maxsplit=1)[0]
        if name not in VARIABLES:
            if base in VARIABLES:
                raise InputError(
                    field_name, f"variable {{{base}}} takes no format options: {{{name}}}"
                )
            raise _unknown(field_name, name)
        names.append(name)
        i = end + 1
    # Belt and braces: whatever passed above must render with str.format.
    try:
        text.format(**SAMPLE_CONTEXT.values())
    except (ValueError, KeyError, IndexError, AttributeError) as exc:  # pragma: no cover
        raise InputError(field_name, f"cannot be rendered: {exc}") from None
    return names


# --- the opt-out line ---------------------------------------------------------------------

_STOP_WORDS = r"(?:stop|stopall|unsubscribe|optout|opt-out|opt\s+out)"
_STOP_SENTENCE = re.compile(
    r"^(?:(?:to\s+)?(?:opt[\s-]?out|unsubscribe|stop\s+(?:texts|messages|sms))\s*[,:;-]\s*)?"
    r"(?:reply|text|txt|send|respond|msg|message)\b(?:\s+(?:with|back))?\s+"
    r"[\"'\u201c\u2018]?" + _STOP_WORDS + r"[\"'\u201d\u2019]?"
    r"(?:\s+[^.!?\n]*)?[.!]?$",
    re.IGNORECASE,
)


def has_opt_out(text: str) -> bool:
    """True when the text's last sentence is a STOP instruction such as `Reply STOP to
    unsubscribe.`, `Text STOP to opt out` or `To opt out, reply STOP.`"""
    stripped = text.strip()
    if not stripped:
        return False
    last = re.split(r"(?<=[.!?])\s+|\n+", stripped)[-1].strip()
    return bool(_STOP_SENTENCE.match(last))


# --- rendering -----------------------------------------------------------------------------


def render(text: str, ctx: TemplateContext) -> str:
    return text.format(**ctx.values())


def render_sms(template: str, ctx: TemplateContext) -> str:
    """The message exactly as sent: the template, then the opt-out line unless it has one."""
    body = render(template, ctx).strip()
    if has_opt_out(body):
        return body
    return f"{body} {OPT_OUT_LINE}"


# --- validation ----------------------------------------------------------------------------


def validate_sms_template(text: str, ctx: TemplateContext = SAMPLE_CONTEXT) -> SegmentInfo:
    """Refuse (InputError) an SMS template that is empty, has unbalanced braces or unknown
    variables, lacks {billing_link}, or is over MAX_SMS_SEGMENTS segments once rendered for the
    sample customer `ctx` with the opt-out line. Returns the sample's segment info."""
    if not text or not text.strip():
        raise InputError("template", "is empty")
    names = template_fields(text)
    if "billing_link" not in names:
        raise InputError(
            "template",
            "must contain {billing_link}: the reminder has to tell the customer where to pay",
        )
    info = count_segments(render_sms(text, ctx))
    if info.segments > MAX_SMS_SEGMENTS:
        per = GSM7_MULTI if info.encoding == "GSM-7" else UCS2_MULTI
        unit = "septets" if info.encoding == "GSM-7" else "UTF-16 units"
        raise InputError(
            "template",
            f"is too long: {info.segments} segments ({info.encoding}, {info.units} {unit}) "
            f"for a sample customer with the opt-out line; at most {MAX_SMS_SEGMENTS} "
            f"segments (about {MAX_SMS_SEGMENTS * per} {unit} in {info.encoding})",
        )
    return info


def validate_email_template(subject: str, body: str) -> None:
    if not subject or not subject.strip():
        raise InputError("subject", "is empty")
    if "\n" in subject or "\r" in subject:
        raise InputError("subject", "must be one line")
    if len(subject) > MAX_SUBJECT_LENGTH:
        raise InputError("subject", f"must be at most {MAX_SUBJECT_LENGTH} characters")
    template_fields(subject, "subject")
    if not body or not body.strip():
        raise InputError("body", "is empty")
    names = template_fields(body, "body")
    if "billing_link" not in names:
        raise InputError(
            "body",
            "must contain {billing_link}: the reminder has to tell the customer where to pay",
        )
