"""Auto-refill and balance notices on real databases (SQLite and PostgreSQL): exactly one refill
per crossing under concurrency, never two at once, the failure path, stale refills, notices
once per crossing (a real SMTP server), and the Stripe gateway through the real `stripe` SDK
against a loopback HTTP server.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest
from sqlalchemy import select, update

from dunning.accounts import pricing
from dunning.accounts.accounts import AccountOptions, create_account
from dunning.credits import ledger, refill, wake
from dunning.credits.followups import BalanceFollowups
from dunning.credits.gateways import Gateways, SimulatedGateway, StripeGateway
from dunning.domain.contract import InputError
from dunning.platform.db import Database
from dunning.platform.db.models import Account, CreditEntry, Refill, utcnow
from dunning.platform.providers.email import ConsoleEmailProvider, SmtpEmailProvider
from dunning.platform.settings import Settings
from tests.db.test_credits import assert_ledger_exact, run_threads
from tests.fakes.smtp import SmtpSink


class RecordingWaker:
    """Stands in for the Temporal waker: records which accounts a refill woke."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def wake(self, followups: BalanceFollowups,
             account_id: str) -> concurrent.futures.Future[Any]:
        self.calls.append(account_id)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_result(wake.WakeResult(account_id, 0, 0, 0, 0))
        return future


@pytest.fixture
def waker() -> RecordingWaker:
    return RecordingWaker()


@pytest.fixture
def gateway() -> Iterator[SimulatedGateway]:
    gw = SimulatedGateway()
    yield gw
    if gw.hold is not None:
        gw.hold.set()


@pytest.fixture
def followups(db: Database, gateway: SimulatedGateway,
              waker: RecordingWaker) -> Iterator[BalanceFollowups]:
    """What a worker builds: the follow-ups with their gateways, waker and email provider
    (tests that read the notices swap in an SMTP provider)."""
    f = BalanceFollowups(db, ConsoleEmailProvider(echo=False), gateways=Gateways(gateway),
                         waker=waker, default_sender="billing@dunning.test")
    yield f
    if gateway.hold is not None:
        gateway.hold.set()
    f.close(10)


def make_account(db: Database, account_id: str, balance: int, *, contact: str | None = None,
                 threshold: int | None = None, amount: int | None = None) -> None:
    with db.session() as s:
        create_account(s, account_id, AccountOptions(company_name=f"Co {account_id}",
                                                     contact_email=contact))
        if balance:
            ledger.top_up(s, account_id, balance)
        if threshold is not None and amount is not None:
            refill.configure(s, account_id, threshold=threshold, amount=amount)
        elif threshold is not None:  # notices only: a threshold without auto-refill
            acct = s.get(Account, account_id)
            assert acct is not None
            acct.auto_refill_threshold = threshold


def debit(followups: BalanceFollowups, account_id: str, wf: str,
          amount: int = 1) -> ledger.Reservation:
    """What the send activity does: reserve, then the follow-up hook, in one transaction."""
    with followups.db.session() as s:
        res = ledger.reserve(s, account_id, amount, workflow_id=wf, step=1, enqueue=True)
        followups.after_reserve(s, res)
    return res


def body(mail: Any) -> str:
    return str(mail.get_payload(decode=True).decode())


def refills_of(db: Database, account_id: str) -> list[Refill]:
    with db.session() as s:
        return list(s.scalars(select(Refill).where(Refill.account_id == account_id)
                              .order_by(Refill.id)))


def balance(db: Database, account_id: str) -> int:
    with db.session() as s:
        return ledger.balance_of(s, account_id)


# --- auto-refill ---------------------------------------------------------------------------


