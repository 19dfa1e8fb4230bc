"""Locales: tags, the fallback chain, CLDR formatting and the shipped texts."""

from __future__ import annotations

from datetime import date
from html.parser import HTMLParser

import pytest

from dunning.domain.contract import InputError
from dunning.domain.email_layout import compose_html
from dunning.domain.locales import (
    SHIPPED_LOCALES,
    Stage,
    catalog,
    format_amount,
    format_day,
    locale_chain,
    normalize_locale,
    shipped_email,
    shipped_sms,
    stage_of,
)
from dunning.domain.segments import count_segments
from dunning.domain.templates import (
    has_opt_out,
    opt_out_line,
    render,
    render_sms,
    sample_context,
    template_fields,
    validate_email_template,
    validate_sms_template,
)

STAGES: tuple[Stage, ...] = ("first", "reminder", "final")
# A typical invoice currency per shipped language, for the sample amount.
CURRENCY = {"en": "USD", "es": "EUR", "fr": "EUR", "de": "EUR", "pt": "BRL", "ja": "JPY"}
LATIN = ("en", "es", "fr", "de", "pt")


@pytest.mark.parametrize(
    ("tag", "expected"),
    [("pt-BR", "pt-BR"), ("pt_br", "pt-BR"), ("PT-br", "pt-BR"), ("es", "es"), ("ja", "ja"),
     ("zh-Hant-TW", "zh-Hant-TW"), ("es-419", "es-419"), (" de ", "de")],
)
def test_normalize_locale(tag: str, expected: str) -> None:
    assert normalize_locale(tag) == expected


@pytest.mark.parametrize("tag", ["", "english", "xx", "en-XX", "1234", "pt BR", "e"])
def test_bad_locales_are_refused_with_a_clear_error(tag: str) -> None:
    with pytest.raises(InputError) as info:
        normalize_locale(tag)
    assert info.value.field == "locale"
    assert "BCP 47" in info.value.message or "CLDR" in info.value.message


def test_fallback_chain() -> None:
    assert locale_chain("pt-BR", "de") == ["pt-BR", "pt", "de", "en"]
    assert locale_chain("pt-BR", "en") == ["pt-BR", "pt", "en"]
    assert locale_chain(None, "es-MX") == ["es-MX", "es", "en"]
    assert locale_chain("bogus", "fr") == ["fr", "en"]  # an unusable stored tag is skipped


def test_amounts_and_dates_follow_the_locale() -> None:
    assert format_amount(4900, "JPY", "ja") == "￥4,900"  # no minor unit
    assert format_amount(4900, "JPY", "es") == "4.900 JPY"
    assert format_amount(4900, "EUR", "es") == "49,00 €"
    assert format_amount(4900, "BRL", "pt-BR") == "R$ 49,00"
    assert format_amount(4900, "USD", "en") == "$49.00"
    assert format_day(date(2026, 11, 29), "es") == "29 de noviembre de 2026"
    assert format_day(date(2026, 11, 29), "de") == "29. November 2026"


def test_stages() -> None:
    assert [stage_of(s, 4) for s in (1, 2, 3, 4)] == ["first", "reminder", "reminder", "final"]
    assert stage_of(1, 1) == "first"
    assert stage_of(0, 0) == "first"


@pytest.mark.parametrize("language", SHIPPED_LOCALES)
def test_every_shipped_language_is_complete_and_valid(language: str) -> None:
    data = catalog(language)
    assert data is not None
    for key in ("opt_out", "help", "help_no_contact", "stop_confirmation", "button",
                "link_fallback", "footer"):
        assert data[key].strip(), key
    chain = [language]
    ctx = sample_context("Acme Cloud", "help@acme.test", currency=CURRENCY[language],
                         locale=language)
    assert has_opt_out(opt_out_line(chain))
    for stage in STAGES:
        sms = shipped_sms(language, stage)
        info = validate_sms_template(sms, ctx, chain)
        # Short and cheap: GSM-7 in every Latin-script language, at most two segments.
        if language in LATIN:
            assert info.encoding == "GSM-7", (language, stage, render_sms(sms, ctx, chain))
        assert info.segments <= 2, (language, stage, info)
        text = render_sms(sms, ctx, chain)
        assert ctx.amount in text and ctx.billing_link in text
        assert text.endswith(opt_out_line(chain))
        subject, body = shipped_email(language, stage)
        validate_email_template(subject, body)
        assert "{amount}" in subject + body and "{billing_link}" in body
        assert ctx.amount in render(body, ctx)


@pytest.mark.parametrize("language", SHIPPED_LOCALES)
def test_the_reply_texts_fit_in_one_or_two_gsm7_segments(language: str) -> None:
    data = catalog(language)
    assert data is not None
    help_text = data["help"].format(company_name="Acme Cloud", support_contact="help@acme.test")
    for text in (f"{help_text} {data['opt_out']}",
                 data["stop_confirmation"].format(company_names="Acme Cloud")):
        info = count_segments(text)
        assert info.segments <= 2, (language, text)
        assert info.encoding == "GSM-7" or language not in LATIN, (language, text)


def test_localized_opt_out_line_is_not_added_twice() -> None:
    ctx = sample_context(locale="es")
    template = "Paga {amount} en {billing_link}. Responde STOP para darte de baja."
    assert render_sms(template, ctx, ["es"]).count("STOP") == 1
    assert render_sms("Paga {amount} en {billing_link}", ctx, ["es"]).endswith(
        "Responde STOP para darte de baja."
    )


def test_failed_on_is_a_variable() -> None:
    assert template_fields("{failed_on} {billing_link}") == ["failed_on", "billing_link"]


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_html_part_is_accessible_inline_and_escapes_values() -> None:
    ctx = sample_context("Acme <Labs> & Co", "help@acme.test", currency="EUR", locale="fr")
    subject, body = shipped_email("fr", "first")
    html = compose_html(render(subject, ctx), render(body, ctx), ctx, ["fr"])
    parser = _Collect()
    parser.feed(html)
    tags = dict(parser.tags)
    assert tags["html"]["lang"] == "fr" and tags["html"]["dir"] == "ltr"
    assert "img" not in tags and "link" not in tags and "script" not in tags  # nothing remote
    assert "style" not in tags  # inline CSS only
    buttons = [a for t, a in parser.tags if t == "a" and a.get("href") == ctx.billing_link]
    assert buttons, "a link to the billing page"
    assert "Mettre à jour mon paiement" in html  # the button, in French
    assert "Acme &lt;Labs&gt; &amp; Co" in html and "<Labs>" not in html
    assert "49,00 €" in html
    # No stray template markers left.
    assert "$" not in html
