"""Message templates: `{variable}` placeholders, validation, rendering, the opt-out line.

A template is plain text with variables in braces, e.g. `{company_name}: pay {amount} at
{billing_link}`; `{{` and `}}` stand for literal braces. Rendering is `str.format` with exactly the
variables in `VARIABLES`, so a template that passes `template_fields` always renders.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import date

from dunning.domain.contract import InputError
from dunning.domain.locales import (
    DEFAULT_LOCALE,
    currency_decimals,
    format_amount,
    format_day,
    opt_out_lines,
    shipped_email,
    shipped_sms,
    text_for,
)
from dunning.domain.segments import (
    GSM7_MULTI,
    UCS2_MULTI,
    SegmentInfo,
    count_segments,
)

OPT_OUT_LINE = text_for([DEFAULT_LOCALE], "opt_out")[0]  # "Reply STOP to unsubscribe."
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
    "failed_on",
    "open_invoices",
    "total_due",
    "decline_code",
)

# The shipped English texts of the first reminder (other steps and locales: dunning.domain.locales).
DEFAULT_SMS_TEMPLATE = shipped_sms(DEFAULT_LOCALE, "first")
DEFAULT_EMAIL_SUBJECT, DEFAULT_EMAIL_BODY = shipped_email(DEFAULT_LOCALE, "first")

# --- amounts -------------------------------------------------------------------------------
# Formatted with Babel (CLDR) for a locale: see dunning.domain.locales.format_amount.


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
    failed_on: str = ""  # the day the payment failed, formatted for the customer's locale
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
            "failed_on": self.failed_on,
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
    failed_on="November 26, 2026",
    open_invoices=2,
    total_due="$98.00",
    decline_code="insufficient_funds",
)
SAMPLE_AMOUNT = 4900
SAMPLE_FAILED_ON = date(2026, 11, 26)


def sample_context(
    company_name: str | None = None,
    support_contact: str | None = None,
    *,
    currency: str = "USD",
    days_overdue: int = SAMPLE_CONTEXT.days_overdue,
    locale: str | None = DEFAULT_LOCALE,
    billing_link: str | None = None,
) -> TemplateContext:
    """The sample customer of previews and validation, with an account's own name and contact."""
    return TemplateContext(
        company_name=company_name or SAMPLE_CONTEXT.company_name,
        billing_link=billing_link or SAMPLE_CONTEXT.billing_link,
        customer_name=SAMPLE_CONTEXT.customer_name,
        amount=format_amount(SAMPLE_AMOUNT, currency, locale),
        invoice_id=SAMPLE_CONTEXT.invoice_id,
        days_overdue=days_overdue,
        support_contact=support_contact if support_contact is not None
        else SAMPLE_CONTEXT.support_contact,
        failed_on=format_day(SAMPLE_FAILED_ON, locale),
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
    unsubscribe.`, `Text STOP to opt out` or `To opt out, reply STOP.`, or ends with one of the
    shipped opt-out lines of any locale (`Responde STOP para darte de baja.`)."""
    stripped = text.strip()
    if not stripped:
        return False
    folded = stripped.casefold()
    if any(folded.endswith(line.casefold()) for line in opt_out_lines()):
        return True
    last = re.split(r"(?<=[.!?])\s+|\n+", stripped)[-1].strip()
    return bool(_STOP_SENTENCE.match(last))


# --- rendering -----------------------------------------------------------------------------


def render(text: str, ctx: TemplateContext) -> str:
    return text.format(**ctx.values())


def opt_out_line(chain: list[str] | None = None) -> str:
    """The opt-out line in the first language of `chain` that has one (English otherwise)."""
    return text_for(chain or [DEFAULT_LOCALE], "opt_out")[0]


def render_sms(template: str, ctx: TemplateContext, chain: list[str] | None = None) -> str:
    """The message exactly as sent: the template, then the opt-out line (in the text's
    language, see `opt_out_line`) unless it has one."""
    body = render(template, ctx).strip()
    if has_opt_out(body):
        return body
    return f"{body} {opt_out_line(chain)}"


# --- validation ----------------------------------------------------------------------------


def validate_sms_template(
    text: str, ctx: TemplateContext = SAMPLE_CONTEXT, chain: list[str] | None = None
) -> SegmentInfo:
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
    info = count_segments(render_sms(text, ctx, chain))
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


__all__ = [
    "DEFAULT_EMAIL_BODY",
    "DEFAULT_EMAIL_SUBJECT",
    "DEFAULT_SMS_TEMPLATE",
    "MAX_SMS_SEGMENTS",
    "OPT_OUT_LINE",
    "SAMPLE_CONTEXT",
    "VARIABLES",
    "TemplateContext",
    "currency_decimals",
    "format_amount",
    "has_opt_out",
    "opt_out_line",
    "render",
    "render_sms",
    "sample_context",
    "template_fields",
    "validate_email_template",
    "validate_sms_template",
]
