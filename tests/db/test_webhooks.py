"""The webhook server: signatures, bodies, STOP/START/HELP, delivery reports, health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import func, select

from dunning.credits import ledger
from dunning.domain.templates import OPT_OUT_LINE
from dunning.platform.db import Database
from dunning.platform.db.models import Account, ConsentEvent, CreditEntry, Customer, Message, OptOut
from dunning.platform.providers import TransientProviderError
from dunning.platform.providers.sms import ConsoleSmsProvider, OutgoingSms, PlivoSmsProvider
from dunning.platform.settings import Settings
from dunning.webhooks import create_app
from dunning.webhooks.server import make_server, serve_webhooks
from tests.fakes.plivo import FakePlivo
from tests.unit.test_signatures import independent_v2, independent_v3

with warnings.catch_warnings():  # Starlette 1.x suggests httpx2 for its test client
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

TOKEN = "test-auth-token-0123456789"
PUBLIC_URL = "https://hooks.example.test/dunning"
INBOUND = "/webhooks/plivo/inbound"
STATUS = "/webhooks/plivo/status"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


# --- signing, written independently of dunning.webhooks.signatures --------------------------




def signed_headers(
    path: str,
    params: list[tuple[str, str]],
    *,
    query: str = "",
    scheme: str = "v3",
    token: str = TOKEN,
    nonce: str | None = None,
    public_url: str = PUBLIC_URL,
) -> dict[str, str]:
    nonce = nonce or uuid.uuid4().hex
    url = public_url + path + (f"?{query}" if query else "")
    if scheme == "v3":
        return {**FORM, "X-Plivo-Signature-V3": independent_v3(token, url, nonce, params),
                "X-Plivo-Signature-V3-Nonce": nonce}
    return {**FORM, "X-Plivo-Signature-V2": independent_v2(token, url, nonce),
            "X-Plivo-Signature-V2-Nonce": nonce}


def post(client: TestClient, path: str, params: dict[str, str] | list[tuple[str, str]], *,
         query: str = "", **kw: str) -> httpx.Response:
    items = list(params.items()) if isinstance(params, dict) else params
    headers = signed_headers(path, items, query=query, **kw)
    url = path + (f"?{query}" if query else "")
    return client.post(url, content=urlencode(items), headers=headers)


# --- fixtures -------------------------------------------------------------------------------


def fresh_number() -> str:
    return f"+1{random.randint(2_000_000_000, 9_999_999_999)}"


def digits(e164: str) -> str:
    return e164.lstrip("+")


def make_settings(**kw: object) -> Settings:
    values: dict[str, object] = {
        "plivo_auth_token": TOKEN, "public_url": PUBLIC_URL, "sms_backend": "console",
    }
    values.update(kw)
    return Settings(**values)  # type: ignore[arg-type]


class Tenant:
    def __init__(self, db: Database, account_id: str, sender: str, company: str,
                 support: str | None = "help@acme.test", balance: int = 100) -> None:
        self.id, self.sender, self.company = account_id, sender, company
        with db.session() as s:
            s.add(Account(id=account_id, company_name=company, sms_sender=sender,
                          support_contact=support, sms_enabled=True))
        if balance:
            with db.session() as s:
                ledger.top_up(s, account_id, balance)


@pytest.fixture
def sms() -> ConsoleSmsProvider:
    return ConsoleSmsProvider()


@pytest.fixture
def client(db: Database, sms: ConsoleSmsProvider) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(), db, sms)) as c:
        yield c


def opted_out(db: Database, account_id: str, phone: str) -> bool:
    with db.session() as s:
        row = s.get(OptOut, (account_id, phone))
        return bool(row is not None and row.opted_out)


def events(db: Database, account_id: str, phone: str) -> list[tuple[str, str | None]]:
    with db.session() as s:
        rows = s.scalars(
            select(ConsentEvent)
            .where(ConsentEvent.account_id == account_id, ConsentEvent.phone_e164 == phone)
            .order_by(ConsentEvent.id)
        ).all()
        return [(r.action, r.keyword) for r in rows]


def inbound(frm: str, to: str, text: str, *, msg_uuid: str | None = None,
            **extra: str) -> dict[str, str]:
    return {"From": digits(frm), "To": digits(to), "Text": text, "Type": "sms",
            "MessageUUID": msg_uuid or str(uuid.uuid4()), **extra}


def replies_to(sms: ConsoleSmsProvider, phone: str) -> list[OutgoingSms]:
    return [m for m in sms.sent if m.dst == phone]


# --- signatures and bodies ------------------------------------------------------------------


def test_unsigned_and_forged_requests_change_nothing(
    db: Database, uid: str, client: TestClient, sms: ConsoleSmsProvider
) -> None:
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme")
    phone = fresh_number()
    body = inbound(phone, t.sender, "STOP")
    items = list(body.items())

    # No signature at all.
    r = client.post(INBOUND, content=urlencode(items), headers=FORM)
    assert r.status_code == 403
    # Wrong token (V3 and V2).
    assert post(client, INBOUND, body, token="not-the-token").status_code == 403
    assert post(client, INBOUND, body, token="not-the-token", scheme="v2").status_code == 403
    # Tampered: signed for HELP, sent as STOP.
    headers = signed_headers(INBOUND, list({**body, "Text": "HELP"}.items()))
    assert client.post(INBOUND, content=urlencode(items), headers=headers).status_code == 403
    # Stale: a signature made for another nonce.
    headers = signed_headers(INBOUND, items, nonce="nonce-a")
    headers["X-Plivo-Signature-V3-Nonce"] = "nonce-b"
    assert client.post(INBOUND, content=urlencode(items), headers=headers).status_code == 403
    # Missing nonce.
    headers = signed_headers(INBOUND, items)
    del headers["X-Plivo-Signature-V3-Nonce"]
    assert client.post(INBOUND, content=urlencode(items), headers=headers).status_code == 403
    # Signed over the URL the request reached instead of DUNNING_PUBLIC_URL.
    r = post(client, INBOUND, body, public_url="http://testserver")
    assert r.status_code == 403
    # Signed for the other endpoint.
    headers = signed_headers(STATUS, items)
    assert client.post(INBOUND, content=urlencode(items), headers=headers).status_code == 403
    # A V3 signature that fails is not rescued by a valid V2 pair.
    headers = {**signed_headers(INBOUND, items, token="bad"),
               **signed_headers(INBOUND, items, scheme="v2")}
    assert client.post(INBOUND, content=urlencode(items), headers=headers).status_code == 403

    assert not opted_out(db, t.id, phone)
    assert events(db, t.id, phone) == []
    assert replies_to(sms, phone) == []
    assert r.json() == {"error": "invalid Plivo signature"}


def test_v3_and_v2_signed_requests_work(db: Database, uid: str, client: TestClient) -> None:
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme")
    p1, p2 = fresh_number(), fresh_number()
    assert post(client, INBOUND, inbound(p1, t.sender, "STOP")).status_code == 200
    assert post(client, INBOUND, inbound(p2, t.sender, "STOP"), scheme="v2").status_code == 200
    assert opted_out(db, t.id, p1) and opted_out(db, t.id, p2)


def test_several_v3_signatures_one_valid(db: Database, uid: str, client: TestClient) -> None:
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme")
    phone = fresh_number()
    items = list(inbound(phone, t.sender, "STOP").items())
    headers = signed_headers(INBOUND, items, nonce="n-multi")
    other = independent_v3("old-token", PUBLIC_URL + INBOUND, "n-multi", items)
    headers["X-Plivo-Signature-V3"] = f"{other},{headers['X-Plivo-Signature-V3']}"
    assert client.post(INBOUND, content=urlencode(items), headers=headers).status_code == 200
    assert opted_out(db, t.id, phone)


def test_replays(db: Database, uid: str, client: TestClient, sms: ConsoleSmsProvider) -> None:
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme")
    phone = fresh_number()
    items = list(inbound(phone, t.sender, "STOP").items())
    for scheme in ("v3", "v2"):
        headers = signed_headers(INBOUND, items, scheme=scheme)
        for _ in range(3):  # the same delivery again: accepted, handled once
            r = client.post(INBOUND, content=urlencode(items), headers=headers)
            assert r.status_code == 200
    assert events(db, t.id, phone) == [("opt_out", "STOP")]
    assert len(replies_to(sms, phone)) == 1

    # A captured V2 signature (URL + nonce only) replayed with another body is refused.
    headers = signed_headers(INBOUND, items, scheme="v2")
    assert client.post(INBOUND, content=urlencode(items), headers=headers).status_code == 200
    start = list(inbound(phone, t.sender, "START").items())
    r = client.post(INBOUND, content=urlencode(start), headers=headers)
    assert r.status_code == 403
    assert opted_out(db, t.id, phone)
    assert events(db, t.id, phone) == [("opt_out", "STOP")]


def _v3_and_v2(items: list[tuple[str, str]], path: str = INBOUND) -> dict[str, str]:
    """Headers as Plivo sends them: a V3 and a V2 signature, each with its own nonce."""
    v3 = signed_headers(path, items, scheme="v3")
    v2 = signed_headers(path, items, scheme="v2")
    return {**v3, **v2}


def test_v2_of_a_v3_and_v2_request_cannot_be_replayed_alone(
    db: Database, uid: str, client: TestClient
) -> None:
    """The downgrade: a genuine STOP signed with V3 and V2; its V2 pair replayed with a START
    body (no V3 header) must be refused, since both nonces were spent by the first request."""
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme")
    phone = fresh_number()
    stop = list(inbound(phone, t.sender, "STOP").items())
    headers = _v3_and_v2(stop)
    assert client.post(INBOUND, content=urlencode(stop), headers=headers).status_code == 200
    assert opted_out(db, t.id, phone)

    forged = list(inbound(phone, t.sender, "START").items())
    v2_only = {k: v for k, v in headers.items() if "V3" not in k}
    r = client.post(INBOUND, content=urlencode(forged), headers=v2_only)
    assert r.status_code == 403
    assert opted_out(db, t.id, phone)
    assert events(db, t.id, phone) == [("opt_out", "STOP")]


def test_both_signatures_must_verify(db: Database, uid: str, client: TestClient) -> None:
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme")
    phone = fresh_number()
    items = list(inbound(phone, t.sender, "STOP").items())
    good_v3_bad_v2 = {**_v3_and_v2(items),
                      **signed_headers(INBOUND, items, scheme="v2", token="wrong-token")}
    r = client.post(INBOUND, content=urlencode(items), headers=good_v3_bad_v2)
    assert r.status_code == 403
    bad_v3_good_v2 = {**_v3_and_v2(items),
                      **signed_headers(INBOUND, items, scheme="v3", token="wrong-token")}
    r = client.post(INBOUND, content=urlencode(items), headers=bad_v3_good_v2)
    assert r.status_code == 403
    assert not opted_out(db, t.id, phone) and events(db, t.id, phone) == []


def test_v3_only_setting_refuses_v2_alone(db: Database, uid: str) -> None:
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme")
    p1, p2, p3 = fresh_number(), fresh_number(), fresh_number()
    settings = make_settings(plivo_signatures="v3")
    with TestClient(create_app(settings, db, ConsoleSmsProvider())) as c:
        assert post(c, INBOUND, inbound(p1, t.sender, "STOP"), scheme="v2").status_code == 403
        assert post(c, INBOUND, inbound(p2, t.sender, "STOP")).status_code == 200
        both = list(inbound(p3, t.sender, "STOP").items())
        r = c.post(INBOUND, content=urlencode(both), headers=_v3_and_v2(both))
        assert r.status_code == 200
    assert not opted_out(db, t.id, p1)
    assert opted_out(db, t.id, p2) and opted_out(db, t.id, p3)


def test_plivo_signatures_setting_values() -> None:
    from dunning.platform.settings import SettingsError, load_settings

    assert load_settings(plivo_signatures="v3").plivo_signatures == "v3"
    assert load_settings(plivo_signatures="V3, v2").plivo_signatures == "v2,v3"
    assert load_settings().plivo_signatures == "v2,v3"
    with pytest.raises(SettingsError, match="DUNNING_PLIVO_SIGNATURES"):
        load_settings(plivo_signatures="v1")


def test_oversized_bodies(db: Database, uid: str, client: TestClient) -> None:
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme")
    phone = fresh_number()
    items = list(inbound(phone, t.sender, "STOP", Padding="x" * (70 * 1024)).items())
    headers = signed_headers(INBOUND, items)
    r = client.post(INBOUND, content=urlencode(items), headers=headers)
    assert r.status_code == 413
    # Without Content-Length (chunked), the limit still holds.
    data = urlencode(items).encode()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(data), 8192):
            yield data[i:i + 8192]

    r = client.post(INBOUND, content=chunks(), headers=headers)
    assert r.status_code == 413
    assert not opted_out(db, t.id, phone)


def test_malformed_bodies(db: Database, uid: str, client: TestClient) -> None:
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme")
    phone = fresh_number()
    good = inbound(phone, t.sender, "STOP")
    items = list(good.items())

    headers = signed_headers(INBOUND, items)
    r = client.post(INBOUND, content=b"From=\xff\xfe&Text=STOP", headers=headers)
    assert r.status_code == 400
    r = client.post(INBOUND, json=good, headers={k: v for k, v in headers.items()
                                                  if k != "Content-Type"})
    assert r.status_code == 415
    r = client.post(INBOUND, content=b"this is not a form", headers=headers)
    assert r.status_code == 400

    for bad in (
        {k: v for k, v in good.items() if k != "From"},
        {k: v for k, v in good.items() if k != "MessageUUID"},
        {**good, "From": "not-a-number"},
        {**good, "To": "1415-CALL-NOW"},
        {**good, "MessageUUID": "x" * 65},
        {**good, "MessageUUID": "has spaces"},
    ):
        r = post(client, INBOUND, bad)
        assert r.status_code == 400, bad
        assert "error" in r.json()
    r = post(client, INBOUND, [*items, ("From", digits(fresh_number()))])
    assert r.status_code == 400
    assert not opted_out(db, t.id, phone)
    assert events(db, t.id, phone) == []


def test_short_codes_are_ignored(db: Database, uid: str, client: TestClient) -> None:
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme")
    with db.session() as s:
        before = s.scalar(select(func.count()).select_from(ConsentEvent)
                          .where(ConsentEvent.account_id == t.id))
    assert post(client, INBOUND, inbound("+12345", t.sender, "STOP")).status_code == 200
    assert post(client, INBOUND, inbound(fresh_number(), "+12", "STOP")).status_code == 200
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(ConsentEvent)
                        .where(ConsentEvent.account_id == t.id)) == before == 0
        assert s.scalar(select(func.count()).select_from(OptOut)
                        .where(OptOut.account_id == t.id)) == 0


def test_no_auth_token_refuses_everything(db: Database, uid: str) -> None:
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme")
    phone = fresh_number()
    with TestClient(create_app(make_settings(plivo_auth_token=""), db, ConsoleSmsProvider())) as c:
        for scheme in ("v3", "v2"):
            r = post(c, INBOUND, inbound(phone, t.sender, "STOP"), token="", scheme=scheme)
            assert r.status_code == 403
    assert not opted_out(db, t.id, phone)


def test_only_post(client: TestClient) -> None:
    assert client.get(INBOUND).status_code == 405
    assert client.get(STATUS).status_code == 405


# --- inbound keywords -----------------------------------------------------------------------

STOP_WORDS = ["STOP", "STOPALL", "STOP ALL", "UNSUBSCRIBE", "UNSUB", "CANCEL", "END", "QUIT",
              "OPTOUT", "OPT-OUT", "REVOKE"]


@pytest.mark.parametrize("word", STOP_WORDS)
def test_stop_keywords_opt_out_every_account_on_that_number(
    db: Database, uid: str, client: TestClient, sms: ConsoleSmsProvider, word: str
) -> None:
    sender = fresh_number()
    a = Tenant(db, f"a-{uid}", sender, "Acme")
    b = Tenant(db, f"b-{uid}", sender, "Beta")
    other = Tenant(db, f"o-{uid}", fresh_number(), "Other")
    phone = fresh_number()
    r = post(client, INBOUND, inbound(phone, sender, f"  {word.lower()} "))
    assert r.status_code == 200
    assert opted_out(db, a.id, phone) and opted_out(db, b.id, phone)
    assert not opted_out(db, other.id, phone)
    assert events(db, a.id, phone) == [("opt_out", word.replace("-", " "))]
    with db.session() as s:
        row = s.get(OptOut, (a.id, phone))
        assert row is not None and row.source == "plivo-inbound"
        assert row.keyword == word.replace("-", " ")
        assert row.changed_at is not None
    # One confirmation, naming both companies, from the number the STOP went to.
    sent = replies_to(sms, phone)
    assert len(sent) == 1
    assert sent[0].src == sender
    assert sent[0].text == (
        "You are unsubscribed from Acme and Beta payment reminders. "
        "No more messages will be sent. Reply START to resubscribe."
    )


def test_stop_confirmation_once_per_opt_out(
    db: Database, uid: str, client: TestClient, sms: ConsoleSmsProvider
) -> None:
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme", balance=10)
    phone = fresh_number()
    first = inbound(phone, t.sender, "STOP")
    assert post(client, INBOUND, first).status_code == 200
    assert post(client, INBOUND, first).status_code == 200  # same MessageUUID again
    assert post(client, INBOUND, inbound(phone, t.sender, "stop")).status_code == 200  # new one
    assert len(replies_to(sms, phone)) == 1
    assert events(db, t.id, phone) == [("opt_out", "STOP"), ("opt_out", "STOP")]
    with db.session() as s:
        rows = s.scalars(select(Message).where(Message.workflow_id == f"stop:{t.id}")).all()
        assert len(rows) == 1
        row = rows[0]
        assert (row.run_id, row.step, row.channel, row.credits, row.status) == (
            first["MessageUUID"], 0, "sms", 0, "sent")
        assert row.recipient_hint and phone not in row.recipient_hint
        assert ledger.balance_of(s, t.id) == 10
    # START, then STOP again: a new opt-out, so a new confirmation.
    assert post(client, INBOUND, inbound(phone, t.sender, "START")).status_code == 200
    assert post(client, INBOUND, inbound(phone, t.sender, "STOP")).status_code == 200
    assert len(replies_to(sms, phone)) == 2


def test_message_intent_optout_no_second_confirmation(
    db: Database, uid: str, client: TestClient, sms: ConsoleSmsProvider
) -> None:
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme")
    phone = fresh_number()
    body = inbound(phone, t.sender, "go away", MessageIntent="optout")
    assert post(client, INBOUND, body).status_code == 200
    assert opted_out(db, t.id, phone)
    assert events(db, t.id, phone) == [("opt_out", "intent:optout")]
    assert replies_to(sms, phone) == []  # Plivo confirmed it already


@pytest.mark.parametrize(("text", "intent", "keyword"), [
    ("START", None, "START"), ("unstop", None, "UNSTOP"), (" Yes ", None, "YES"),
    ("ok go", "optin", "intent:optin"),
])
def test_start_family_opts_back_in(
    db: Database, uid: str, client: TestClient, text: str, intent: str | None, keyword: str
) -> None:
    sender = fresh_number()
    a = Tenant(db, f"a-{uid}", sender, "Acme")
    b = Tenant(db, f"b-{uid}", fresh_number(), "Beta")
    phone = fresh_number()
    assert post(client, INBOUND, inbound(phone, sender, "STOP")).status_code == 200
    assert post(client, INBOUND, inbound(phone, b.sender, "STOP")).status_code == 200
    extra = {"MessageIntent": intent} if intent else {}
    assert post(client, INBOUND, inbound(phone, sender, text, **extra)).status_code == 200
    assert not opted_out(db, a.id, phone)
    assert opted_out(db, b.id, phone)  # the other tenant's opt-out stands
    assert events(db, a.id, phone) == [("opt_out", "STOP"), ("opt_in", keyword)]


@pytest.mark.parametrize(("text", "intent"), [
    ("HELP", None), ("info", None), (" Help ", None), ("what is this?", "help"),
])
def test_help_replies_once(
    db: Database, uid: str, client: TestClient, sms: ConsoleSmsProvider, text: str,
    intent: str | None
) -> None:
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme Cloud", support="support@acme.test",
               balance=5)
    phone = fresh_number()
    extra = {"MessageIntent": intent} if intent else {}
    body = inbound(phone, t.sender, text, **extra)
    for _ in range(3):
        assert post(client, INBOUND, body).status_code == 200
    sent = replies_to(sms, phone)
    assert len(sent) == 1
    assert "Acme Cloud" in sent[0].text and "support@acme.test" in sent[0].text
    assert sent[0].text.endswith(OPT_OUT_LINE)
    assert sent[0].src == t.sender
    assert sent[0].callback_url is not None
    assert sent[0].callback_url.startswith(f"{PUBLIC_URL}{STATUS}?ref=")
    assert not opted_out(db, t.id, phone)
    with db.session() as s:
        row = s.scalars(select(Message).where(Message.workflow_id == f"help:{t.id}")).one()
        assert (row.run_id, row.step, row.channel, row.credits, row.status) == (
            body["MessageUUID"], 0, "sms", 0, "sent")
        assert sent[0].callback_url.endswith(f"?ref={row.id}")
        assert ledger.balance_of(s, t.id) == 5
        assert s.scalar(select(func.count()).select_from(CreditEntry)
                        .where(CreditEntry.account_id == t.id)) == 1  # the top-up only


def test_help_picks_the_account_that_knows_the_customer(
    db: Database, uid: str, client: TestClient, sms: ConsoleSmsProvider
) -> None:
    sender = fresh_number()
    Tenant(db, f"a-{uid}", sender, "Alpha")
    b = Tenant(db, f"b-{uid}", sender, "Bravo", support="bravo@help.test")
    phone = fresh_number()
    with db.session() as s:
        s.add(Customer(account_id=b.id, customer_id="cus-1", phone_e164=phone))
    assert post(client, INBOUND, inbound(phone, sender, "HELP")).status_code == 200
    sent = replies_to(sms, phone)
    assert len(sent) == 1 and "Bravo" in sent[0].text and "Alpha" not in sent[0].text
    with db.session() as s:
        row = s.scalars(select(Message).where(Message.workflow_id == f"help:{b.id}")).one()
        assert row.customer_id == "cus-1"


def test_help_reply_reaches_plivo(
    db: Database, uid: str, plivo_server: FakePlivo
) -> None:
    provider = PlivoSmsProvider(plivo_server.auth_id, plivo_server.auth_token, plivo_server.url,
                                timeout=5)
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme Cloud", support="+1 800 555 0100")
    phone = fresh_number()
    with TestClient(create_app(make_settings(), db, provider)) as c:
        body = inbound(phone, t.sender, "help")
        assert post(c, INBOUND, body).status_code == 200
        assert post(c, INBOUND, body).status_code == 200
    got = plivo_server.accepted(dst=digits(phone))
    assert len(got) == 1
    msg = got[0]
    assert msg.src == digits(t.sender)
    assert "Acme Cloud" in msg.text and "+1 800 555 0100" in msg.text
    assert msg.text.endswith(OPT_OUT_LINE)
    assert msg.method == "POST"
    with db.session() as s:
        row = s.scalars(select(Message).where(Message.workflow_id == f"help:{t.id}")).one()
        assert row.status == "sent" and row.provider_id == msg.message_uuid
        assert msg.url == f"{PUBLIC_URL}{STATUS}?ref={row.id}"


def test_failed_reply_is_recorded_not_retried(db: Database, uid: str) -> None:
    class Down:
        name = "down"
        calls = 0

        def send(self, sms: OutgoingSms) -> str:
            Down.calls += 1
            raise TransientProviderError("Plivo unavailable: 503")

    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme")
    phone = fresh_number()
    with TestClient(create_app(make_settings(), db, Down())) as c:
        body = inbound(phone, t.sender, "HELP")
        assert post(c, INBOUND, body).status_code == 200
        assert post(c, INBOUND, body).status_code == 200
    assert Down.calls == 1
    with db.session() as s:
        row = s.scalars(select(Message).where(Message.workflow_id == f"help:{t.id}")).one()
        assert row.status == "failed" and "503" in (row.reason or "")


def test_unknown_number_and_other_tenants(
    db: Database, uid: str, client: TestClient, sms: ConsoleSmsProvider
) -> None:
    mine = Tenant(db, f"a-{uid}", fresh_number(), "Acme")
    phone = fresh_number()
    nobody = fresh_number()
    r = post(client, INBOUND, inbound(phone, nobody, "STOP"))
    ok = post(client, INBOUND, inbound(fresh_number(), mine.sender, "HELLO"))
    assert r.status_code == ok.status_code == 200
    assert r.content == ok.content  # nothing tells the caller whether the number is ours
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(OptOut)
                        .where(OptOut.phone_e164 == phone)) == 0
        assert s.scalar(select(func.count()).select_from(ConsentEvent)
                        .where(ConsentEvent.phone_e164 == phone)) == 0
    assert replies_to(sms, phone) == []
    assert not opted_out(db, mine.id, phone)


def test_other_replies_are_kept_for_the_operator(
    db: Database, uid: str, client: TestClient, sms: ConsoleSmsProvider,
    caplog: pytest.LogCaptureFixture
) -> None:
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme")
    phone = fresh_number()
    caplog.set_level(logging.INFO, logger="dunning")
    body = inbound(phone, t.sender, f"I paid already, call me on {phone}")
    assert post(client, INBOUND, body).status_code == 200
    assert events(db, t.id, phone) == [("reply", None)]
    assert not opted_out(db, t.id, phone)
    assert replies_to(sms, phone) == []
    assert "I paid already" in caplog.text


def test_logs_never_hold_a_full_number(
    db: Database, uid: str, client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme")
    phone = fresh_number()
    caplog.set_level(logging.DEBUG)
    for text in ("STOP", "START", "HELP", f"hi {phone}", f"my number {digits(phone)}"):
        assert post(client, INBOUND, inbound(phone, t.sender, text)).status_code == 200
    assert post(client, INBOUND, inbound(phone, fresh_number(), "STOP")).status_code == 200
    assert post(client, INBOUND, inbound(phone, t.sender, "STOP"), token="x").status_code == 403
    assert caplog.records, "expected log lines"
    for number in (phone, t.sender):
        assert digits(number) not in caplog.text
        assert digits(number)[-10:] not in caplog.text


# --- delivery reports -----------------------------------------------------------------------


def make_message(db: Database, account_id: str, *, credits_: int = 3, status: str = "sent",
                 provider_id: str | None = "auto", customer_id: str = "cus-1") -> tuple[int, str]:
    uuid_ = str(uuid.uuid4()) if provider_id == "auto" else provider_id
    with db.session() as s:
        if credits_:
            assert ledger.reserve(s, account_id, credits_, workflow_id=f"wf-{account_id}",
                                   step=1).ok
        row = Message(workflow_id=f"wf-{account_id}", run_id=str(uuid.uuid4()), step=1,
                      channel="sms", account_id=account_id, customer_id=customer_id,
                      status=status, provider_id=uuid_, credits=credits_, segments=1,
                      recipient_hint="+1******0123")
        s.add(row)
        s.flush()
        return row.id, uuid_ or ""


def report(msg_uuid: str, status: str, seq: int | None, **extra: str) -> dict[str, str]:
    body = {"MessageUUID": msg_uuid, "Status": status, "To": "14155550123",
            "From": "14155550100", "Units": "1"}
    if seq is not None:
        body["Sequence"] = str(seq)
    body.update(extra)
    return body


def message(db: Database, message_id: int) -> Message:
    with db.session() as s:
        row = s.get(Message, message_id)
        assert row is not None
        return row


def refunds(db: Database, message_id: int) -> list[int]:
    with db.session() as s:
        return list(s.scalars(select(CreditEntry.amount).where(
            CreditEntry.message_id == message_id, CreditEntry.kind == "refund")))


def balance(db: Database, account_id: str) -> int:
    with db.session() as s:
        assert ledger.ledger_sum(s, account_id) == ledger.balance_of(s, account_id)
        return ledger.balance_of(s, account_id)


def test_delivery_reports_ordered_by_sequence(db: Database, uid: str, client: TestClient) -> None:
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme")
    mid, puid = make_message(db, t.id)
    q = f"ref={mid}"
    assert post(client, STATUS, report(puid, "queued", 1), query=q).status_code == 200
    assert message(db, mid).delivery_status == "queued"
    assert post(client, STATUS, report(puid, "delivered", 3), query=q).status_code == 200
    assert post(client, STATUS, report(puid, "sent", 2), query=q).status_code == 200  # late
    assert post(client, STATUS, report(puid, "sent", 3), query=q).status_code == 200  # same seq
    row = message(db, mid)
    assert (row.delivery_status, row.delivery_sequence, row.delivery_error) == (
        "delivered", 3, None)
    assert row.status == "sent"


def test_unbilled_failure_refunds_exactly_once(db: Database, uid: str, client: TestClient) -> None:
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme", balance=10)
    mid, puid = make_message(db, t.id, credits_=3)
    assert balance(db, t.id) == 7
    q = f"ref={mid}"
    failed = report(puid, "failed", 2, ErrorCode="300", TotalAmount="0.00000")
    for _ in range(3):
        assert post(client, STATUS, failed, query=q).status_code == 200
    assert post(client, STATUS, report(puid, "undelivered", 5, ErrorCode="420"),
                query=q).status_code == 200
    assert refunds(db, mid) == [3]
    assert balance(db, t.id) == 10
    row = message(db, mid)
    assert (row.delivery_status, row.delivery_error, row.delivery_sequence) == (
        "undelivered", "420", 5)


def test_concurrent_failure_reports_refund_once(db: Database, uid: str) -> None:
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme", balance=10)
    mid, puid = make_message(db, t.id, credits_=4)
    app = create_app(make_settings(), db, ConsoleSmsProvider())
    with TestClient(app) as c:
        def send(i: int) -> int:
            body = report(puid, "failed", 1 + i % 3, ErrorCode="900")
            return post(c, STATUS, body, query=f"ref={mid}").status_code

        with ThreadPoolExecutor(8) as ex:
            codes = list(ex.map(send, range(16)))
    assert codes == [200] * 16
    assert refunds(db, mid) == [4]
    assert balance(db, t.id) == 10


@pytest.mark.parametrize(("status", "extra", "refunded"), [
    ("failed", {}, True),  # Plivo does not bill failed messages
    ("failed", {"TotalAmount": "0"}, True),
    ("undelivered", {"TotalAmount": "0.0"}, True),
    ("undelivered", {"ErrorCode": "420"}, True),  # expired in Plivo's queue
    ("undelivered", {"ErrorCode": "30"}, False),  # handed to a carrier: billed
    ("undelivered", {"ErrorCode": "30", "TotalAmount": "0.00650"}, False),
    ("failed", {"ErrorCode": "10", "TotalAmount": "0.0065"}, False),
    ("delivered", {"TotalAmount": "0"}, False),
    ("sent", {}, False),
])
def test_refund_rule(db: Database, uid: str, client: TestClient, status: str,
                     extra: dict[str, str], refunded: bool) -> None:
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme", balance=10)
    mid, puid = make_message(db, t.id, credits_=2)
    assert post(client, STATUS, report(puid, status, 1, **extra), query=f"ref={mid}"
                ).status_code == 200
    assert refunds(db, mid) == ([2] if refunded else [])
    assert balance(db, t.id) == (10 if refunded else 8)


def test_report_settles_an_unknown_send(db: Database, uid: str, client: TestClient) -> None:
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme", balance=10)
    ok_id, _ = make_message(db, t.id, credits_=2, status="unknown", provider_id=None)
    bad_id, _ = make_message(db, t.id, credits_=2, status="unknown", provider_id=None)
    ok_uuid, bad_uuid = str(uuid.uuid4()), str(uuid.uuid4())
    assert post(client, STATUS, report(ok_uuid, "queued", 1), query=f"ref={ok_id}"
                ).status_code == 200
    assert post(client, STATUS, report(bad_uuid, "failed", 1, ErrorCode="900"),
                query=f"ref={bad_id}").status_code == 200
    ok, bad = message(db, ok_id), message(db, bad_id)
    assert (ok.status, ok.provider_id, ok.delivery_status) == ("sent", ok_uuid, "queued")
    assert (bad.status, bad.provider_id) == ("failed", bad_uuid)
    assert "900" in (bad.reason or "")
    assert refunds(db, ok_id) == [] and refunds(db, bad_id) == [2]
    assert balance(db, t.id) == 8
    # Once adopted, the MessageUUID is checked: another message's report is ignored.
    assert post(client, STATUS, report(str(uuid.uuid4()), "failed", 9), query=f"ref={ok_id}"
                ).status_code == 200
    assert message(db, ok_id).delivery_status == "queued"
    assert refunds(db, ok_id) == []


def test_report_lookup_and_cross_check(db: Database, uid: str, client: TestClient) -> None:
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme", balance=10)
    mid, puid = make_message(db, t.id, credits_=1)
    other_id, other_uuid = make_message(db, t.id, credits_=1)
    # ref of one message with the MessageUUID of another: ignored.
    assert post(client, STATUS, report(other_uuid, "failed", 1), query=f"ref={mid}"
                ).status_code == 200
    assert message(db, mid).delivery_status is None
    assert message(db, other_id).delivery_status is None
    assert refunds(db, mid) == [] and refunds(db, other_id) == []
    # No ref: found by provider id.
    assert post(client, STATUS, report(puid, "delivered", 1)).status_code == 200
    assert message(db, mid).delivery_status == "delivered"
    # Unknown message, unknown ref: accepted (so Plivo stops retrying) and ignored.
    assert post(client, STATUS, report(str(uuid.uuid4()), "delivered", 1)).status_code == 200
    assert post(client, STATUS, report(puid, "failed", 7), query="ref=999999999"
                ).status_code == 200
    assert message(db, mid).delivery_status == "delivered"
    # A message that was never handed to Plivo does not adopt a report.
    skipped_id, _ = make_message(db, t.id, credits_=0, status="skipped", provider_id=None)
    assert post(client, STATUS, report(str(uuid.uuid4()), "failed", 1),
                query=f"ref={skipped_id}").status_code == 200
    assert message(db, skipped_id).provider_id is None


def test_error_200_records_opt_out(db: Database, uid: str, client: TestClient) -> None:
    sender = fresh_number()
    a = Tenant(db, f"a-{uid}", sender, "Acme", balance=10)
    b = Tenant(db, f"b-{uid}", sender, "Beta")
    phone = fresh_number()
    mid, puid = make_message(db, a.id, credits_=2)
    body = report(puid, "failed", 1, ErrorCode="200", To=digits(phone))
    assert post(client, STATUS, body, query=f"ref={mid}").status_code == 200
    assert opted_out(db, a.id, phone)
    assert not opted_out(db, b.id, phone)
    assert events(db, a.id, phone) == [("opt_out", None)]
    with db.session() as s:
        row = s.get(OptOut, (a.id, phone))
        assert row is not None and row.source == "plivo-error-200"
    assert refunds(db, mid) == [2]


def test_error_200_without_to_uses_customer_number(
    db: Database, uid: str, client: TestClient
) -> None:
    a = Tenant(db, f"a-{uid}", fresh_number(), "Acme", balance=10)
    phone = fresh_number()
    with db.session() as s:
        s.add(Customer(account_id=a.id, customer_id="cus-9", phone_e164=phone))
    mid, puid = make_message(db, a.id, customer_id="cus-9")
    body = {k: v for k, v in report(puid, "failed", 1, ErrorCode="200").items() if k != "To"}
    assert post(client, STATUS, body, query=f"ref={mid}").status_code == 200
    assert opted_out(db, a.id, phone)


@pytest.mark.parametrize("change", [
    {"Sequence": "abc"}, {"Sequence": "-1"}, {"TotalAmount": "lots"}, {"TotalAmount": "NaN"},
    {"Status": ""}, {"Status": "DELIVERED!"}, {"MessageUUID": ""}, {"ErrorCode": "1 2"},
])
def test_malformed_reports(db: Database, uid: str, client: TestClient,
                           change: dict[str, str]) -> None:
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme")
    mid, puid = make_message(db, t.id)
    body = {**report(puid, "failed", 1), **change}
    assert post(client, STATUS, body, query=f"ref={mid}").status_code == 400
    assert message(db, mid).delivery_status is None


def test_malformed_ref(db: Database, uid: str, client: TestClient) -> None:
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme")
    mid, puid = make_message(db, t.id)
    for q in ("ref=abc", "ref=0", f"ref={mid}&ref={mid}"):
        assert post(client, STATUS, report(puid, "failed", 1), query=q).status_code == 400
    assert message(db, mid).delivery_status is None


def test_status_signature_covers_the_query(db: Database, uid: str, client: TestClient) -> None:
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme", balance=10)
    mid, puid = make_message(db, t.id)
    other_id, _ = make_message(db, t.id, status="unknown", provider_id=None)
    items = list(report(puid, "failed", 1).items())
    headers = signed_headers(STATUS, items, query=f"ref={mid}")
    r = client.post(f"{STATUS}?ref={other_id}", content=urlencode(items), headers=headers)
    assert r.status_code == 403
    assert message(db, other_id).provider_id is None
    # V2 covers neither query nor body, but its nonce binds it to the first request.
    headers = signed_headers(STATUS, items, query=f"ref={mid}", scheme="v2")
    assert client.post(f"{STATUS}?ref={mid}", content=urlencode(items), headers=headers
                       ).status_code == 200
    r = client.post(f"{STATUS}?ref={other_id}", content=urlencode(items), headers=headers)
    assert r.status_code == 403
    assert message(db, other_id).provider_id is None
    assert refunds(db, mid) == [3]


def test_report_without_sequence_uses_status_order(
    db: Database, uid: str, client: TestClient
) -> None:
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme")
    mid, puid = make_message(db, t.id)
    for status in ("sent", "delivered", "queued", "sent"):
        assert post(client, STATUS, report(puid, status, None), query=f"ref={mid}"
                    ).status_code == 200
    assert message(db, mid).delivery_status == "delivered"


# --- health ---------------------------------------------------------------------------------


def test_healthz(db: Database, client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "database": "ok"}


def test_healthz_database_down(sms: ConsoleSmsProvider) -> None:
    down = Database("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    try:
        with TestClient(create_app(make_settings(), down, sms)) as c:
            r = c.get("/healthz")
            assert r.status_code == 503
            assert r.json()["database"] != "ok"
    finally:
        down.dispose()


# --- a real server --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_through_a_real_uvicorn_server(db: Database, uid: str) -> None:
    port = _free_port()
    public = f"http://127.0.0.1:{port}"
    settings = make_settings(http_host="127.0.0.1", http_port=port, public_url=public)
    sms = ConsoleSmsProvider()
    server = make_server(settings, create_app(settings, db, sms), handle_signals=False)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        t = Tenant(db, f"a-{uid}", fresh_number(), "Acme", balance=10)
        phone = fresh_number()
        items = list(inbound(phone, t.sender, "Stop").items())
        with httpx.Client(base_url=public, timeout=10) as http:
            assert http.get("/healthz").json() == {"status": "ok", "database": "ok"}
            r = http.post(INBOUND, content=urlencode(items), headers=FORM)
            assert r.status_code == 403
            assert not opted_out(db, t.id, phone)
            headers = signed_headers(INBOUND, items, public_url=public)
            r = http.post(INBOUND, content=urlencode(items), headers=headers)
            assert r.status_code == 200
            assert "<Response>" in r.text
            assert opted_out(db, t.id, phone)
            deadline = time.monotonic() + 10  # the confirmation goes out after the answer
            while not replies_to(sms, phone):
                assert time.monotonic() < deadline, "no confirmation sent"
                time.sleep(0.05)
            assert len(replies_to(sms, phone)) == 1
            mid, puid = make_message(db, t.id, credits_=2)
            body = list(report(puid, "failed", 1).items())
            headers = signed_headers(STATUS, body, query=f"ref={mid}", public_url=public,
                                     scheme="v2")
            r = http.post(f"{STATUS}?ref={mid}", content=urlencode(body), headers=headers)
            assert r.status_code == 200
            assert refunds(db, mid) == [2]
            big = b"Text=" + b"x" * (65 * 1024)
            r = http.post(INBOUND, content=big,
                          headers=signed_headers(INBOUND, [("Text", "x")], public_url=public))
            assert r.status_code == 413
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert not thread.is_alive()


def _running(settings: Settings, db: Database) -> tuple[Any, threading.Thread]:
    server = make_server(settings, create_app(settings, db, ConsoleSmsProvider()),
                         handle_signals=False)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    return server, thread


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes the connection (EOF or reset) within `seconds`."""
    sock.settimeout(seconds)
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_slow_requests_are_cut_off_by_the_read_deadline(db: Database) -> None:
    """Slowloris: headers that never end, or a body that never comes, lose the connection
    after DUNNING_HTTP_READ_TIMEOUT; a complete request on the same server is served."""
    port = _free_port()
    settings = make_settings(http_host="127.0.0.1", http_port=port, http_read_timeout=0.5,
                             public_url=f"http://127.0.0.1:{port}")
    server, thread = _running(settings, db)
    try:
        slow_headers = socket.create_connection(("127.0.0.1", port))
        slow_headers.sendall(b"POST /webhooks/plivo/inbound HTTP/1.1\r\nHost: x\r\n")
        slow_body = socket.create_connection(("127.0.0.1", port))
        slow_body.sendall(b"POST /webhooks/plivo/inbound HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Type: application/x-www-form-urlencoded\r\n"
                          b"X-Plivo-Signature-V3: x\r\nX-Plivo-Signature-V3-Nonce: n\r\n"
                          b"Content-Length: 1000\r\n\r\nText=")
        started = time.monotonic()
        for sock in (slow_headers, slow_body):
            with sock:
                for _ in range(3):  # trickling bytes does not extend the deadline
                    with contextlib.suppress(OSError):
                        sock.sendall(b"X")
                    time.sleep(0.1)
                assert _closed_within(sock, 3.0)
        assert time.monotonic() - started < 4.0
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            assert http.get("/healthz").status_code == 200
        idle = socket.create_connection(("127.0.0.1", port))  # never sends a byte
        with idle:
            assert _closed_within(idle, 3.0)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_connections_beyond_the_limit_get_503(db: Database) -> None:
    port = _free_port()
    settings = make_settings(http_host="127.0.0.1", http_port=port, http_read_timeout=5,
                             http_max_connections=2, public_url=f"http://127.0.0.1:{port}")
    server, thread = _running(settings, db)
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        for sock in held:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # incomplete: holds its slot
        time.sleep(0.2)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            assert http.get("/healthz").status_code == 503
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 5
        while True:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
                if http.get("/healthz").status_code == 200:
                    break
            assert time.monotonic() < deadline, "slots never came back"
            time.sleep(0.1)
    finally:
        for sock in held:
            sock.close()
        server.should_exit = True
        thread.join(timeout=10)