def test_one_refill_per_crossing_under_concurrency(db: Database, uid: str, gateway, waker,
                                                  followups):
    make_account(db, uid, 30, threshold=20, amount=50)
    gateway.hold = threading.Event()  # the charge waits: the refill stays pending meanwhile
    results = run_threads(16, lambda i: [debit(followups, uid, f"wf-{i}-{k}").ok for k in range(2)])
    spent = sum(sum(r) for r in results)
    assert spent == 30  # 32 attempts on 30 credits
    rows = refills_of(db, uid)
    assert [(r.status, r.amount, r.gateway) for r in rows] == [("pending", 50, "simulated")]
    assert waker.calls == []
    gateway.hold.set()
    assert followups.drain(10)
    rows = refills_of(db, uid)
    assert [r.status for r in rows] == ["succeeded"]
    assert rows[0].gateway_ref == f"sim_{rows[0].idempotency_key}"
    assert len(gateway.charges) == 1 and gateway.charges[0].credits == 50
    assert waker.calls == [uid]  # paused cases are woken the way a top-up wakes them
    assert assert_ledger_exact(db, uid) == 50
    with db.session() as s:
        kinds = [k for (k,) in s.execute(select(CreditEntry.kind).where(
            CreditEntry.account_id == uid, CreditEntry.kind == "refill"))]
    assert kinds == ["refill"]
    # The two queued cases (32 - 30) got credits: the next crossing starts the next refill.
    run_threads(8, lambda i: [debit(followups, uid, f"wave2-{i}-{k}").ok for k in range(4)])
    assert followups.drain(10)
    assert [r.status for r in refills_of(db, uid)] == ["succeeded", "succeeded"]
    assert len(gateway.charges) == 2
    assert_ledger_exact(db, uid)


def test_never_two_refills_at_once(db: Database, uid: str, gateway, waker, followups):
    make_account(db, uid, 10, threshold=5, amount=20)
    gateway.hold = threading.Event()
    for i in range(6):
        debit(followups, uid, f"wf-{i}")  # 10 -> 4: crosses at 5 -> 4
    with db.session() as s:
        ledger.top_up(s, uid, 10)  # 14: above the threshold again, refill still pending
    for i in range(10):
        debit(followups, uid, f"again-{i}")  # 14 -> 4: a second crossing while one is pending
    assert [r.status for r in refills_of(db, uid)] == ["pending"]
    gateway.hold.set()
    assert followups.drain(10)
    assert [r.status for r in refills_of(db, uid)] == ["succeeded"]
    assert balance(db, uid) == 24


def test_no_refill_without_a_crossing(db: Database, uid: str, gateway, waker, followups):
    make_account(db, uid, 3, threshold=5, amount=20)  # already below: no debit crosses
    for i in range(5):
        debit(followups, uid, f"wf-{i}")
    assert followups.drain(10)
    assert refills_of(db, uid) == [] and gateway.charges == []
    assert balance(db, uid) == 0


def test_failed_refill_is_recorded_emailed_and_not_retried(
    db: Database, uid: str, gateway, waker, smtp_server: SmtpSink, followups,
):
    contact = f"owner-{uid}@acme.test"
    followups.email = SmtpEmailProvider("127.0.0.1", smtp_server.port)
    make_account(db, uid, 6, contact=contact, threshold=5, amount=20)
    gateway.fail = "card_declined: Your card was declined."
    for i in range(10):  # crosses at 5 -> 4, then runs dry and the rest are queued
        debit(followups, uid, f"wf-{i}")
        assert followups.drain(10)
    rows = refills_of(db, uid)
    assert [(r.status, r.error) for r in rows] == [
        ("failed", "card_declined: Your card was declined.")]
    assert len(gateway.charges) == 1  # one attempt for the crossing, no retry loop
    assert waker.calls == []
    assert balance(db, uid) == 0 and assert_ledger_exact(db, uid) == 0
    subjects = [m["Subject"] for m in smtp_server.to(contact)]
    assert sum("refill failed" in s for s in subjects) == 1
    assert sum("running low" in s for s in subjects) == 1
    assert sum("used up" in s for s in subjects) == 1
    # A top-up back above the threshold re-arms it: the next crossing tries once more.
    gateway.fail = None
    with db.session() as s:
        ledger.top_up(s, uid, 10)
    for i in range(6):
        debit(followups, uid, f"later-{i}")
    assert followups.drain(10)
    assert [r.status for r in refills_of(db, uid)] == ["failed", "succeeded"]
    assert len(gateway.charges) == 2


