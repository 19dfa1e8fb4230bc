"""Templates: amounts, variables, validation errors, the opt-out line (no database)."""

from __future__ import annotations

import pytest

from dunning.domain.contract import InputError
from dunning.domain.segments import count_segments
from dunning.domain.templates import (
    DEFAULT_EMAIL_BODY,
    DEFAULT_EMAIL_SUBJECT,
    DEFAULT_SMS_TEMPLATE,
    MAX_SMS_SEGMENTS,
    OPT_OUT_LINE,
    SAMPLE_CONTEXT,
    VARIABLES,
    TemplateContext,
    format_amount,
    has_opt_out,
    render,
    render_sms,
    sample_context,
    template_fields,
    validate_email_template,
    validate_sms_template,
)

# --- amounts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minor", "currency", "locale", "expected"),
    [
        (4900, "USD", "en", "$49.00"),
        (5, "USD", "en", "$0.05"),
        (123456789, "USD", "en", "$1,234,567.89"),
        (4900, "usd", "en", "$49.00"),
        (-4900, "USD", "en", "-$49.00"),
        (4900, "EUR", "de", "49,00 €"),
        (-4900, "EUR", "de", "-49,00 €"),
        (123456, "EUR", "fr", "1 234,56 €"),  # CLDR's narrow no-break space, made plain
        (4900, "EUR", "es", "49,00 €"),
        (4900, "USD", "es", "49,00 US$"),
        (4900, "GBP", "en-GB", "£49.00"),
        (4900, "JPY", "en", "¥4,900"),  # JPY has no minor unit
        (4900, "JPY", "ja", "￥4,900"),
        (49, "JPY", "en", "¥49"),
        (4900, "BRL", "pt-BR", "R$ 49,00"),
        (4900, "CHF", "en", "CHF 49.00"),  # a letter code gets a space before the digits
        (123456, "SEK", "sv", "1 234,56 kr"),
        (4900, "XYZ", "en", "XYZ 49.00"),  # unknown code: the code itself, 2 decimals
        (4900, "KWD", "en", "KWD 4.900"),  # 3 decimal places
        (4900, "CLP", "es-CL", "$4.900"),  # 0 decimal places
    ],
)
def test_format_amount(minor: int, currency: str, locale: str, expected: str) -> None:
    assert format_amount(minor, currency, locale) == expected


def test_format_amount_defaults_to_english() -> None:
    assert format_amount(4900, "EUR") == "€49.00"


def test_amounts_stay_gsm7_for_common_currencies() -> None:
    # A no-break space or similar would silently turn every SMS into UCS-2.
    for code in ("USD", "EUR", "GBP", "JPY", "CHF", "SEK", "CAD", "AUD"):
        assert count_segments(format_amount(123456, code)).encoding == "GSM-7", code


# --- variables -----------------------------------------------------------------------------


def test_template_fields_lists_variables_and_accepts_literal_braces() -> None:
    assert template_fields("{company_name} {{literal}} {billing_link} {amount}") == [
        "company_name", "billing_link", "amount",
    ]
    assert render("{{x}} {first_name}", SAMPLE_CONTEXT) == "{x} Jane"


def test_every_variable_renders() -> None:
    text = " ".join("{" + v + "}" for v in VARIABLES)
    assert template_fields(text) == list(VARIABLES)
    out = render(text, SAMPLE_CONTEXT)
    assert out == (
        "Acme Cloud https://billing.example.com/pay/inv_123 Jane Doe Jane $49.00 inv_123 3 "
        "support@example.com November 26, 2026 2 $98.00 insufficient_funds"
    )


def test_values_with_braces_are_not_reinterpreted() -> None:
    ctx = sample_context("{billing_link} & Co")
    assert render("{company_name}", ctx) == "{billing_link} & Co"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("Pay {amout} at {billing_link}", ["unknown variable {amout}", "did you mean {amount}"]),
        ("Hi {nickname}, {billing_link}", ["unknown variable {nickname}", "{customer_name}"]),
        ("Pay at {billing_link", ["unbalanced braces", "character 8", "never closed"]),
        ("Pay } at {billing_link}", ["unbalanced braces", "'}' at character 5"]),
        ("Pay {amount {billing_link}}", ["unbalanced braces", "not closed before"]),
        ("Pay {} at {billing_link}", ["empty braces"]),
        ("Pay {amount:>10} at {billing_link}", ["{amount} takes no format options"]),
        ("Pay {amount!r} at {billing_link}", ["{amount} takes no format options"]),
        ("Pay {0} at {billing_link}", ["unknown variable {0}"]),
        ("Pay {billing_link.x}", ["{billing_link} takes no format options"]),
    ],
)
def test_bad_templates_name_the_problem(text: str, fragments: list[str]) -> None:
    with pytest.raises(InputError) as err:
        validate_sms_template(text)
    assert err.value.field == "template"
    for fragment in fragments:
        assert fragment in err.value.message


def test_sms_template_must_contain_the_billing_link() -> None:
    with pytest.raises(InputError) as err:
        validate_sms_template("{company_name}: please pay {amount}.")
    assert "{billing_link}" in err.value.message


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_sms_template_is_refused(text: str) -> None:
    with pytest.raises(InputError, match="empty"):
        validate_sms_template(text)


