"""Locales in the database: customers' locales from the CSV and Stripe, templates per locale with
their fallback chain, previews that quote what a send charges."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from temporalio.testing import ActivityEnvironment

from activities import DunningActivities
from dunning.accounts import messaging
from dunning.customers.importer import import_stream
from dunning.domain.contract import InputError, MessageRequest
from dunning.domain.templates import SAMPLE_CONTEXT, SAMPLE_FAILED_ON
from dunning.platform.db import Database
from dunning.platform.db.models import Account, Customer, Message
from dunning.platform.providers.email import ConsoleEmailProvider
from dunning.platform.providers.sms import ConsoleSmsProvider
from dunning.webhooks.stripe import _preferred_locale
from tests.helpers import add_customer, make_account

Run = Callable[..., tuple[int, str, str]]


def _locale_of(db: Database, account: str, customer: str) -> str | None:
    with db.session() as s:
        row = s.get(Customer, (account, customer))
        assert row is not None
        return row.locale


def test_csv_locale_column_is_validated_and_stored(db: Database, uid: str) -> None:
    make_account(db, uid)
    csv = (
        b"customer_id,phone,locale\n"
        b"c1,+14155550101,pt_br\n"
        b"c2,+14155550102,es\n"
        b"c3,+14155550103,klingon\n"
        b"c4,+14155550104,\n"
    )
    with db.session() as s:
        report = import_stream(s, uid, io.BytesIO(csv), name="customers.csv")
    assert (report.imported, report.rejected) == (3, 1)
    assert report.errors[0].line == 4 and report.errors[0].reason.startswith("bad locale:")
    assert _locale_of(db, uid, "c1") == "pt-BR"
    assert _locale_of(db, uid, "c2") == "es"
    assert _locale_of(db, uid, "c4") is None
    # An empty cell later keeps the stored locale; a new one replaces it.
    again = b"customer_id,phone,locale\nc1,+14155550101,\nc2,+14155550102,fr-CA\n"
    with db.session() as s:
        import_stream(s, uid, io.BytesIO(again), name="customers.csv")
    assert _locale_of(db, uid, "c1") == "pt-BR"
    assert _locale_of(db, uid, "c2") == "fr-CA"


def test_stripe_preferred_locales() -> None:
    assert _preferred_locale(["pt-BR", "en"]) == "pt-BR"
    assert _preferred_locale(["zz", "es"]) == "es"
    assert _preferred_locale([]) is None
    assert _preferred_locale("es") is None  # not Stripe's shape


def test_template_fallback_chain(db: Database, uid: str) -> None:
    make_account(db, uid)
    with db.session() as s:
        # Built-in: pt-BR falls back to the shipped Portuguese; ko (none shipped) to the
        # account's English.
        pt = messaging.sms_template_choice(s, uid, None, step=1, step_count=3, locale="pt-BR")
        assert (pt.locale, pt.source) == ("pt", "built-in")
        assert "forma de pagamento" in pt.body
        ko = messaging.sms_template_choice(s, uid, None, step=1, step_count=3, locale="ko")
        assert (ko.locale, ko.source) == ("en", "built-in")
        # The final step has its own tone.
        last = messaging.sms_template_choice(s, uid, None, step=3, step_count=3, locale="es")
        assert "aviso final" in last.body
        messaging.set_sms_template(s, uid, "Conta {billing_link}", locale="pt")
        messaging.set_sms_template(s, uid, "Brasil {billing_link}", locale="pt-BR", plan="pro")
        messaging.set_sms_template(s, uid, "Default {billing_link}")
        messaging.set_sms_template(s, uid, "Step two {billing_link}", step=2)
    with db.session() as s:
        def body(locale: str | None, plan: str | None = None, step: int = 1) -> str:
            return messaging.sms_template_choice(
                s, uid, plan, step=step, step_count=3, locale=locale
            ).body

        assert body("pt-BR", "pro") == "Brasil {billing_link}"
        assert body("pt-BR") == "Conta {billing_link}"  # pt-BR -> pt
        assert body("pt") == "Conta {billing_link}"
        assert body("ko") == "Default {billing_link}"  # -> the account's default locale
        assert body(None) == "Default {billing_link}"
        assert body(None, step=2) == "Step two {billing_link}"
        assert body("es").startswith("{company_name}: no pudimos cobrar")  # shipped Spanish
        with pytest.raises(InputError, match="locale"):
            messaging.set_sms_template(s, uid, "x {billing_link}", locale="xx")
        with pytest.raises(InputError, match="billing_link"):
            messaging.set_sms_template(s, uid, "sin enlace", locale="es")


def test_email_templates_per_locale(db: Database, uid: str) -> None:
    make_account(db, uid)
    with db.session() as s:
        messaging.set_email_template(s, uid, "Hallo {first_name}", "Zahlen: {billing_link}",
                                     locale="de")
        de = messaging.preview_email(s, uid, step=1, locale="de-AT", currency="EUR")
        fr = messaging.preview_email(s, uid, step=1, locale="fr", currency="EUR")
    assert de["subject"] == "Hallo Jane" and de["template_locale"] == "de"
    assert "€ 49,00" in de["html"] and 'lang="de"' in de["html"]  # Austrian format
    assert fr["subject"] == "Votre paiement de 49,00 € à Acme Cloud n'a pas abouti"
    assert 'lang="fr"' in fr["html"] and "Mettre à jour mon paiement" in fr["html"]


def _request(account: str, currency: str, amount: int) -> MessageRequest:
    """A case shaped like the preview's sample customer (same link, invoice, failure day)."""
    failed = datetime.combine(SAMPLE_FAILED_ON, datetime.min.time(), tzinfo=UTC)
    return MessageRequest(
        workflow_id=f"dunning:{account}:inv_123", account_id=account, customer_id="cus1",
        invoice_id="inv_123", step=1, step_count=3, amount_due=amount, currency=currency,
        billing_link=SAMPLE_CONTEXT.billing_link, failed_at=failed, now=failed,
    )