def test_stale_pending_refill_is_resumed_with_the_same_key(db: Database, uid: str, gateway,
                                                          waker, followups):
    make_account(db, uid, 0, threshold=5, amount=20)
    with db.session() as s:
        s.add(Refill(account_id=uid, amount=20, status="pending", gateway="simulated",
                     idempotency_key=f"key-{uid}", error="not final, will retry: timeout",
                     updated_at=utcnow() - timedelta(hours=1)))
    res = debit(followups, uid, "wf-1")  # fails for lack of credits: finds the stale refill
    assert not res.ok
    assert followups.drain(10)
    assert [(c.idempotency_key, c.credits) for c in gateway.charges] == [(f"key-{uid}", 20)]
    rows = refills_of(db, uid)
    assert [(r.status, r.error) for r in rows] == [("succeeded", None)]
    assert balance(db, uid) == 20 and waker.calls == [uid]
    assert debit(followups, uid, "wf-1").ok  # the queued case reserves


def test_a_fresh_pending_refill_is_not_taken_over(db: Database, uid: str, gateway, waker,
                                                 followups):
    make_account(db, uid, 0, threshold=5, amount=20)
    with db.session() as s:
        s.add(Refill(account_id=uid, amount=20, status="pending", gateway="simulated",
                     idempotency_key=f"key-{uid}"))
    for i in range(3):
        debit(followups, uid, f"wf-{i}")
    assert followups.drain(10)
    assert gateway.charges == [] and [r.status for r in refills_of(db, uid)] == ["pending"]


def test_executing_a_refill_twice_grants_once(db: Database, uid: str, gateway, waker, followups):
    make_account(db, uid, 0, threshold=5, amount=20)
    with db.session() as s:
        refill_id = refill.arm_if_low(s, uid)
    assert refill_id is not None
    outcomes = run_threads(4, lambda i: followups.execute_refill(refill_id))
    assert sum(1 for o in outcomes if o is not None and o.balance is not None) == 1
    assert balance(db, uid) == 20 and assert_ledger_exact(db, uid) == 20


def test_a_broken_follow_up_never_breaks_the_debit(db: Database, uid: str, gateway, waker,
                                                  monkeypatch: pytest.MonkeyPatch, followups):
    make_account(db, uid, 6, threshold=5, amount=20)

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("refills table on fire")

    monkeypatch.setattr(refill, "new_refill", boom)
    assert debit(followups, uid, "wf-1").ok  # 6 -> 5: not below the threshold yet
    res = debit(followups, uid, "wf-2")  # 5 -> 4 crosses; the hook fails inside its savepoint
    assert res.ok and balance(db, uid) == 4
    assert refills_of(db, uid) == [] and assert_ledger_exact(db, uid) == 4


# --- notices -------------------------------------------------------------------------------


def test_notices_once_per_crossing(db: Database, uid: str, smtp_server: SmtpSink, waker,
                                   followups):
    contact = f"owner-{uid}@acme.test"
    followups.email = SmtpEmailProvider("127.0.0.1", smtp_server.port)
    make_account(db, uid, 8, contact=contact, threshold=5)

    def subjects() -> list[str]:
        assert followups.drain(10)
        # Follow-ups run on a small thread pool: count notices, whatever their order.
        return sorted("low" if "low" in m["Subject"] else "zero"
                      for m in smtp_server.to(contact))

    for i in range(8):
        debit(followups, uid, f"a{i}")
    assert subjects() == ["low", "zero"]
    assert not debit(followups, uid, "a-more").ok  # still zero: no new notice
    assert subjects() == ["low", "zero"]
    with db.session() as s:
        ledger.top_up(s, uid, 2)  # 0 -> 2: back to "low", not above the threshold
        assert s.get(Account, uid).balance_notice == "low"  # type: ignore[union-attr]
    assert debit(followups, uid, "a-more").ok  # the queued case goes first: 2 -> 1
    assert not debit(followups, uid, "b0", amount=2).ok  # 1 < 2: out of credits again
    assert subjects() == ["low", "zero", "zero"]  # sorted
    with db.session() as s:
        ledger.top_up(s, uid, 10)  # above the threshold: notices re-armed
        assert s.get(Account, uid).balance_notice is None  # type: ignore[union-attr]
    for i in range(7):
        debit(followups, uid, f"c{i}")  # 11 -> 4 (b0 still waits for its 2)
    assert subjects() == ["low", "low", "zero", "zero"]
    assert "fell below 5 credits: it is now 4 credits" in body(smtp_server.to(contact)[-1])