def test_refusal_warnings_are_rate_limited(
    db: Database, uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(http_refusal_logs_per_minute=5)
    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme")
    caplog.set_level(logging.WARNING, logger="dunning.webhooks")
    with TestClient(create_app(settings, db, ConsoleSmsProvider())) as c:
        for _ in range(40):
            r = c.post(INBOUND, content=urlencode(inbound(fresh_number(), t.sender, "STOP")),
                       headers=FORM)
            assert r.status_code == 403
            r = c.post(f"/webhooks/stripe/nope-{uid}", content=b"{}",
                       headers={"Stripe-Signature": f"t={int(time.time())},v1={'0' * 64}"})
            assert r.status_code == 403
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert 1 <= len(refused) <= 6
    assert len(caplog.records) <= 8  # nothing else logs once per request either


async def test_serve_webhooks_until_stop(db: Database) -> None:
    port = _free_port()
    settings = make_settings(http_host="127.0.0.1", http_port=port)
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve_webhooks(settings, stop, db=db, sms_provider=ConsoleSmsProvider())
    )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        for _ in range(100):
            try:
                r = await http.get("/healthz")
                break
            except httpx.ConnectError:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("server did not start")
        assert r.json() == {"status": "ok", "database": "ok"}
    stop.set()
    await asyncio.wait_for(task, 10)
    assert task.done() and task.exception() is None
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # closed