@pytest.mark.parametrize(
    ("locale", "currency", "amount", "expected"),
    [("es", "EUR", 4900, "49,00 €"), ("pt-BR", "BRL", 4900, "R$ 49,00"),
     ("ja", "JPY", 4900, "￥4,900"), (None, "USD", 4900, "$49.00")],
)
def test_the_quote_equals_what_the_engine_charges(
    db: Database, uid: str, locale: str | None, currency: str, amount: int, expected: str
) -> None:
    """The preview in the customer's locale (opt-out line in their language included) is
    exactly the text the send activity sends, with the same segments and credits."""
    make_account(db, uid, schedule="0s,2s,4s")
    add_customer(db, uid, "cus1", name=SAMPLE_CONTEXT.customer_name)
    with db.session() as s:
        customer = s.get_one(Customer, (uid, "cus1"))
        customer.locale = locale
        s.get_one(Account, uid).track_links = False
    sms = ConsoleSmsProvider(echo=False)
    acts = DunningActivities(db, sms, ConsoleEmailProvider(echo=False))
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, workflow_run_id=f"run-{uid}", workflow_id="wf")
    result = env.run(acts.send_sms, _request(uid, currency, amount))
    assert result.status == "sent"
    sent = sms.sent[0].text
    assert expected in sent
    with db.session() as s:
        preview = messaging.preview_sms(s, uid, step=1, currency=currency, locale=locale)
        msg = s.scalars(select(Message).where(Message.account_id == uid)).one()
    assert preview["text"] == sent
    assert (preview["segments"], preview["credits"]) == (msg.segments, result.credits)
    assert msg.credits == result.credits


def test_account_locale_and_track_links_cli(cli: Run, db: Database, uid: str) -> None:
    make_account(db, uid)
    code, out, err = cli("account", "update", uid, "--locale", "pt_br", "--track-links", "off",
                         "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert (data["locale"], data["track_links"]) == ("pt-BR", False)
    code, out, err = cli("account", "update", uid, "--locale", "english")
    assert code == 1 and out == "" and "locale" in err and "Traceback" not in err
    code, out, err = cli("sms", "preview", "--account", uid, "--locale", "es", "--json",
                         "--currency", "EUR")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["text"].endswith("Responde STOP para darte de baja.")
    assert "49,00 €" in data["text"] and data["template_locale"] == "es"
    code, out, err = cli("sms", "template", "set", "--account", uid, "--locale", "de",
                         "{company_name}: bitte {amount} zahlen: {billing_link}", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["text"].endswith("Antworten Sie STOP zum Abmelden.")
    code, _, err = cli("sms", "template", "set", "--account", uid, "--locale", "zz",
                       "x {billing_link}")
    assert code == 1 and "locale" in err


def test_email_preview_writes_the_html_part(cli: Run, db: Database, uid: str, tmp_path) -> None:
    make_account(db, uid)
    target = tmp_path / "step2.html"
    code, out, err = cli("email", "preview", "--account", uid, "--step", "2", "--locale", "de",
                         "--currency", "EUR", "--html", str(target))
    assert (code, err) == (0, "")
    assert out.startswith("Subject: Erinnerung: Ihre Zahlung über 49,00 € an Acme Cloud ")
    html = target.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and 'lang="de"' in html
    assert "Zahlungsdaten aktualisieren" in html and "49,00 €" in html
    code, _, err = cli("email", "preview", "--account", uid, "--html",
                       str(tmp_path / "missing" / "x.html"))
    assert code == 1 and "--html" in err and "Traceback" not in err


def test_shipped_email_leaves_out_the_contact_line_without_a_contact(
    db: Database, uid: str
) -> None:
    make_account(db, uid, support_contact=None)
    with db.session() as s:
        s.get_one(Account, uid).email_from = None
        for locale in ("en", "es", "fr", "de", "pt", "ja"):
            for step in (2, 3):  # a reminder in between, the last one
                data = messaging.preview_email(s, uid, step=step, locale=locale)
                assert "{support_contact}" not in data["body"]
                assert "\n\n\n" not in data["body"]
                for dangling in ("Contact .", "a .", "com .", "Contactez .", "an .", "は までお"):
                    assert dangling not in data["body"], (locale, step, data["body"])
        s.get_one(Account, uid).support_contact = "help@acme.test"
        data = messaging.preview_email(s, uid, step=2, locale="es")
        assert "¿Dudas? Escríbenos a help@acme.test." in data["body"]