def test_notice_once_when_many_debits_cross_together(db: Database, uid: str,
                                                     smtp_server: SmtpSink, waker, followups):
    contact = f"owner-{uid}@acme.test"
    followups.email = SmtpEmailProvider("127.0.0.1", smtp_server.port)
    make_account(db, uid, 20, contact=contact, threshold=10)
    run_threads(12, lambda i: debit(followups, uid, f"wf-{i}"))
    assert followups.drain(10)
    mails = smtp_server.to(contact)
    assert len(mails) == 1 and "running low" in mails[0]["Subject"]


def test_zero_notice_without_auto_refill_and_no_notice_when_only_queued(
    db: Database, uid: str, smtp_server: SmtpSink, waker, followups,
):
    contact = f"owner-{uid}@acme.test"
    followups.email = SmtpEmailProvider("127.0.0.1", smtp_server.port)
    make_account(db, uid, 1, contact=contact)
    assert not debit(followups, uid, "big", amount=2).ok  # 1 < 2: SMS pauses
    assert not debit(followups, uid, "small").ok  # queued behind "big": no notice
    assert followups.drain(10)
    mails = smtp_server.to(contact)
    assert len(mails) == 1 and "used up" in mails[0]["Subject"]
    assert "Email reminders go on" in body(mails[0])


# --- Stripe through the real SDK -----------------------------------------------------------