def test_sms_template_of_exactly_ten_segments_is_accepted_eleven_refused() -> None:
    # Rendered: link + " " + filler + " " + opt-out line; ten GSM-7 parts hold 10 x 153.
    fixed = len(SAMPLE_CONTEXT.billing_link) + 1 + 1 + len(OPT_OUT_LINE)
    longest = MAX_SMS_SEGMENTS * 153 - fixed
    ok = "{billing_link} " + "a" * longest
    info = validate_sms_template(ok)
    assert (info.encoding, info.segments, info.units) == ("GSM-7", 10, 1530)
    with pytest.raises(InputError) as err:
        validate_sms_template(ok + "a")
    assert "11 segments" in err.value.message
    assert "at most 10" in err.value.message


def test_segment_limit_counts_ucs2_and_uses_the_given_context() -> None:
    fixed = len(SAMPLE_CONTEXT.billing_link) + 2 + len(OPT_OUT_LINE)
    text = "{billing_link} " + "Á" * (MAX_SMS_SEGMENTS * 67 - fixed)
    assert validate_sms_template(text).segments == 10
    with pytest.raises(InputError, match="UCS-2"):
        validate_sms_template(text + "Á")
    # The same template with a longer company name goes over the limit.
    long_ctx = sample_context("A" * 30)
    with pytest.raises(InputError):
        validate_sms_template("{company_name}" + text, long_ctx)
    assert validate_sms_template("{company_name}" + text[: -40], long_ctx).segments <= 10


def test_builtin_templates_are_valid() -> None:
    assert validate_sms_template(DEFAULT_SMS_TEMPLATE).segments == 1
    validate_email_template(DEFAULT_EMAIL_SUBJECT, DEFAULT_EMAIL_BODY)


# --- the opt-out line ----------------------------------------------------------------------


def test_opt_out_line_is_appended_and_counted() -> None:
    text = render_sms("Pay {amount}: {billing_link}", SAMPLE_CONTEXT)
    assert text == f"Pay $49.00: {SAMPLE_CONTEXT.billing_link} {OPT_OUT_LINE}"
    # A body of 134 characters is one segment alone, two with the opt-out line (161).
    body = "{billing_link} " + "x" * (134 - len(SAMPLE_CONTEXT.billing_link) - 1)
    assert len(render(body, SAMPLE_CONTEXT)) == 134
    sent = render_sms(body, SAMPLE_CONTEXT)
    assert len(sent) == 161
    assert count_segments(sent).segments == 2


@pytest.mark.parametrize(
    "ending",
    [
        "Reply STOP to unsubscribe.",
        "Reply STOP to unsubscribe",
        "reply stop to opt out",
        "Text STOP to opt out.",
        "Txt STOP to end",
        "Reply STOP to cancel.",
        "To opt out, reply STOP.",
        "Opt-out: text STOP",
        'Reply "STOP" to stop receiving these messages.',
    ],
)
def test_existing_stop_instruction_is_not_duplicated(ending: str) -> None:
    template = "Pay here: {billing_link}. " + ending
    assert has_opt_out(render(template, SAMPLE_CONTEXT))
    text = render_sms(template, SAMPLE_CONTEXT)
    assert text.endswith(ending)
    assert OPT_OUT_LINE not in text or ending == OPT_OUT_LINE
    assert text.lower().count("stop") == ending.lower().count("stop")


@pytest.mark.parametrize(
    "template",
    [
        "Reply STOP to unsubscribe. Pay at {billing_link}",  # STOP not at the end
        "Pay at {billing_link}. Stop by our office.",
        "Pay at {billing_link}. We will stop service soon.",
        "Pay at {billing_link}. Msg & data rates may apply.",
    ],
)
def test_opt_out_line_is_added_when_the_template_does_not_end_with_one(template: str) -> None:
    assert render_sms(template, SAMPLE_CONTEXT).endswith(" " + OPT_OUT_LINE)


def test_first_name_and_sample_context() -> None:
    ctx = TemplateContext("Co", "https://x.test/p", "  ", "$1.00", "i", 0, "")
    assert ctx.values()["first_name"] == ""
    sample = sample_context("Globex", "help@globex.test", currency="EUR", days_overdue=7,
                            locale="de")
    assert sample.company_name == "Globex"
    assert sample.support_contact == "help@globex.test"
    assert sample.amount == "49,00 €"
    assert sample.failed_on == "26. November 2026"
    assert sample.days_overdue == 7
    assert sample_context().company_name == SAMPLE_CONTEXT.company_name


# --- email ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "body", "field", "fragment"),
    [
        ("", "Pay {billing_link}", "subject", "empty"),
        ("Line\nBreak", "Pay {billing_link}", "subject", "one line"),
        ("Pay {amout}", "Pay {billing_link}", "subject", "unknown variable {amout}"),
        ("Invoice {invoice_id}", "Pay {amount} now", "body", "{billing_link}"),
        ("Invoice {invoice_id}", "Pay {billing_link", "body", "unbalanced braces"),
        ("Invoice {invoice_id}", "  ", "body", "empty"),
    ],
)
def test_bad_email_templates_name_the_field(
    subject: str, body: str, field: str, fragment: str
) -> None:
    with pytest.raises(InputError) as err:
        validate_email_template(subject, body)
    assert err.value.field == field
    assert fragment in err.value.message
