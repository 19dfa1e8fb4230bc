"""Stripe billing events: signatures, idempotency, cases on a real Temporal server, customer sync.

Signatures are computed here as Stripe documents them, independently of the code under test:
`Stripe-Signature: t=<unix time>,v1=hex(HMAC-SHA256(secret, f"{t}.{payload}"))`.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from sqlalchemy import func, select
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from dunning.customers.customers import zones_column
from dunning.domain.phones import validate_phone
from dunning.platform.db import Database
from dunning.platform.db.models import Account, Case, Customer, ProcessedEvent
from dunning.platform.providers.sms import ConsoleSmsProvider
from dunning.platform.settings import Settings
from dunning.platform.temporal import connect
from dunning.webhooks import create_app
from dunning.webhooks.stripe import source_for, verify_signature
from starter import DunningClient
from tests.fakes.plivo import FakePlivo
from tests.fakes.smtp import SmtpSink, free_port
from tests.helpers import make_account, real_activities, running_worker, wait_for

with warnings.catch_warnings():  # Starlette 1.x suggests httpx2 for its test client
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

CODEC_KEYS = "k1:" + "ab" * 32


# --- signing and events, written from Stripe's documentation ----------------------------------


def sign(payload: bytes, secret: str, t: int | None = None) -> str:
    t = int(time.time()) if t is None else t
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def new_secret() -> str:
    return "whsec_" + uuid.uuid4().hex


def event(kind: str, obj: dict[str, Any], *, created: int | None = None,
          previous: dict[str, Any] | None = None, evt_id: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    return {
        "id": evt_id or f"evt_{uuid.uuid4().hex[:24]}", "object": "event",
        "api_version": "2024-06-20", "created": created or int(time.time()), "livemode": False,
        "type": kind, "data": data,
    }


def invoice(inv_id: str, customer: str, *, amount: int = 4900, email: str | None = None,
            url: str | None = None, **extra: Any) -> dict[str, Any]:
    obj = {
        "id": inv_id, "object": "invoice", "customer": customer, "amount_due": amount,
        "amount_paid": 0, "currency": "eur", "customer_email": email or f"{customer}@ex.test",
        "customer_name": "Jane Roe", "status": "open",
        "hosted_invoice_url": url or f"https://invoice.stripe.test/i/{inv_id}",
    }
    obj.update(extra)
    return obj


def stripe_customer(cus_id: str, phone: str | None, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"id": cus_id, "object": "customer", "phone": phone,
                           "name": "Jane Roe", "email": f"{cus_id}@ex.test", "metadata": {}}
    obj.update(extra)
    return obj


def body_of(evt: dict[str, Any]) -> bytes:
    return json.dumps(evt, indent=2).encode()


def path(account: str) -> str:
    return f"/webhooks/stripe/{account}"


def headers(payload: bytes, secret: str, t: int | None = None) -> dict[str, str]:
    return {"Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": sign(payload, secret, t)}


def add_account(db: Database, account: str, secret: str | None) -> None:
    with db.session() as s:
        s.add(Account(id=account, company_name="Acme", stripe_webhook_secret=secret))


def customer(db: Database, account: str, cus_id: str) -> Customer | None:
    with db.session() as s:
        return s.get(Customer, (account, cus_id))


def processed(db: Database, account: str) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(ProcessedEvent).where(
            ProcessedEvent.source == source_for("stripe", account))) or 0


class NoTemporal:
    """A temporal factory for tests that must not reach Temporal."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> DunningClient:
        self.calls += 1
        raise RuntimeError("Temporal is not wanted here")


def settings(**kw: Any) -> Settings:
    values: dict[str, Any] = {"public_url": "https://hooks.example.test", "sms_backend": "console",
                              "codec_keys": CODEC_KEYS, "_env_file": None}
    values.update(kw)
    return Settings(**values)


@pytest.fixture
def no_temporal() -> NoTemporal:
    return NoTemporal()


@pytest.fixture
def client(db: Database, no_temporal: NoTemporal) -> Iterator[TestClient]:
    app = create_app(settings(), db, ConsoleSmsProvider(), no_temporal)
    with TestClient(app) as c:
        yield c