class FakeStripe:
    """A loopback HTTP server answering like Stripe's PaymentIntents API."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: deque[tuple[int, dict[str, Any]]] = deque()
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                with fake.lock:
                    fake.requests.append({"path": self.path, "headers": dict(self.headers),
                                          "form": form})
                    status, body = fake.script.popleft() if fake.script else (200, {})
                if status == 200:
                    body = {"id": f"pi_{uuid.uuid4().hex[:12]}", "object": "payment_intent",
                            "status": "succeeded", "amount": int(form.get("amount", 0)),
                            "currency": form.get("currency"), **body}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stripe_api(followups: BalanceFollowups) -> Iterator[FakeStripe]:
    fake = FakeStripe()
    followups.gateways = Gateways(StripeGateway("sk_test_dunning", fake.url))
    yield fake
    followups.drain(10)
    fake.stop()


def stripe_account(db: Database, uid: str, balance_: int = 6) -> None:
    make_account(db, uid, balance_, contact=f"owner-{uid}@acme.test")
    with db.session() as s:
        pricing.set_price(s, uid, "0.02", "EUR")
        refill.configure(s, uid, threshold=5, amount=500, gateway="stripe",
                         stripe_customer="cus_Q1", stripe_payment_method="pm_card_visa")


def test_stripe_refill_charges_off_session_with_the_idempotency_key(
    db: Database, uid: str, stripe_api: FakeStripe, waker, followups,
):
    stripe_account(db, uid)
    debit(followups, uid, "wf-1")
    debit(followups, uid, "wf-2")  # 5 -> 4: crossing
    assert followups.drain(15)
    (row,) = refills_of(db, uid)
    assert row.status == "succeeded" and row.gateway == "stripe"
    (req,) = stripe_api.requests
    assert req["path"] == "/v1/payment_intents"
    assert req["headers"]["Idempotency-Key"] == row.idempotency_key
    assert req["headers"]["Authorization"] == "Bearer sk_test_dunning"
    form = req["form"]
    assert (form["amount"], form["currency"], form["customer"], form["payment_method"],
            form["off_session"], form["confirm"]) == (
        "1000", "eur", "cus_Q1", "pm_card_visa", "true", "true")  # 500 credits x EUR 0.02
    assert form["metadata[dunning_refill]"] == str(row.id)
    assert row.gateway_ref and row.gateway_ref.startswith("pi_")
    assert balance(db, uid) == 504 and waker.calls == [uid]
    assert_ledger_exact(db, uid)


def test_stripe_decline_fails_the_refill_with_the_reason(
    db: Database, uid: str, stripe_api: FakeStripe, waker, smtp_server: SmtpSink, followups,
):
    stripe_account(db, uid)
    stripe_api.script.append((402, {"error": {
        "type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds",
        "message": "Your card has insufficient funds."}}))
    followups.email = SmtpEmailProvider("127.0.0.1", smtp_server.port)
    for i in range(3):
        debit(followups, uid, f"wf-{i}")
    assert followups.drain(15)
    (row,) = refills_of(db, uid)
    assert row.status == "failed"
    assert row.error == "insufficient_funds: Your card has insufficient funds."
    assert len(stripe_api.requests) == 1 and balance(db, uid) == 3
    assert any("refill failed" in m["Subject"] for m in smtp_server.to(f"owner-{uid}@acme.test"))
    assert waker.calls == []


def test_stripe_server_error_keeps_the_refill_pending_with_one_key(
    db: Database, uid: str, stripe_api: FakeStripe, waker, followups,
):
    stripe_account(db, uid)
    err = {"error": {"type": "api_error", "message": "Something went wrong on Stripe's end."}}
    stripe_api.script.extend([(500, err), (500, err)])
    debit(followups, uid, "wf-1")
    debit(followups, uid, "wf-2")
    assert followups.drain(15)
    (row,) = refills_of(db, uid)
    assert row.status == "pending" and row.error and "will retry" in row.error
    keys = {r["headers"]["Idempotency-Key"] for r in stripe_api.requests}
    assert len(stripe_api.requests) == 2 and keys == {row.idempotency_key}  # the SDK's retry
    assert balance(db, uid) == 4
    # Later (STALE_AFTER), a reservation takes it over and Stripe answers this time.
    with db.session() as s:
        s.execute(update(Refill).where(Refill.id == row.id)
                  .values(updated_at=utcnow() - timedelta(hours=1)))
    for i in range(5):
        debit(followups, uid, f"later-{i}")
    assert followups.drain(15)
    assert [r.status for r in refills_of(db, uid)] == ["succeeded"]
    assert {r["headers"]["Idempotency-Key"] for r in stripe_api.requests} == {row.idempotency_key}
    assert balance(db, uid) == 500  # 4 - 4 + 500


def test_stripe_refill_needs_a_price_customer_and_payment_method(db: Database, uid: str):
    make_account(db, uid, 0)
    with db.session() as s, pytest.raises(InputError, match="price of a credit"):
        refill.configure(s, uid, threshold=5, amount=100, gateway="stripe",
                         stripe_customer="cus_1", stripe_payment_method="pm_1")
    with db.session() as s:
        pricing.set_price(s, uid, "0.01", "USD")
    with db.session() as s, pytest.raises(InputError, match="a Stripe customer"):
        refill.configure(s, uid, threshold=5, amount=100, gateway="stripe")
    with db.session() as s, pytest.raises(InputError, match="cus_"):
        refill.configure(s, uid, threshold=5, amount=100, gateway="stripe",
                         stripe_customer="acct_1", stripe_payment_method="pm_1")
    with db.session() as s, pytest.raises(InputError, match="card payment"):
        refill.configure(s, uid, threshold=5, amount=10**9, gateway="stripe",
                         stripe_customer="cus_1", stripe_payment_method="pm_1")
    with db.session() as s:
        data = refill.configure(s, uid, threshold=5, amount=100, gateway="stripe",
                                stripe_customer="cus_1", stripe_payment_method="pm_1")
    assert data["auto_refill"] == {"threshold": 5, "amount": 100, "gateway": "stripe",
                                   "charge": "$1.00"}
    with db.session() as s, pytest.raises(InputError, match="Stripe auto-refill"):
        pricing.set_price(s, uid, None, None)  # the price is in use


def test_stripe_without_an_api_key_fails_the_refill_clearly(
    db: Database, uid: str, waker, followups,
):
    # The worker's gateways come from Settings; without DUNNING_STRIPE_API_KEY the key is "".
    followups.gateways = Gateways.from_settings(Settings(stripe_api_key=""))
    stripe_account(db, uid)
    debit(followups, uid, "wf-1")
    debit(followups, uid, "wf-2")
    assert followups.drain(10)
    (row,) = refills_of(db, uid)
    assert row.status == "failed" and "DUNNING_STRIPE_API_KEY" in (row.error or "")


# --- the CLI -------------------------------------------------------------------------------




def test_cli_auto_refill_refills_and_balance(cli: Any, db: Database, uid: str, gateway, waker):
    cli.gateways = Gateways(gateway)  # the CLI builds its follow-ups with these gateways
    make_account(db, uid, 3)
    code, out, err = cli("credits", "auto-refill", "--account", uid, "--threshold", "5",
                         "--amount", "40", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["auto_refill"] == {"threshold": 5, "amount": 40, "gateway": "simulated",
                                   "charge": None}
    # The balance (3) was already below 5: one refill ran at once.
    assert data["refill"]["status"] == "succeeded" and data["refill"]["balance"] == 43
    assert "wake_error" in data  # no Temporal here; the credits are in all the same
    code, out, _ = cli("credits", "refills", "--account", uid, "--json")
    refills = json.loads(out)
    assert [(r["amount"], r["status"]) for r in refills["refills"]] == [(40, "succeeded")]
    code, out, _ = cli("credits", "balance", "--account", uid, "--json")
    data = json.loads(out)
    assert data["balance"] == 43 and data["last_refill"]["status"] == "succeeded"
    assert data["auto_refill"]["threshold"] == 5
    gateway.fail = "card_declined: no"
    with db.session() as s:
        s.execute(update(Account).where(Account.id == uid).values(auto_refill_threshold=50))
    code, out, _ = cli("credits", "auto-refill", "--account", uid, "--amount", "10", "--json")
    data = json.loads(out)
    assert data["auto_refill"]["amount"] == 10 and data["auto_refill"]["threshold"] == 50
    assert data["refill"]["status"] == "failed" and data["refill"]["error"] == "card_declined: no"
    code, out, _ = cli("credits", "balance", "--account", uid)
    assert "last refill" in out and "failed (card_declined: no)" in out
    code, out, _ = cli("credits", "refills", "--account", uid)
    assert code == 0 and "failed" in out and "succeeded" in out
    code, out, _ = cli("credits", "auto-refill", "--account", uid, "--off", "--json")
    assert json.loads(out)["auto_refill"] is None
    code, out, err = cli("credits", "auto-refill", "--account", uid, "--threshold", "5",
                         "--amount", "10", "--gateway", "stripe")
    assert code == 1 and "price" in err and "Traceback" not in err


async def test_a_wake_whose_grants_cross_the_threshold_starts_one_refill(
        db: Database, uid: str, gateway, waker, followups):
    """Credits set aside by a wake are debits like any other: the crossing they make starts
    one refill, and the cases' sends that use the grants later start none."""
    from tests.db.test_credits import FakeTemporal

    make_account(db, uid, 0, threshold=5, amount=20)
    for i in range(8):
        assert not debit(followups, uid, f"wf-{i}").ok  # paused, queued
    assert followups.drain(10)
    with db.session() as s:
        ledger.top_up(s, uid, 10)
    result = await wake.wake_paused(FakeTemporal(), db, uid,  # type: ignore[arg-type]
                                    followups=followups)
    assert (result.woken, result.granted) == (8, 8)
    assert result.balance_after in (2, 22)  # 10 - 8, and the refill may have landed already
    assert followups.drain(10)
    assert [r.status for r in refills_of(db, uid)] == ["succeeded"]
    assert waker.calls == [uid]  # the refill's credits serve whoever waits next
    for i in range(8):
        assert debit(followups, uid, f"wf-{i}").ok  # each send uses its grant
    assert followups.drain(10)
    assert len(refills_of(db, uid)) == 1
    assert balance(db, uid) == 22 and assert_ledger_exact(db, uid) == 22
