"""SMS and email settings: switches, templates, previews; the logic and `dunning sms|email`.

Real databases (SQLite and PostgreSQL through the `db` fixture); the CLI runs in-process through
`dunning.cli.main` against the same database.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from dunning.accounts import messaging
from dunning.accounts.accounts import AccountOptions, create_account
from dunning.accounts.pricing import sms_cost
from dunning.domain.contract import InputError, MessageRequest
from dunning.domain.segments import count_segments
from dunning.domain.templates import (
    DEFAULT_EMAIL_SUBJECT,
    DEFAULT_SMS_TEMPLATE,
    OPT_OUT_LINE,
    SAMPLE_CONTEXT,
)
from dunning.messages import recipients as engine
from dunning.platform.db import Database
from dunning.platform.db.models import Account, Customer, EmailTemplate, SmsTemplate

SENDER = "+14155550100"


def make_account(
    db: Database, account_id: str, *, schedule: str = "0d,3d,7d,14d", support: str | None = None
) -> None:
    with db.session() as s:
        create_account(
            s, account_id,
            AccountOptions(company_name=f"Co {account_id}", schedule=schedule,
                           support_contact=support, sms_sender=SENDER),
        )


def switches(db: Database, account_id: str) -> tuple[bool, dict[str, bool], list[bool]]:
    with db.session() as s:
        acct = s.get(Account, account_id)
        assert acct is not None
        steps = len(acct.schedule.split(","))
        return (
            acct.sms_enabled,
            dict(acct.sms_steps or {}),
            [acct.sms_step_on(n) for n in range(1, steps + 1)],
        )


def sms_template_count(db: Database, account_id: str) -> int:
    with db.session() as s:
        query = select(func.count()).select_from(SmsTemplate)
        return s.scalar(query.where(SmsTemplate.account_id == account_id)) or 0


# --- switches ------------------------------------------------------------------------------


def test_fresh_account_has_sms_off(db: Database, uid: str) -> None:
    make_account(db, uid)
    assert switches(db, uid) == (False, {}, [False, False, False, False])


def test_enable_one_step_on_an_account_with_sms_off_turns_on_only_that_step(
    db: Database, uid: str
) -> None:
    make_account(db, uid)
    with db.session() as s:
        messaging.set_sms_switch(s, uid, True, [2])
    enabled, steps, on = switches(db, uid)
    assert enabled is True
    assert on == [False, True, False, False]
    assert steps == {"1": False, "2": True, "3": False, "4": False}  # explicitly off


def test_switch_semantics_step_by_step(db: Database, uid: str) -> None:
    make_account(db, uid)
    with db.session() as s:
        messaging.set_sms_switch(s, uid, True, [2])
    with db.session() as s:  # SMS already on: only step 3 changes
        messaging.set_sms_switch(s, uid, True, [3])
    assert switches(db, uid)[2] == [False, True, True, False]
    with db.session() as s:
        messaging.set_sms_switch(s, uid, False, [2])
    assert switches(db, uid)[2] == [False, False, True, False]
    with db.session() as s:  # whole account off keeps the per-step switches
        data = messaging.set_sms_switch(s, uid, False)
    assert data["sms_enabled"] is False
    enabled, steps, on = switches(db, uid)
    assert (enabled, on) == (False, [False, False, False, False])
    assert steps == {"1": False, "2": False, "3": True, "4": False}
    with db.session() as s:  # and back on: the same steps as before
        messaging.set_sms_switch(s, uid, True)
    assert switches(db, uid)[2] == [False, False, True, False]


def test_enable_without_steps_turns_every_step_on(db: Database, uid: str) -> None:
    make_account(db, uid)
    with db.session() as s:
        data = messaging.set_sms_switch(s, uid, True)
    assert switches(db, uid) == (True, {}, [True, True, True, True])
    assert [step["sms"] for step in data["steps"]] == [True] * 4


def test_enable_several_steps_at_once(db: Database, uid: str) -> None:
    make_account(db, uid)
    with db.session() as s:
        messaging.set_sms_switch(s, uid, True, [1, 4, 4])
    assert switches(db, uid)[2] == [True, False, False, True]


@pytest.mark.parametrize("step", [0, 5, -1])
def test_step_outside_the_schedule_is_refused(db: Database, uid: str, step: int) -> None:
    make_account(db, uid)
    with db.session() as s:
        messaging.set_sms_switch(s, uid, True, [1])
    before = switches(db, uid)
    with pytest.raises(InputError) as err, db.session() as s:
        messaging.set_sms_switch(s, uid, True, [2, step])
    assert err.value.field == "step"
    assert f"{step} is not a step" in err.value.message
    assert "1 to 4" in err.value.message
    assert switches(db, uid) == before


def test_unknown_account_is_refused(db: Database, uid: str) -> None:
    with pytest.raises(InputError, match="unknown account"), db.session() as s:
        messaging.set_sms_switch(s, f"nope-{uid}", True)


# --- SMS templates -------------------------------------------------------------------------


def test_per_plan_templates_and_fallbacks(db: Database, uid: str) -> None:
    make_account(db, uid)
    with db.session() as s:
        messaging.set_sms_template(s, uid, "Default {billing_link}")
        messaging.set_sms_template(s, uid, "Pro plan {billing_link}", plan="pro")
    with db.session() as s:
        assert messaging.sms_template_for(s, uid, "pro") == "Pro plan {billing_link}"
        assert messaging.sms_template_for(s, uid, "basic") == "Default {billing_link}"
        assert messaging.sms_template_for(s, uid, None) == "Default {billing_link}"
        pro = messaging.preview_sms(s, uid, "pro")
        basic = messaging.preview_sms(s, uid, "basic")
    assert pro["text"].startswith("Pro plan https://")
    assert pro["template_source"] == "plan"
    assert basic["text"].startswith("Default https://")
    assert basic["template_source"] == "account"
    with db.session() as s:
        messaging.clear_sms_template(s, uid)
    with db.session() as s:
        assert messaging.sms_template_for(s, uid, "basic") == DEFAULT_SMS_TEMPLATE
        assert messaging.sms_template_for(s, uid, "pro") == "Pro plan {billing_link}"
        with pytest.raises(InputError, match="no SMS template"):
            messaging.clear_sms_template(s, uid, plan="enterprise")


def test_setting_a_template_twice_replaces_it(db: Database, uid: str) -> None:
    make_account(db, uid)
    with db.session() as s:
        messaging.set_sms_template(s, uid, "One {billing_link}")
    with db.session() as s:
        messaging.set_sms_template(s, uid, "Two {billing_link}")
    assert sms_template_count(db, uid) == 1
    with db.session() as s:
        assert messaging.sms_template_for(s, uid, None) == "Two {billing_link}"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("Pay {amount} now", "{billing_link}"),
        ("Pay {amout} at {billing_link}", "{amout}"),
        ("Pay at {billing_link", "unbalanced braces"),
        ("{billing_link} " + "x" * 1600, "segments"),
    ],
)
def test_refused_template_stores_nothing(
    db: Database, uid: str, text: str, fragment: str
) -> None:
    make_account(db, uid)
    with db.session() as s:
        messaging.set_sms_template(s, uid, "Kept {billing_link}", plan="pro")
    with pytest.raises(InputError) as err, db.session() as s:
        messaging.set_sms_template(s, uid, text, plan="pro")
    assert fragment in err.value.message
    with pytest.raises(InputError), db.session() as s:
        messaging.set_sms_template(s, uid, text)
    assert sms_template_count(db, uid) == 1
    with db.session() as s:
        assert messaging.sms_template_for(s, uid, "pro") == "Kept {billing_link}"


def test_template_lookup_matches_the_engine(db: Database, uid: str) -> None:
    """The preview and the send activity resolve templates identically."""
    make_account(db, uid)
    cases = [("pro", None), ("basic", None), (None, None)]
    with db.session() as s:
        for plan, _ in cases:
            assert messaging.sms_template_for(s, uid, plan) == engine.sms_template_choice(
                s, uid, plan
            ).body
        messaging.set_sms_template(s, uid, "Default {billing_link}")
        messaging.set_sms_template(s, uid, "Pro {billing_link}", plan="pro")
        messaging.set_email_template(s, uid, "S all", "B all {billing_link}")
        messaging.set_email_template(s, uid, "S 2", "B 2 {billing_link}", step=2)
        messaging.set_email_template(s, uid, "S pro", "B pro {billing_link}", plan="pro")
        messaging.set_email_template(s, uid, "S 3 pro", "B {billing_link}", step=3, plan="pro")
    with db.session() as s:
        for plan in ("pro", "basic", None):
            assert messaging.sms_template_for(s, uid, plan) == engine.sms_template_choice(
                s, uid, plan
            ).body
            for step in (1, 2, 3, 4):
                chosen = engine.email_template_choice(s, uid, step, plan)
                assert messaging.email_template_for(s, uid, step, plan) == (
                    chosen.subject, chosen.body
                )
        assert messaging.email_template_for(s, uid, 3, "pro")[0] == "S 3 pro"
        assert messaging.email_template_for(s, uid, 2, "pro")[0] == "S 2"
        assert messaging.email_template_for(s, uid, 1, "pro")[0] == "S pro"
        assert messaging.email_template_for(s, uid, 1, None)[0] == "S all"


# --- preview -------------------------------------------------------------------------------


def test_preview_uses_the_account_and_prices_like_pricing(db: Database, uid: str) -> None:
    make_account(db, uid, support="call 555-0100")
    with db.session() as s:
        messaging.set_sms_template(
            s, uid, "{company_name} ({support_contact}): pay {amount} at {billing_link}"
        )
        data = messaging.preview_sms(s, uid)
        expected_credits = sms_cost(s, uid, "US", data["segments"])
    assert data["text"] == (
        f"Co {uid} (call 555-0100): pay $49.00 at {SAMPLE_CONTEXT.billing_link} {OPT_OUT_LINE}"
    )
    info = count_segments(data["text"])
    assert (data["encoding"], data["segments"], data["units"]) == (
        info.encoding, info.segments, info.units,
    )
    assert data["encoding"] == "GSM-7" and data["segments"] == 1
    assert data["credits"] == expected_credits
    assert data["country"] == "US"
    assert data["opt_out_appended"] is True
    json.dumps(data)  # a JSON object as it stands


def test_preview_of_a_long_unicode_message(db: Database, uid: str) -> None:
    make_account(db, uid)
    with db.session() as s:
        messaging.set_sms_template(s, uid, "Zoë, " + "á" * 80 + " {billing_link}")
        data = messaging.preview_sms(s, uid, country="fr")
        rate_credits = sms_cost(s, uid, "FR", data["segments"])
    assert data["encoding"] == "UCS-2"
    assert data["segments"] == 3  # 5 + 80 + 1 + 39 + 1 + 26 = 152 units -> 67 + 67 + 18
    assert data["units"] == 152
    assert data["credits"] == rate_credits
    assert data["country"] == "FR"
    assert data["non_gsm7_chars"] == ["ë", "á"]


def test_preview_step_fills_days_overdue_and_validates(db: Database, uid: str) -> None:
    make_account(db, uid)
    with db.session() as s:
        messaging.set_sms_template(s, uid, "{days_overdue} days late: {billing_link}")
        assert messaging.preview_sms(s, uid, step=3)["text"].startswith("7 days late")
        assert messaging.preview_sms(s, uid)["text"].startswith("3 days late")
        with pytest.raises(InputError, match="1 to 4"):
            messaging.preview_sms(s, uid, step=9)
        with pytest.raises(InputError) as err:
            messaging.preview_sms(s, uid, country="ZZ")
        assert err.value.field == "country"


def test_preview_matches_what_the_engine_sends_and_charges(db: Database, uid: str) -> None:
    """Render and price through the send activity's own code path for a customer that looks
    like the sample one: text, segments, encoding and credits must be identical."""
    make_account(db, uid, support="help@co.test")
    with db.session() as s:
        messaging.set_sms_switch(s, uid, True)
        messaging.set_sms_template(
            s, uid, "{first_name}, {company_name}: {amount} for {invoice_id} is "
            "{days_overdue} days late. Pay: {billing_link} Help: {support_contact} 🙏",
            plan="pro",
        )
        s.add(Customer(account_id=uid, customer_id="c1", name=SAMPLE_CONTEXT.customer_name,
                       phone_e164="+14155552671", phone_region="US", plan="pro"))
        s.get(Account, uid).quiet_hours = "off"  # type: ignore[union-attr]
    now = datetime.now(UTC)
    req = MessageRequest(
        workflow_id=f"wf-{uid}", account_id=uid, customer_id="c1",
        invoice_id=SAMPLE_CONTEXT.invoice_id, step=1, step_count=4, amount_due=4900,
        currency="USD", billing_link=SAMPLE_CONTEXT.billing_link,
        failed_at=now - timedelta(days=SAMPLE_CONTEXT.days_overdue), now=now,
    )
    with db.session() as s:
        sent = engine.sms_for(s, req)
        preview = messaging.preview_sms(s, uid, "pro")
    assert isinstance(sent, engine.SmsPlan), sent
    sms, credits, segments, encoding, queued = sent
    assert not queued
    assert preview["text"] == sms.text
    assert (preview["segments"], preview["encoding"], preview["credits"]) == (
        segments, encoding, credits,
    )
    assert preview["encoding"] == "UCS-2"


def test_show_lists_schedule_switches_and_templates(db: Database, uid: str) -> None:
    make_account(db, uid, schedule="0d,2d,5d")
    with db.session() as s:
        messaging.set_sms_switch(s, uid, True, [3])
        messaging.set_sms_template(s, uid, "Gold {billing_link}", plan="gold")
        data = messaging.sms_settings_json(s, uid)
    assert data["sms_enabled"] is True
    assert [(x["step"], x["offset"], x["email"], x["sms"]) for x in data["steps"]] == [
        (1, "0d", True, False), (2, "2d", True, False), (3, "5d", True, True),
    ]
    assert data["template"] == DEFAULT_SMS_TEMPLATE
    assert data["template_source"] == "built-in"
    assert data["plan_templates"] == {"gold": "Gold {billing_link}"}


# --- email templates -----------------------------------------------------------------------


def test_email_templates_set_validate_show_preview(db: Database, uid: str) -> None:
    make_account(db, uid)
    with db.session() as s:
        messaging.set_email_template(
            s, uid, "{company_name}: invoice {invoice_id}", "Pay {amount}: {billing_link}", step=2
        )
    with pytest.raises(InputError, match="billing_link"), db.session() as s:
        messaging.set_email_template(s, uid, "Hi", "no link here")
    with pytest.raises(InputError, match=r"0 to 4 \(0 = every step\)"), db.session() as s:
        messaging.set_email_template(s, uid, "Hi", "{billing_link}", step=7)
    with db.session() as s:
        count = s.scalar(select(func.count()).select_from(EmailTemplate)
                         .where(EmailTemplate.account_id == uid))
        shown = messaging.email_templates_json(s, uid)
        step2 = messaging.preview_email(s, uid, step=2)
        step1 = messaging.preview_email(s, uid, step=1)
    assert count == 1
    assert shown["templates"] == [{"step": 2, "plan": None, "locale": None,
                                   "subject": "{company_name}: invoice {invoice_id}",
                                   "body": "Pay {amount}: {billing_link}"}]
    assert step2["subject"] == f"Co {uid}: invoice inv_123"
    assert step2["body"] == f"Pay $49.00: {SAMPLE_CONTEXT.billing_link}"
    assert step1["subject"] == DEFAULT_EMAIL_SUBJECT.format(
        company_name=f"Co {uid}", amount="$49.00"
    )


# --- the CLI -------------------------------------------------------------------------------

Run = Callable[..., tuple[int, str, str]]




def test_cli_enable_disable_and_show(cli: Run, db: Database, uid: str) -> None:
    make_account(db, uid)
    code, out, err = cli("sms", "enable", "--account", uid, "--step", "2", "--step", "4",
                         "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert [x["sms"] for x in data["steps"]] == [False, True, False, True]
    code, out, _ = cli("sms", "disable", "--account", uid, "--step", "4", "--json")
    assert code == 0
    assert [x["sms"] for x in json.loads(out)["steps"]] == [False, True, False, False]
    code, out, _ = cli("sms", "disable", "--account", uid)
    assert code == 0 and "off" in out
    assert switches(db, uid)[0] is False
    code, out, _ = cli("sms", "show", "--account", uid, "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["sms_enabled"] is False
    assert [x["offset"] for x in shown["steps"]] == ["0d", "3d", "7d", "14d"]


def test_cli_step_out_of_range_exits_1_with_one_clear_message(
    cli: Run, db: Database, uid: str
) -> None:
    make_account(db, uid)
    code, out, err = cli("sms", "enable", "--account", uid, "--step", "9")
    assert code == 1
    assert out == ""
    assert "step" in err and "1 to 4" in err
    assert "Traceback" not in err
    assert switches(db, uid)[0] is False


def test_cli_unknown_account_exits_1(cli: Run, uid: str) -> None:
    code, _, err = cli("sms", "show", "--account", f"ghost-{uid}")
    assert code == 1
    assert "unknown account" in err


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("Pay {amount} now", "{billing_link}"),
        ("Pay {amout} at {billing_link}", "{amout}"),
        ("Pay at {billing_link", "unbalanced"),
        ("{billing_link} " + "y" * 1600, "segments"),
    ],
)
def test_cli_refused_template_exits_1_and_stores_nothing(
    cli: Run, db: Database, uid: str, text: str, fragment: str
) -> None:
    make_account(db, uid)
    code, out, err = cli("sms", "template", "set", "--account", uid, "--plan", "pro", text)
    assert code == 1
    assert out == ""
    assert fragment in err.replace("\n", " ")
    assert "Traceback" not in err
    assert sms_template_count(db, uid) == 0


def test_cli_template_set_and_preview_json(cli: Run, db: Database, uid: str) -> None:
    make_account(db, uid)
    code, _, err = cli("account", "update", uid, "--track-links", "off")
    assert (code, err) == (0, "")  # the full sample link, as this test counts its septets

    def expected(pad: int) -> str:
        return (f"[PRO] {'x' * pad} Co {uid}: pay $49.00 at {SAMPLE_CONTEXT.billing_link} "
                f"{OPT_OUT_LINE}")

    pad = 159 - len(expected(0))  # 159 characters, 161 septets: [ and ] take two each
    template = "[PRO] " + "x" * pad + " {company_name}: pay {amount} at {billing_link}"
    code, out, err = cli("sms", "template", "set", "--account", uid, "--plan", "pro", template)
    assert (code, err) == (0, "")
    assert "[PRO]" in out  # printed as is, not eaten as markup
    code, out, err = cli("sms", "preview", "--account", uid, "--plan", "pro", "--json")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == 1  # one JSON object and nothing else
    data = json.loads(lines[0])
    assert data["text"] == expected(pad)
    assert len(data["text"]) == 159
    assert (data["encoding"], data["segments"], data["units"]) == ("GSM-7", 2, 161)
    assert isinstance(data["credits"], int) and data["credits"] >= data["segments"]
    code, out, _ = cli("sms", "preview", "--account", uid, "--json")
    assert code == 0
    assert json.loads(out)["text"].startswith(f"Co {uid}: your payment of $49.00")
    code, out, _ = cli("sms", "preview", "--account", uid, "--plan", "pro")
    assert code == 0
    assert out.startswith(expected(pad) + "\n")
    assert "GSM-7, 2 segments" in out


def test_cli_template_clear(cli: Run, db: Database, uid: str) -> None:
    make_account(db, uid)
    assert cli("sms", "template", "set", "--account", uid, "Hi {billing_link}")[0] == 0
    assert sms_template_count(db, uid) == 1
    code, _, _ = cli("sms", "template", "clear", "--account", uid)
    assert code == 0
    assert sms_template_count(db, uid) == 0
    code, _, err = cli("sms", "template", "clear", "--account", uid)
    assert code == 1 and "no SMS template" in err


def test_cli_email_templates(cli: Run, db: Database, uid: str) -> None:
    make_account(db, uid)
    assert cli("account", "update", uid, "--track-links", "off")[0] == 0
    code, out, err = cli("email", "template", "set", "--account", uid, "--step", "2",
                         "--plan", "pro", "--subject", "Invoice {invoice_id}",
                         "--body", "Pay here: {billing_link}", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == {"account_id": uid, "step": 2, "plan": "pro", "locale": None,
                               "subject": "Invoice {invoice_id}",
                               "body": "Pay here: {billing_link}"}
    code, out, err = cli("email", "template", "set", "--account", uid, "--subject", "Hi",
                         "--body", "Pay {amount}")
    assert code == 1 and out == "" and "{billing_link}" in err.replace("\n", " ")
    code, out, _ = cli("email", "template", "show", "--account", uid, "--json")
    assert code == 0
    assert [(t["step"], t["plan"]) for t in json.loads(out)["templates"]] == [(2, "pro")]
    code, out, _ = cli("email", "preview", "--account", uid, "--step", "2", "--plan", "pro",
                       "--json")
    assert code == 0
    data = json.loads(out)
    assert data["subject"] == "Invoice inv_123"
    assert data["body"] == f"Pay here: {SAMPLE_CONTEXT.billing_link}"