def test_run_webhooks_process_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "DUNNING_DATABASE_URL": f"sqlite:///{tmp_path / 'hooks.db'}",
        "DUNNING_HTTP_HOST": "127.0.0.1",
        "DUNNING_HTTP_PORT": str(port),
        "DUNNING_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "PLIVO_AUTH_TOKEN": TOKEN,
        "DUNNING_SMS_BACKEND": "console",
    }
    code = "from dunning.platform.settings import load_settings\n" \
           "from dunning.webhooks.server import run_webhooks\n" \
           "run_webhooks(load_settings())\n"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.ConnectError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
        assert r.status_code == 200
        r = httpx.post(f"http://127.0.0.1:{port}{INBOUND}", content="Text=STOP", headers=FORM)
        assert r.status_code == 403
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert b"Traceback" not in err


def test_a_refund_wakes_the_accounts_paused_cases(db: Database, uid: str,
                                                   sms: ConsoleSmsProvider) -> None:
    """Credits that come back (an unbilled failure) serve paused cases like a top-up does."""
    woken: list[str] = []

    class Temporal:
        async def wake_paused(self, account_id: str) -> int:
            woken.append(account_id)
            return 0

    async def connect() -> Any:
        return Temporal()

    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme", balance=10)
    mid, puid = make_message(db, t.id, credits_=2)
    with TestClient(create_app(make_settings(), db, sms, temporal=connect)) as c:
        q = f"ref={mid}"
        assert post(c, STATUS, report(puid, "sent", 1), query=q).status_code == 200
        assert woken == []  # nothing came back
        failed = report(puid, "failed", 2, ErrorCode="300", TotalAmount="0.00000")
        assert post(c, STATUS, failed, query=q).status_code == 200
        assert woken == [t.id]
        assert post(c, STATUS, failed, query=q).status_code == 200  # no second refund
        assert woken == [t.id]
    assert balance(db, t.id) == 10