# --- signatures -------------------------------------------------------------------------------


def test_my_signing_matches_the_stripe_sdk() -> None:
    payload, secret = b'{"a": 1}', new_secret()
    assert sign(payload, secret, 1700000000) == stripe.WebhookSignature.generate_signature_header(
        payload.decode(), secret, 1700000000)
    assert verify_signature(payload, sign(payload, secret), secret)
    assert not verify_signature(payload, sign(payload, secret), new_secret())
    assert not verify_signature(payload, sign(payload, secret), None)


def test_unsigned_forged_stale_requests_change_nothing(
    db: Database, uid: str, client: TestClient, no_temporal: NoTemporal,
) -> None:
    account, other = f"s-{uid}", f"o-{uid}"
    secret, other_secret = new_secret(), new_secret()
    add_account(db, account, secret)
    add_account(db, other, other_secret)
    add_account(db, f"n-{uid}", None)
    payload = body_of(event("customer.created", stripe_customer("cus_1", "+14155552671")))
    now = int(time.time())
    refused: list[tuple[dict[str, str | bytes], str]] = [
        ({}, path(account)),  # no signature
        ({"Stripe-Signature": "garbage"}, path(account)),
        ({"Stripe-Signature": f"t={now}"}, path(account)),  # no v1
        ({"Stripe-Signature": f"t={now},v1=é".encode("latin-1")}, path(account)),  # not ASCII
        ({"Stripe-Signature": sign(payload, new_secret())}, path(account)),  # forged
        ({"Stripe-Signature": sign(payload, other_secret)}, path(account)),  # other account's
        ({"Stripe-Signature": sign(payload, secret, now - 301)}, path(account)),  # stale
        ({"Stripe-Signature": sign(payload, secret, now + 600)}, path(account)),  # future
        ({"Stripe-Signature": sign(payload, secret)}, path(f"x-{uid}")),  # unknown account
        ({"Stripe-Signature": sign(payload, secret)}, path(f"n-{uid}")),  # no secret set
        ({"Stripe-Signature": sign(payload, secret)}, "/webhooks/stripe/bad%20id"),
    ]
    for hdrs, url in refused:
        r = client.post(url, content=payload, headers={"Content-Type": "application/json",
                                                       **hdrs})
        assert r.status_code == 403, (hdrs, url, r.text)
    # The body the signature was made for, changed by one byte.
    tampered = payload.replace(b"+14155552671", b"+14155552672")
    r = client.post(path(account), content=tampered, headers=headers(payload, secret))
    assert r.status_code == 403
    # An unknown account looks exactly like a bad signature.
    unknown = client.post(path(f"x-{uid}"), content=payload, headers=headers(payload, secret))
    forged = client.post(path(account), content=payload,
                         headers=headers(payload, new_secret()))
    assert unknown.json() == forged.json() == {"error": "invalid Stripe signature"}
    assert customer(db, account, "cus_1") is None
    assert processed(db, account) == 0
    assert no_temporal.calls == 0
    # Several v1 signatures (Stripe during a secret roll): one good one is enough.
    good = sign(payload, secret)
    rolled = f"{good.split(',')[0]},v1={'0' * 64},{good.split(',')[1]}"
    r = client.post(path(account), content=payload,
                    headers={"Content-Type": "application/json", "Stripe-Signature": rolled})
    assert r.status_code == 200, r.text
    stored = customer(db, account, "cus_1")
    assert stored is not None and stored.phone_e164 == "+14155552671"


def test_bodies_checked_after_the_signature(db: Database, uid: str, client: TestClient) -> None:
    account, secret = f"b-{uid}", new_secret()
    add_account(db, account, secret)
    big = b'{"x": "' + b"y" * (1024 * 1024) + b'"}'
    r = client.post(path(account), content=big, headers=headers(big, secret))
    assert r.status_code == 413
    for payload in (b"not json", b"[]", json.dumps({"object": "list"}).encode(),
                    json.dumps({"object": "event", "id": "evt_1", "type": "invoice.paid",
                                "created": 1, "data": {}}).encode()):
        r = client.post(path(account), content=payload, headers=headers(payload, secret))
        assert r.status_code == 400, payload
        # ... and unsigned, the same bodies are refused before they are read.
        r = client.post(path(account), content=payload)
        assert r.status_code == 403
    assert processed(db, account) == 0


