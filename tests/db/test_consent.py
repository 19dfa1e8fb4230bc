"""Consent: keywords, numbers, opt-out state and history, reply texts."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import select

from dunning.customers import consent
from dunning.domain.templates import OPT_OUT_LINE
from dunning.platform.db import Database
from dunning.platform.db.models import Account, ConsentEvent, OptOut

STOP_WORDS = ["STOP", "STOPALL", "STOP ALL", "UNSUBSCRIBE", "UNSUB", "CANCEL", "END", "QUIT",
              "OPTOUT", "OPT-OUT", "REVOKE"]


def fresh_number() -> str:
    return f"+1{random.randint(2_000_000_000, 9_999_999_999)}"


@pytest.mark.parametrize("word", STOP_WORDS)
def test_stop_family_any_case_trimmed(word: str) -> None:
    for text in (word, word.lower(), f"  {word.title()}  ", f"{word}.", f"\n{word}!\n"):
        # The recorded keyword is the normalized one: punctuation inside counts as a space.
        assert consent.classify_inbound(text) == ("opt_out", word.replace("-", " ")), text


def test_stop_all_with_inner_whitespace() -> None:
    assert consent.classify_inbound("stop   all") == ("opt_out", "STOP ALL")


@pytest.mark.parametrize("word", ["START", "UNSTOP", "YES"])
def test_start_family(word: str) -> None:
    assert consent.classify_inbound(f" {word.lower()} ") == ("opt_in", word)


@pytest.mark.parametrize("word", ["HELP", "INFO"])
def test_help_family(word: str) -> None:
    assert consent.classify_inbound(word.capitalize()) == ("help", word)


@pytest.mark.parametrize(
    "text", ["stopped", "I paid", "", "STOP STOP", "yes please", "Stop by later",
             "Can you stop by at 5?", "stop the car", "Para mañana", "cancel my meeting?",
             "end of month"]
)
def test_other_messages_are_not_keywords(text: str) -> None:
    assert consent.classify_inbound(text) == ("other", None)


@pytest.mark.parametrize(
    ("text", "keyword"),
    [
        ("Opt out", "OPT OUT"), ("opt-out!", "OPT OUT"), ("PARAR", "PARAR"),
        ("parar.", "PARAR"), ("Baja", "BAJA"), ("CANCELAR", "CANCELAR"),
        ("No más", "NO MAS"), ("unsubscribe me", "UNSUBSCRIBE ME"), ("Revoke", "REVOKE"),
        ("stop all", "STOP ALL"), ("please stop texting me", "STOP TEXTING ME"),
        ("Stop please!", "STOP"), ("s.t.o.p", "STOP"), ("por favor, dar de baja", "DAR DE BAJA"),
        ("Désabonner", "DESABONNER"), ("Abmelden", "ABMELDEN"),
    ],
)
def test_any_reasonable_means_opt_out(text: str, keyword: str) -> None:
    """FCC 2024: consent may be revoked by any reasonable means (docs/COMPLIANCE.md)."""
    assert consent.classify_inbound(text) == ("opt_out", keyword)


def test_opt_in_must_be_exact() -> None:
    assert consent.classify_inbound("yes") == ("opt_in", "YES")
    assert consent.classify_inbound("yes please") == ("other", None)


def test_message_intent_wins() -> None:
    assert consent.classify_inbound("stop it now!", "optout") == ("opt_out", "STOP IT")
    assert consent.classify_inbound("go away", "optout") == ("opt_out", "intent:optout")
    assert consent.classify_inbound("STOP", "OptOut") == ("opt_out", "STOP")
    assert consent.classify_inbound("go on", "optin") == ("opt_in", "intent:optin")
    assert consent.classify_inbound("??", "help") == ("help", "intent:help")
    assert consent.classify_inbound("STOP", "") == ("opt_out", "STOP")
    assert consent.classify_inbound("hello", "unknown-intent") == ("other", None)


def test_normalize_number() -> None:
    assert consent.normalize_number("14155550123") == "+14155550123"
    assert consent.normalize_number("+1 (415) 555-0123") == "+14155550123"
    assert consent.normalize_number("447700900123") == "+447700900123"
    for bad in (None, "", "abc", "123", "0014155550123", "1" * 16, "+1415555012x"):
        assert consent.normalize_number(bad) is None, bad


def test_redact_numbers() -> None:
    text = consent.redact_numbers("call me at +1 415-555-0123 or 14155550123, ok 42")
    assert "555" not in text and "0123" not in text
    assert text.endswith("ok 42")


def test_texts() -> None:
    acct = Account(id="a", company_name="Acme Cloud", support_contact="help@acme.test")
    text = consent.help_text(acct)
    assert "Acme Cloud" in text and "help@acme.test" in text and text.endswith(OPT_OUT_LINE)
    fallback = Account(id="b", company_name="Beta", email_from="billing@beta.test")
    assert "billing@beta.test" in consent.help_text(fallback)
    assert consent.stop_confirmation_text(["Acme"]) == (
        "You are unsubscribed from Acme payment reminders. No more messages will be sent. "
        "Reply START to resubscribe."
    )
    assert "Acme, Beta, and Gamma payment" in consent.stop_confirmation_text(  # CLDR's list
        ["Acme", "Beta", "Gamma", "Beta"]
    )


def test_texts_in_the_customers_language() -> None:
    acct = Account(id="a", company_name="Acme", support_contact="ayuda@acme.test", locale="en")
    es = consent.help_text(acct, ["es-MX", "es", "en"])
    assert es == ("Recordatorios de pago de Acme. Ayuda: ayuda@acme.test. "
                  "Responde STOP para darte de baja.")
    assert consent.stop_confirmation_text(["Acme", "Beta"], ["pt-BR", "pt"]).startswith(
        "Voce cancelou os lembretes de pagamento de Acme e Beta."
    )
    de = consent.stop_confirmation_text(["Acme"], ["de"])
    assert "abgemeldet" in de and "START" in de
    # A language without shipped texts answers in English.
    assert consent.help_text(acct, ["ko", "en"]).endswith(OPT_OUT_LINE)
    assert consent.help_text(acct, ["ja", "en"]).endswith("配信停止はSTOPと返信してください。")


def _account(db: Database, account_id: str, sender: str | None) -> None:
    with db.session() as s:
        s.add(Account(id=account_id, company_name=f"Co {account_id}", sms_sender=sender))


def test_opt_out_and_in_state_and_history(db: Database, uid: str) -> None:
    acct, phone = f"c-{uid}", fresh_number()
    _account(db, acct, fresh_number())
    with db.session() as s:
        assert not consent.is_opted_out(s, acct, phone)
        assert consent.record_opt_out(s, acct, phone, source="test", keyword="STOP",
                                      provider_message_id="m1") is True
    with db.session() as s:
        assert consent.is_opted_out(s, acct, phone)
        # Again: no change of state, but the request is kept in the history.
        assert consent.record_opt_out(s, acct, phone, source="test", keyword="END") is False
    with db.session() as s:
        row = s.get(OptOut, (acct, phone))
        assert row is not None and row.opted_out and row.keyword == "STOP"
        first_change = row.changed_at
        assert consent.record_opt_in(s, acct, phone, source="test", keyword="START") is True
    with db.session() as s:
        assert not consent.is_opted_out(s, acct, phone)
        row = s.get(OptOut, (acct, phone))
        assert row is not None and row.source == "test" and row.keyword == "START"
        assert row.changed_at >= first_change
        assert consent.record_opt_in(s, acct, phone, source="test") is False
        events = s.scalars(
            select(ConsentEvent).where(ConsentEvent.account_id == acct).order_by(ConsentEvent.id)
        ).all()
        assert [(e.action, e.keyword) for e in events] == [
            ("opt_out", "STOP"), ("opt_out", "END"), ("opt_in", "START"), ("opt_in", None)
        ]
        assert events[0].provider_message_id == "m1"
        assert all(e.phone_e164 == phone and e.created_at is not None for e in events)


def test_opt_in_without_prior_opt_out(db: Database, uid: str) -> None:
    acct, phone = f"c-{uid}", fresh_number()
    _account(db, acct, None)
    with db.session() as s:
        assert consent.record_opt_in(s, acct, phone, source="test") is False
    with db.session() as s:
        assert not consent.is_opted_out(s, acct, phone)


def test_accounts_for_sender(db: Database, uid: str) -> None:
    sender, other = fresh_number(), fresh_number()
    _account(db, f"b-{uid}", sender)
    _account(db, f"a-{uid}", sender)
    _account(db, f"z-{uid}", other)
    with db.session() as s:
        assert [a.id for a in consent.accounts_for_sender(s, sender)] == [f"a-{uid}", f"b-{uid}"]
        assert [a.id for a in consent.accounts_for_sender(s, other)] == [f"z-{uid}"]
        assert consent.accounts_for_sender(s, fresh_number()) == []


def test_reply_is_recorded(db: Database, uid: str) -> None:
    acct, phone = f"c-{uid}", fresh_number()
    _account(db, acct, None)
    with db.session() as s:
        consent.record_reply(s, acct, phone, source="test", provider_message_id="u1")
    with db.session() as s:
        ev = s.scalars(select(ConsentEvent).where(ConsentEvent.account_id == acct)).one()
        assert (ev.action, ev.provider_message_id) == ("reply", "u1")
        assert not consent.is_opted_out(s, acct, phone)