# --- "any reasonable means" and replies in the customer's language ---------------------------


@pytest.mark.parametrize(("text", "stops"), [("Opt out", True), ("PARAR", True),
                                             ("Baja.", True), ("Stop by later", False)])
def test_reasonable_opt_outs_stop_sms_and_ordinary_replies_do_not(
    db: Database, uid: str, client: TestClient, sms: ConsoleSmsProvider, text: str, stops: bool
) -> None:
    import dataclasses
    from datetime import UTC, datetime

    from temporalio.testing import ActivityEnvironment

    from activities import DunningActivities
    from dunning.domain.contract import MessageRequest
    from dunning.platform.providers.email import ConsoleEmailProvider

    t = Tenant(db, f"a-{uid}", fresh_number(), "Acme")
    phone = fresh_number()
    with db.session() as s:
        s.add(Customer(account_id=t.id, customer_id="c1", phone_e164=phone, phone_region="US",
                       phone_time_zones="America/New_York", email="c1@example.com",
                       locale="es"))
    assert post(client, INBOUND, inbound(phone, t.sender, text)).status_code == 200
    assert opted_out(db, t.id, phone) is stops
    replies = replies_to(sms, phone)
    if stops:  # one confirmation, in the customer's language
        assert len(replies) == 1 and replies[0].text.startswith("Te has dado de baja de")
    else:
        assert replies == []
    outbound = ConsoleSmsProvider(echo=False)
    acts = DunningActivities(db, outbound, ConsoleEmailProvider(echo=False))
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, workflow_run_id=f"r-{uid}", workflow_id="wf")
    now = datetime(2026, 6, 10, 16, 0, tzinfo=UTC)  # noon in New York
    result = env.run(acts.send_sms, MessageRequest(
        f"dunning:{t.id}:inv1", t.id, "c1", "inv1", 1, 1, 4900, "USD",
        "https://pay.example.com/inv1", now, now,
    ))
    if stops:
        assert (result.status, outbound.sent) == ("skipped", [])
        assert "opted out" in result.reason
    else:
        assert result.status == "sent" and len(outbound.sent) == 1
        assert outbound.sent[0].text.endswith("Responde STOP para darte de baja.")