def test_a_signed_event_with_a_huge_created_time_is_400_not_500(
    db: Database, uid: str, client: TestClient,
) -> None:
    account, secret = f"h-{uid}", new_secret()
    add_account(db, account, secret)
    for created in (10**15, 10**30, 253402300800):
        payload = body_of(event("invoice.paid", invoice("in_1", "cus_1"), created=created))
        r = client.post(path(account), content=payload, headers=headers(payload, secret))
        assert r.status_code == 400, (created, r.text)
        assert "created" in r.json()["error"]
    assert processed(db, account) == 0


def test_other_event_types_are_acknowledged_not_recorded(
    db: Database, uid: str, client: TestClient,
) -> None:
    account, secret = f"t-{uid}", new_secret()
    add_account(db, account, secret)
    payload = body_of(event("charge.succeeded", {"id": "ch_1", "object": "charge"}))
    r = client.post(path(account), content=payload, headers=headers(payload, secret))
    assert r.status_code == 200
    assert r.json()["status"] == "ignored"
    assert processed(db, account) == 0


def test_database_down_answers_503(no_temporal: NoTemporal) -> None:
    down = Database("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    payload = body_of(event("customer.created", stripe_customer("cus_1", "+14155552671")))
    try:
        with TestClient(create_app(settings(), down, ConsoleSmsProvider(), no_temporal)) as c:
            r = c.post(path("acme"), content=payload, headers=headers(payload, new_secret()))
    finally:
        down.dispose()
    assert r.status_code == 503
    assert r.json() == {"error": "database unavailable"}


# --- customers ----------------------------------------------------------------------------------


def post_event(client: TestClient, account: str, secret: str,
               evt: dict[str, Any]) -> dict[str, Any]:
    payload = body_of(evt)
    r = client.post(path(account), content=payload, headers=headers(payload, secret))
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def test_customer_sync_validates_like_the_import(
    db: Database, uid: str, client: TestClient, caplog: pytest.LogCaptureFixture,
) -> None:
    account, secret = f"c-{uid}", new_secret()
    add_account(db, account, secret)
    created = stripe_customer("cus_a", "+1 (208) 555-0123", metadata={"plan": "pro"},
                              address={"country": "US"})
    r = post_event(client, account, secret, event("customer.created", created))
    assert (r["status"], r["outcome"], r["phone"]) == ("processed", "imported", "stored")
    row = customer(db, account, "cus_a")
    expected = validate_phone("+1 (208) 555-0123")
    assert row is not None
    assert (row.phone_e164, row.phone_region, row.phone_type) == (
        "+12085550123", "US", expected.number_type)
    assert row.phone_time_zones == zones_column(expected.time_zones)
    assert "America/Boise" in (row.phone_time_zones or "")  # an area code over two zones
    assert (row.name, row.email, row.plan, row.source) == (
        "Jane Roe", "cus_a@ex.test", "pro", "stripe")

    # A national number: the address's country is its region.
    updated = stripe_customer("cus_a", "020 7946 0958", address={"country": "GB"})
    with caplog.at_level(logging.WARNING, logger="dunning.stripe"):
        r = post_event(client, account, secret, event(
            "customer.updated", updated, previous={"phone": "+1 (208) 555-0123"}))
    # A London landline cannot receive SMS: refused with the reason, the old number forgotten.
    assert r["phone"] == "rejected, previous number removed"
    assert "landline" in r["phone_reason"]
    row = customer(db, account, "cus_a")
    assert row is not None and row.phone_e164 is None and row.phone_time_zones is None
    assert row.plan == "pro"  # not given this time: kept
    assert "landline" in caplog.text and "7946 0958" not in caplog.text

    updated = stripe_customer("cus_a", "07400 123456", address={"country": "GB"},
                              email="not-an-address")
    r = post_event(client, account, secret, event("customer.updated", updated,
                                                  previous={"phone": None}))
    assert r["phone"] == "stored"
    assert r["warnings"] == ["email not stored: 'not-an-address' is not an email address"]
    row = customer(db, account, "cus_a")
    assert row is not None
    assert (row.phone_e164, row.phone_region, row.email) == (
        "+447400123456", "GB", "cus_a@ex.test")

    # An update that does not touch the phone keeps it even when Stripe has none (numbers
    # may come from the CSV import instead).
    r = post_event(client, account, secret, event(
        "customer.updated", stripe_customer("cus_a", None, name="Jane R."),
        previous={"name": "Jane Roe"}))
    assert (r["outcome"], r["phone"]) == ("updated", "not given")
    row = customer(db, account, "cus_a")
    assert row is not None and (row.phone_e164, row.name) == ("+447400123456", "Jane R.")

    # Garbage that is no number at all, on a new customer: nothing stored for the phone.
    r = post_event(client, account, secret, event("customer.created",
                                                  stripe_customer("cus_b", "call me")))
    assert (r["outcome"], r["phone"]) == ("imported", "rejected")
    assert r["phone_reason"] == "not a phone number"
    row = customer(db, account, "cus_b")
    assert row is not None and row.phone_e164 is None


def test_customer_events_replayed_or_late_change_nothing(
    db: Database, uid: str, client: TestClient,
) -> None:
    account, secret = f"r-{uid}", new_secret()
    add_account(db, account, secret)
    now = int(time.time())
    first = event("customer.updated", stripe_customer("cus_r", "+14155552671"), created=now - 60)
    newer = event("customer.updated", stripe_customer("cus_r", "+14155552672"), created=now)
    assert post_event(client, account, secret, first)["status"] == "processed"
    assert post_event(client, account, secret, newer)["status"] == "processed"
    # Stripe retries `first` (re-signed, same event id): already done.
    assert post_event(client, account, secret, first)["status"] == "duplicate"
    # An older update delivered late (another event id) does not undo the newer one.
    late = event("customer.updated", stripe_customer("cus_r", "+14155552673"), created=now - 30)
    r = post_event(client, account, secret, late)
    assert r["status"] == "ignored" and "newer" in r["reason"]
    row = customer(db, account, "cus_r")
    assert row is not None and row.phone_e164 == "+14155552672"
    assert processed(db, account) == 3
    # Event ids are per account: the same event for another account is processed there.
    other = f"r2-{uid}"
    add_account(db, other, secret)
    assert post_event(client, other, secret, first)["status"] == "processed"


def test_long_account_ids_keep_their_own_event_records() -> None:
    a, b = "a" * 100 + "1", "a" * 100 + "2"
    assert source_for("stripe", "acme") == "stripe:acme"
    assert source_for("stripe", a) != source_for("stripe", b)
    assert max(len(source_for(k, a)) for k in ("stripe", "stripe-paid", "stripe-cust")) <= 32


# --- cases on a real Temporal server -------------------------------------------------------------


Post = Callable[[dict[str, Any]], Awaitable[httpx.Response]]


def make_poster(app: Any, account: str, secret: str) -> tuple[httpx.AsyncClient, Post]:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hooks")

    async def post(evt: dict[str, Any]) -> httpx.Response:
        payload = body_of(evt)
        return await http.post(path(account), content=payload, headers=headers(payload, secret))

    return http, post


def case_row(db: Database, workflow_id: str) -> Case | None:
    with db.session() as s:
        return s.get(Case, workflow_id)


async def test_invoice_failed_starts_a_case_and_paid_recovers_it(
    temporal_env: WorkflowEnvironment, sqlite_db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    account, secret, queue = f"i-{uid}", new_secret(), f"stripe-{uid}"
    make_account(sqlite_db, account, schedule="0s,1h", grace="1h", sms=False)
    with sqlite_db.session() as s:
        acct = s.get(Account, account)
        assert acct is not None
        acct.stripe_webhook_secret = secret
    dunning = DunningClient(temporal_env.client, settings(task_queue=queue), sqlite_db)
    app = create_app(settings(task_queue=queue), sqlite_db, ConsoleSmsProvider(), dunning)
    http, post = make_poster(app, account, secret)
    email = f"payer-{uid}@ex.test"
    created = int(time.time()) - 120
    failed = event("invoice.payment_failed", invoice("in_1", "cus_1", email=email),
                   created=created)
    async with http, running_worker(temporal_env.client, queue,
                                    real_activities(sqlite_db, plivo_server, smtp_server)):
        r = await post(failed)
        assert r.status_code == 200, r.text
        wf_id = f"dunning:{account}:in_1"
        assert r.json()["case"] == "started" and r.json()["workflow_id"] == wf_id
        # The first reminder reaches the invoice's customer with the hosted invoice page.
        mails = await wait_for(lambda: smtp_server.to(email))
        parsed = BytesParser(policy=policy.default).parsebytes(mails[0].as_bytes())
        text = parsed.get_body(("plain",))  # multipart: plain text + HTML
        assert text is not None
        assert "https://invoice.stripe.test/i/in_1" in text.get_content()
        row = case_row(sqlite_db, wf_id)
        assert row is not None
        assert (row.customer_id, row.invoice_id, row.amount_due, row.currency) == (
            "cus_1", "in_1", 4900, "EUR")
        assert int(row.failed_at.timestamp()) == created
        # The same event again (a Stripe retry), and Stripe's next failed attempt.
        assert (await post(failed)).json()["status"] == "duplicate"
        again = await post(event("invoice.payment_failed", invoice("in_1", "cus_1")))
        assert again.json()["case"] == "already exists"
        paid = event("invoice.paid", invoice("in_1", "cus_1", amount_paid=4900, status="paid"))
        r = await post(paid)
        assert r.json() == {"event": paid["id"], "type": "invoice.paid", "status": "processed",
                            "invoice": "in_1", "case": "signalled"}
        handle = temporal_env.client.get_workflow_handle(wf_id)
        result = await handle.result()
        assert result["outcome"] == "recovered"
        # A failure reported after the payment (late delivery) starts nothing.
        late = await post(event("invoice.payment_failed", invoice("in_1", "cus_1")))
        assert late.json()["status"] == "ignored"
        assert late.json()["reason"] == "the invoice was already paid"
        # Paid before any failure was reported: the failure that follows is ignored too.
        assert (await post(event("invoice.paid", invoice("in_2", "cus_1")))).json()[
            "case"] == "no running case"
        r = await post(event("invoice.payment_failed", invoice("in_2", "cus_1")))
        assert r.json()["status"] == "ignored"
        # An invoice without a page to pay at cannot be dunned: acknowledged, no case.
        r = await post(event("invoice.payment_failed",
                             invoice("in_3", "cus_1", hosted_invoice_url=None)))
        assert r.json()["status"] == "ignored" and "hosted_invoice_url" in r.json()["reason"]
    row = case_row(sqlite_db, wf_id)
    assert row is not None and (row.state, row.recovered_amount) == ("recovered", 4900)
    assert case_row(sqlite_db, f"dunning:{account}:in_2") is None
    assert case_row(sqlite_db, f"dunning:{account}:in_3") is None


async def test_subscription_deleted_cancels_the_customers_open_cases(
    temporal_env: WorkflowEnvironment, sqlite_db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    account, secret, queue = f"d-{uid}", new_secret(), f"stripe-d-{uid}"
    make_account(sqlite_db, account, schedule="0s,1h", grace="1h", sms=False)
    with sqlite_db.session() as s:
        acct = s.get(Account, account)
        assert acct is not None
        acct.stripe_webhook_secret = secret
    dunning = DunningClient(temporal_env.client, settings(task_queue=queue), sqlite_db)
    app = create_app(settings(task_queue=queue), sqlite_db, ConsoleSmsProvider(), dunning)
    http, post = make_poster(app, account, secret)
    async with http, running_worker(temporal_env.client, queue,
                                    real_activities(sqlite_db, plivo_server, smtp_server)):
        for inv, cus in (("in_a", "cus_x"), ("in_b", "cus_x"), ("in_c", "cus_y")):
            r = await post(event("invoice.payment_failed", invoice(inv, cus)))
            assert r.json()["case"] == "started"
        ids = {i: f"dunning:{account}:{i}" for i in ("in_a", "in_b", "in_c")}
        await wait_for(lambda: all(case_row(sqlite_db, w) for w in ids.values()))
        sub = {"id": "sub_1", "object": "subscription", "customer": "cus_x",
               "status": "canceled"}
        r = await post(event("customer.subscription.deleted", sub))
        assert r.json()["canceled"] == ["in_a", "in_b"]
        for inv in ("in_a", "in_b"):
            result = await temporal_env.client.get_workflow_handle(ids[inv]).result()
            assert result["outcome"] == "canceled"
        other = temporal_env.client.get_workflow_handle(ids["in_c"])
        assert (await other.describe()).status == WorkflowExecutionStatus.RUNNING
        # A second deletion finds no active case of that customer left.
        await wait_for(lambda: case_row(sqlite_db, ids["in_b"]).state == "canceled")  # type: ignore[union-attr]
        r = await post(event("customer.subscription.deleted", sub))
        assert r.json()["canceled"] == []
        await other.signal("cancel", {"reason": "test cleanup"})
        assert (await other.result())["outcome"] == "canceled"


async def test_temporal_down_answers_503_and_the_retry_succeeds(
    temporal_env: WorkflowEnvironment, sqlite_db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    account, secret, queue = f"u-{uid}", new_secret(), f"stripe-u-{uid}"
    make_account(sqlite_db, account, schedule="0s,1h", grace="1h", sms=False)
    with sqlite_db.session() as s:
        acct = s.get(Account, account)
        assert acct is not None
        acct.stripe_webhook_secret = secret
    down = settings(task_queue=queue, temporal_address=f"127.0.0.1:{free_port()}")
    up = settings(task_queue=queue,
                  temporal_address=temporal_env.client.service_client.config.target_host)
    attempts: list[str] = []

    async def temporal_starts_late() -> DunningClient:
        # The app's default (DunningClient.connect with the settings' address), with Temporal
        # coming up between the first and the second try.
        cfg = down if not attempts else up
        attempts.append(cfg.temporal_address)
        return await DunningClient.connect(cfg, sqlite_db)

    # The default factory (connect on first use), pointed at a port nobody listens on: the
    # app starts, health is fine, billing events get 503 and are not recorded.
    dead_app = create_app(down, sqlite_db, ConsoleSmsProvider())
    http_dead, post_dead = make_poster(dead_app, account, secret)
    failed = event("invoice.payment_failed", invoice("in_1", "cus_1", email=f"u{uid}@ex.test"))
    async with http_dead:
        assert (await http_dead.get("/healthz")).status_code == 200
        r = await post_dead(failed)
        assert r.status_code == 503
        assert r.json() == {"error": "workflow service unavailable, retry later"}
    assert processed(sqlite_db, account) == 0

    app = create_app(up, sqlite_db, ConsoleSmsProvider(), temporal_starts_late)
    http, post = make_poster(app, account, secret)
    worker_client = await connect(up)  # the same payload codec as the app's client
    async with http, running_worker(worker_client, queue,
                                    real_activities(sqlite_db, plivo_server, smtp_server)):
        r = await post(failed)
        assert r.status_code == 503
        assert processed(sqlite_db, account) == 0
        r = await post(failed)  # Stripe's retry: same event id, signed again
        assert r.status_code == 200, r.text
        assert r.json()["case"] == "started"
        assert len(attempts) == 2
        await wait_for(lambda: smtp_server.to(f"u{uid}@ex.test"))
        handle = worker_client.get_workflow_handle(f"dunning:{account}:in_1")
        await handle.signal("cancel", {"reason": "test cleanup"})
        assert (await handle.result())["outcome"] == "canceled"
    assert processed(sqlite_db, account) == 1


# --- the CLI --------------------------------------------------------------------------------------


@pytest.fixture
def cli(cli: Callable[..., tuple[int, str, str]], monkeypatch: pytest.MonkeyPatch
        ) -> Callable[..., tuple[int, str, str]]:
    """conftest's in-process runner, with the public URL the endpoint is shown under."""
    monkeypatch.setenv("DUNNING_PUBLIC_URL", "https://hooks.example.test/base")
    return cli


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"secret-{uuid.uuid4().hex[:6]}"
    path.write_text(text)
    return path


def test_cli_sets_the_signing_secret(
    cli: Callable[..., tuple[int, str, str]], db: Database, uid: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    account = f"cli-{uid}"
    add_account(db, account, None)
    code, out, _ = cli("stripe", "show", "--account", account, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["endpoint_url"] == f"https://hooks.example.test/base/webhooks/stripe/{account}"
    assert data["secret_set"] is False
    secret = new_secret()
    secret_file = tmp_path / "whsec.txt"
    secret_file.write_text(secret + "\n")
    code, out, _ = cli("stripe", "set-secret", "--account", account, "--secret-file",
                       str(secret_file), "--json")
    assert code == 0 and json.loads(out)["secret_set"] is True
    assert secret not in out  # never echoed
    with db.session() as s:
        acct = s.get(Account, account)
        assert acct is not None and acct.stripe_webhook_secret is not None
        stored = acct.stripe_webhook_secret
    # Encrypted at rest, with the key generated under the data directory (0600).
    assert stored.startswith("enc:v1:") and secret not in stored
    assert (tmp_path / "secrets.key").stat().st_mode & 0o777 == 0o600
    # The webhook server opens it: an event signed with the secret is accepted.
    app_settings = settings(data_dir=tmp_path)
    with TestClient(create_app(app_settings, db, ConsoleSmsProvider(), NoTemporal())) as c:
        payload = body_of(event("customer.created", stripe_customer("cus_1", None)))
        assert c.post(path(account), content=payload,
                      headers=headers(payload, secret)).status_code == 200
        assert c.post(path(account), content=payload,
                      headers=headers(payload, new_secret())).status_code == 403
    # On the command line it is refused (usage error); from stdin it is read.
    code, _, _ = cli("stripe", "set-secret", "--account", account, "--secret", secret)
    assert code == 2
    monkeypatch.setattr("sys.stdin", io.StringIO(secret + "\n"))
    code, out, err = cli("stripe", "set-secret", "--account", account, "--json")
    assert code == 0, err
    code, out, err = cli("stripe", "set-secret", "--account", account, "--secret-file",
                         str(write(tmp_path, "sk_live_x")))
    assert code == 1 and "whsec_" in err and "Traceback" not in err
    code, out, err = cli("stripe", "set-secret", "--account", f"nope-{uid}", "--secret-file",
                         str(secret_file))
    assert code == 1 and "unknown account" in err
    code, out, _ = cli("stripe", "clear-secret", "--account", account, "--json")
    assert code == 0 and json.loads(out)["secret_set"] is False
    with db.session() as s:
        acct = s.get(Account, account)
        assert acct is not None and acct.stripe_webhook_secret is None


def test_reseal_encrypts_plaintext_secrets_and_rotates_keys(
    cli: Callable[..., tuple[int, str, str]], db: Database, uid: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dunning.platform.secret_box import SecretBox, secret_box_for, stripe_context

    account, secret = f"rs-{uid}", new_secret()
    add_account(db, account, secret)  # stored in plain text, as before encryption existed
    old_key, new_key = "old:" + "11" * 32, "new:" + "22" * 32
    monkeypatch.setenv("DUNNING_SECRET_KEYS", old_key)
    code, out, err = cli("stripe", "reseal", "--json")
    assert code == 0, err
    assert json.loads(out)["resealed"] >= 1

    def stored() -> str:
        with db.session() as s:
            acct = s.get(Account, account)
            assert acct is not None and acct.stripe_webhook_secret is not None
            return acct.stripe_webhook_secret

    assert stored().startswith("enc:v1:old:") and secret not in stored()
    monkeypatch.setenv("DUNNING_SECRET_KEYS", f"{new_key},{old_key}")
    code, out, err = cli("stripe", "reseal", "--json")
    assert code == 0, err
    assert stored().startswith("enc:v1:new:")
    box = secret_box_for(settings(secret_keys=new_key))
    assert box.open(stored(), context=stripe_context(account)) == secret
    assert isinstance(box, SecretBox)
