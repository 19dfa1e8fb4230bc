"""Console users, sign-in lock-out, sessions, API keys, idempotent top-ups, audit entries:
on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from dunning.api.keys import create_key, identity_for_key
from dunning.console import access
from dunning.console import operations as ops
from dunning.console.access import Identity
from dunning.credits import ledger
from dunning.domain.contract import InputError
from dunning.platform.db.models import ApiKey, AuditEntry, ConsoleUser, CreditEntry, utcnow
from tests.helpers import make_account

PASSWORD = "correct horse battery"


def _audit(db, account_id):
    with db.session() as s:
        return [(e.actor, e.action, e.detail) for e in s.scalars(
            select(AuditEntry).where(AuditEntry.account_id == account_id)
            .order_by(AuditEntry.id))]


def test_users_are_stored_with_an_argon2_hash_and_audited(db, uid):
    make_account(db, uid, balance=0)
    with db.session() as s:
        access.add_user(s, f"Ann.{uid}@Example.com", uid, "operator", PASSWORD)
    with db.session() as s:
        user = s.scalar(select(ConsoleUser).where(ConsoleUser.account_id == uid))
        assert user is not None
        assert user.email == f"ann.{uid}@example.com"
        assert user.password_hash.startswith("$argon2id$")
        assert PASSWORD not in user.password_hash
    assert _audit(db, uid) == [("cli", "user.created",
                                {"user": f"ann.{uid}@example.com", "role": "operator"})]


@pytest.mark.parametrize(("email", "role", "password", "field"), [
    ("not-an-email", "admin", PASSWORD, "email"),
    ("a@b.example", "owner", PASSWORD, "role"),
    ("a@b.example", "viewer", "short", "password"),
])
def test_bad_user_input_is_refused_and_stores_nothing(db, uid, email, role, password, field):
    make_account(db, uid, balance=0)
    with pytest.raises(InputError) as err, db.session() as s:
        access.add_user(s, email, uid, role, password)
    assert err.value.field == field
    with db.session() as s:
        assert s.scalar(select(ConsoleUser).where(ConsoleUser.account_id == uid)) is None


def test_a_user_of_one_account_cannot_be_moved_to_another(db, uid):
    make_account(db, uid, balance=0)
    make_account(db, uid + "b", balance=0)
    with db.session() as s:
        access.add_user(s, f"x{uid}@example.com", uid, "admin", PASSWORD)
    with pytest.raises(InputError, match="another account"), db.session() as s:
        access.add_user(s, f"x{uid}@example.com", uid + "b", "admin", PASSWORD)


def test_five_wrong_passwords_lock_the_user_even_against_the_right_one(db, uid):
    make_account(db, uid, balance=0)
    email = f"lock{uid}@example.com"
    with db.session() as s:
        access.add_user(s, email, uid, "operator", PASSWORD)
    for _ in range(access.MAX_FAILED_LOGINS - 1):
        with db.session() as s:
            assert access.authenticate(s, email, "wrong password!").error == access.WRONG_MESSAGE
    with db.session() as s:
        assert access.authenticate(s, email, "wrong password!").error == access.LOCKED_MESSAGE
    with db.session() as s:
        locked = access.authenticate(s, email, PASSWORD)
        assert locked.user is None and locked.error == access.LOCKED_MESSAGE
    later = utcnow() + access.LOCKOUT + timedelta(seconds=1)
    with db.session() as s:
        user = access.authenticate(s, email, PASSWORD, now=later).user
        assert user is not None and user.email == email
    assert ("user:" + email, "user.locked", {"minutes": 15}) in _audit(db, uid)


def test_a_right_password_resets_the_failure_count(db, uid):
    make_account(db, uid, balance=0)
    email = f"reset{uid}@example.com"
    with db.session() as s:
        access.add_user(s, email, uid, "viewer", PASSWORD)
    for _ in range(3):
        with db.session() as s:
            assert access.authenticate(s, email, "nope nope nope").user is None
    with db.session() as s:
        assert access.authenticate(s, email, PASSWORD).user is not None
    for _ in range(4):  # 4 more: still not locked, the count started again
        with db.session() as s:
            assert access.authenticate(s, email, "nope nope nope").error == access.WRONG_MESSAGE


def test_sessions_resolve_to_the_user_and_end(db, uid):
    make_account(db, uid, balance=0)
    with db.session() as s:
        user = access.add_user(s, f"s{uid}@example.com", uid, "viewer", PASSWORD)
        token = access.start_session(s, user)
    with db.session() as s:
        ident = access.identity_for_session(s, token)
        assert ident is not None and ident.account_id == uid and ident.role == "viewer"
        assert not ident.can_change and len(ident.csrf_token) >= 32
        assert access.identity_for_session(s, token + "x") is None
        assert access.identity_for_session(
            s, token, now=utcnow() + access.SESSION_TTL + timedelta(seconds=1)) is None
        access.end_session(s, token)
    with db.session() as s:
        assert access.identity_for_session(s, token) is None


def test_cookie_signatures_reject_tampering():
    signer = access.CookieSigner(b"k" * 32)
    value = signer.sign("token123")
    assert signer.unsign(value) == "token123"
    assert signer.unsign("token124" + value[8:]) is None
    assert access.CookieSigner(b"j" * 32).unsign(value) is None
    assert signer.unsign("token123") is None


def test_api_keys_are_hashed_and_resolve_to_their_account(db, uid):
    make_account(db, uid, balance=0)
    with db.session() as s:
        key = create_key(s, uid, "billing")
    with db.session() as s:
        row = s.get(ApiKey, key.key_id)
        assert row is not None and key.secret.split("_", 2)[2] not in row.secret_hash
        ident = identity_for_key(s, key.secret)
        assert ident is not None and ident.account_id == uid
        assert identity_for_key(s, key.secret[:-1] + ("A" if key.secret[-1] != "A" else "B")
                                ) is None
        assert identity_for_key(s, "dk_nothing") is None
        row.revoked_at = utcnow()
    with db.session() as s:
        assert identity_for_key(s, key.secret) is None


def test_top_up_with_a_key_happens_once(db, uid):
    make_account(db, uid, balance=0)
    ident = Identity(uid, "operator", "api-key:test")
    first = ops.top_up(db, ident, 40, "key-1")
    again = ops.top_up(db, ident, 40, "key-1")
    assert (first.balance, first.duplicate) == (40, False)
    assert (again.balance, again.duplicate) == (40, True)
    with pytest.raises(InputError, match="different request"):
        ops.top_up(db, ident, 41, "key-1")
    assert ops.top_up(db, ident, 5, "key-2").balance == 45
    assert ops.top_up(db, ident, 5).balance == 50  # no key: every call counts
    with db.session() as s:
        assert ledger.balance_of(s, uid) == 50
        assert len(s.scalars(select(CreditEntry).where(CreditEntry.account_id == uid)).all()
                   ) == 3
    assert [a for _, a, _ in _audit(db, uid)].count("credits.topped_up") == 3


def test_viewers_change_nothing(db, uid):
    make_account(db, uid, balance=0, sms=False)
    viewer = Identity(uid, "viewer", "user:v@example.com")
    with pytest.raises(ops.Forbidden):
        ops.top_up(db, viewer, 10)
    with pytest.raises(ops.Forbidden), db.session() as s:
        ops.update_sms_settings(s, viewer, ops.SmsChanges(sms_enabled=True))
    with db.session() as s:
        assert ledger.balance_of(s, uid) == 0
    assert _audit(db, uid) == []


def test_sms_settings_are_validated_before_anything_changes(db, uid):
    make_account(db, uid, balance=0, sms=False)
    ident = Identity(uid, "operator", "user:o@example.com")
    with pytest.raises(InputError) as err, db.session() as s:
        ops.update_sms_settings(s, ident, ops.SmsChanges(sms_enabled=True,
                                                         template="no link here"))
    assert err.value.field == "template"
    with db.session() as s:
        data = ops.update_sms_settings(s, ident, ops.SmsChanges(
            sms_enabled=True, steps={2: False}, template="{company_name}: {billing_link}"))
    assert data["sms_enabled"] is True
    assert [st["sms"] for st in data["steps"]] == [True, False, True]
    assert data["template"] == "{company_name}: {billing_link}"


def test_the_preview_prices_like_the_engine(db, uid):
    make_account(db, uid, balance=0)
    with db.session() as s:
        gsm = ops.template_preview(s, uid, "{company_name} {billing_link}")
        ucs = ops.template_preview(s, uid, "{company_name} {billing_link} ✓")
        bad = ops.template_preview(s, uid, "{company_nam} {billing_link}")
    assert (gsm["encoding"], gsm["segments"], gsm["credits"]) == ("GSM-7", 1, 1)
    assert gsm["text"].startswith("Acme Cloud https://") and gsm["text"].endswith(
        "Reply STOP to unsubscribe.")
    assert ucs["encoding"] == "UCS-2" and ucs["non_gsm7_chars"] == ["✓"]
    assert bad["error"] and "company_name" in bad["error"] and bad["text"] is None


def test_recoveries_by_step_count_the_last_reminder_sent_before_payment(db, uid):
    from datetime import UTC, datetime

    from dunning.platform.db.models import Case, Message

    make_account(db, uid, balance=0)
    now = datetime.now(UTC)

    def case(n: int, state: str, sent_steps: list[int], amount: int = 1000) -> None:
        wf = f"dunning-{uid}-inv{n}"
        with db.session() as s:
            s.add(Case(workflow_id=wf, account_id=uid, customer_id=f"c{n}",
                       invoice_id=f"inv{n}", amount_due=amount, currency="USD", state=state,
                       failed_at=now, recovered_amount=amount if state == "recovered" else 0))
            for step in sent_steps:
                s.add(Message(workflow_id=wf, run_id="r", step=step, channel="email",
                              account_id=uid, customer_id=f"c{n}", status="sent"))
            s.add(Message(workflow_id=wf, run_id="r", step=9, channel="sms", account_id=uid,
                          customer_id=f"c{n}", status="skipped"))  # not sent: not counted

    case(1, "recovered", [1])
    case(2, "recovered", [1, 2])
    case(3, "recovered", [1, 2], amount=500)
    case(4, "recovered", [])
    case(5, "exhausted", [1, 2, 3])
    with db.session() as s:
        rows = ops.recoveries_by_step(s, uid)
    assert rows == [
        {"step": 0, "count": 1, "amounts": {"USD": 1000}},
        {"step": 1, "count": 1, "amounts": {"USD": 1000}},
        {"step": 2, "count": 2, "amounts": {"USD": 1500}},
    ]


def test_case_search_filters_and_pages(db, uid):
    from datetime import UTC, datetime, timedelta

    from dunning.platform.db.models import Case, SmsWaiter

    make_account(db, uid, balance=0)
    now = datetime.now(UTC)
    with db.session() as s:
        for n in range(7):
            s.add(Case(workflow_id=f"dunning-{uid}-inv{n}", account_id=uid,
                       customer_id=f"c{n % 2}", invoice_id=f"inv{n}", amount_due=100,
                       currency="USD", state="active" if n < 5 else "recovered",
                       failed_at=now, started_at=now - timedelta(minutes=n)))
        s.add(SmsWaiter(account_id=uid, workflow_id=f"dunning-{uid}-inv1", credits_needed=1))
        s.add(SmsWaiter(account_id=uid, workflow_id=f"dunning-{uid}-inv2", credits_needed=1,
                        credits_granted=1))  # served: no longer paused
        s.add(Case(workflow_id=f"dunning-{uid}x-inv0", account_id=uid + "x", customer_id="c0",
                   invoice_id="inv0", amount_due=1, currency="USD", failed_at=now))

    def search(**kw):
        with db.session() as s:
            rows, total = ops.search_cases(s, uid, ops.CaseQuery(**kw).check(), size=3)
        return [c.invoice_id for c, _ in rows], total, [p for _, p in rows]

    assert search() == (["inv0", "inv1", "inv2"], 7, [False, True, False])
    assert search(page=3) == (["inv6"], 7, [False])
    assert search(state="recovered")[:2] == (["inv5", "inv6"], 2)
    assert search(customer="c1")[:2] == (["inv1", "inv3", "inv5"], 3)
    assert search(invoice="inv4")[:2] == (["inv4"], 1)
    assert search(sms_paused=True) == (["inv1"], 1, [True])
    assert search(sms_paused=False)[1] == 6
    with pytest.raises(InputError):
        ops.CaseQuery(state="lost").check()


def test_consent_history_is_masked_and_newest_first(db, uid):
    from dunning.customers.consent import record_opt_in, record_opt_out

    make_account(db, uid, balance=0)
    with db.session() as s:
        record_opt_out(s, uid, "+14155552671", source="sms", keyword="STOP")
    with db.session() as s:
        record_opt_in(s, uid, "+14155552671", source="sms", keyword="START")
    with db.session() as s:
        events, total = ops.consent_history(s, uid, 1)
    assert total == 2
    assert [(e["action"], e["keyword"], e["phone"]) for e in events] == [
        ("opt_in", "START", "+1******2671"), ("opt_out", "STOP", "+1******2671")]
