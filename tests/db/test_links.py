"""Tracked links (signing, one per reminder, clicks) and the CLI around links and experiments."""

from __future__ import annotations

import json
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dunning.accounts import messaging
from dunning.messages import links
from dunning.messages.links import TOKEN_LENGTH, LinkSigner
from dunning.platform.db import Database
from dunning.platform.db.models import LinkClick, ShortLink
from tests.helpers import make_account

Run = Callable[..., tuple[int, str, str]]


def test_tokens_are_signed_and_unguessable() -> None:
    signer = LinkSigner([b"k" * 32])
    tokens = {signer.new_token() for _ in range(200)}
    assert len(tokens) == 200
    assert all(len(t) == TOKEN_LENGTH and signer.is_valid(t) for t in tokens)
    token = next(iter(tokens))
    assert not LinkSigner([b"other" * 8]).is_valid(token)  # another key
    assert LinkSigner([b"new" * 11, b"k" * 32]).is_valid(token)  # a rotated-in key
    for bad in ("", "x" * TOKEN_LENGTH, token[:-1], token + "A", token.replace(token[3], "!")):
        assert not signer.is_valid(bad)


def test_one_link_per_reminder_and_clicks_recorded(db: Database, uid: str) -> None:
    make_account(db, uid)
    signer = LinkSigner([b"k" * 32])

    def link(s: Session, channel: str) -> str:
        return links.short_link_for(
            s, signer, "https://d.example", account_id=uid, workflow_id=f"dunning:{uid}:inv1",
            step=1, channel=channel, target="https://pay.example.com/inv1",
        )

    with db.session() as s:
        sms, again, email = link(s, "sms"), link(s, "sms"), link(s, "email")
    assert sms == again and sms != email
    assert sms.startswith("https://d.example/l/")
    token = sms.rsplit("/", 1)[1]
    with db.session() as s:
        target = links.follow(s, signer, token)
        assert target is not None and target.target == "https://pay.example.com/inv1"
        assert (target.step, target.channel) == (1, "sms")
        assert links.follow(s, signer, LinkSigner([b"k" * 32]).new_token()) is None  # unknown
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(LinkClick)
                        .where(LinkClick.account_id == uid)) == 1
        row = s.get_one(ShortLink, token)
        assert uid not in token and "inv1" not in token and row.workflow_id.endswith("inv1")


def test_sms_preview_shows_the_short_link_saving(cli: Run, db: Database, uid: str) -> None:
    make_account(db, uid)
    template = "{company_name}: please pay {amount} at {billing_link}"
    assert cli("sms", "template", "set", "--account", uid, template)[0] == 0
    code, out, err = cli("sms", "preview", "--account", uid, "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["tracked_link"] is True
    assert "/l/" + "x" * TOKEN_LENGTH in data["text"]
    assert data["saving"]["characters"] == len(data["untracked"]["text"]) - len(data["text"])
    assert data["saving"]["characters"] == len(messaging.TYPICAL_BILLING_LINK) - len(
        "http://127.0.0.1:8000/l/") - TOKEN_LENGTH
    assert data["untracked"]["segments"] == 2 and data["segments"] == 1
    assert data["saving"] == {"characters": data["saving"]["characters"], "segments": 1,
                              "credits": 1}
    code, out, err = cli("sms", "preview", "--account", uid)
    assert code == 0 and "Tracked short link:" in out
    assert cli("account", "update", uid, "--track-links", "off")[0] == 0
    data = json.loads(cli("sms", "preview", "--account", uid, "--json")[1])
    assert data["tracked_link"] is False and "saving" not in data


def test_experiment_cli_and_report_sections(cli: Run, db: Database, uid: str) -> None:
    make_account(db, uid)
    code, out, err = cli("experiment", "sms-holdout", "--account", uid, "--percent", "20",
                         "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == {"account_id": uid, "sms_holdout_percent": 20}
    code, out, _ = cli("account", "show", uid, "--json")
    assert json.loads(out)["sms_holdout_percent"] == 20
    code, _, err = cli("experiment", "sms-holdout", "--account", uid)
    assert code == 1 and "--percent" in err
    code, _, err = cli("experiment", "sms-holdout", "--account", uid, "--percent", "80")
    assert code == 2
    code, _, err = cli("experiment", "sms-holdout", "--account", "nobody", "--off")
    assert code == 1 and "unknown account" in err
    assert cli("experiment", "sms-holdout", "--account", uid, "--off")[0] == 0
    code, out, _ = cli("report", "--account", uid, "--json")
    data = json.loads(out)
    assert data["funnel"] == [] and data["experiment"] is None


def test_sms_template_ab_test(cli: Run, db: Database, uid: str) -> None:
    import dataclasses
    from datetime import UTC, datetime

    from temporalio.testing import ActivityEnvironment

    from activities import DunningActivities
    from dunning.cases.experiments import experiment_report
    from dunning.domain.contract import MessageRequest, RegisterCaseRequest
    from dunning.domain.experiments import assign_variant
    from dunning.platform.providers.email import ConsoleEmailProvider
    from dunning.platform.providers.sms import ConsoleSmsProvider
    from tests.helpers import add_customer

    make_account(db, uid, schedule="0s")
    code, _, err = cli("experiment", "sms-template", "--account", uid, "--percent", "50",
                       "--template", "no link here")
    assert code == 1 and "billing_link" in err
    code, out, err = cli("experiment", "sms-template", "--account", uid, "--percent", "50",
                         "--template", "B: {company_name}, {amount} at {billing_link}", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["sms_ab_percent"] == 50
    # One case of each variant (the assignment is a hash of the workflow id).
    wids: dict[str, str] = {}
    n = 0
    while len(wids) < 2:
        wid = f"dunning:{uid}:inv{n}"
        wids.setdefault(str(assign_variant(wid, 50)), wid)
        n += 1
    sms = ConsoleSmsProvider(echo=False)
    acts = DunningActivities(db, sms, ConsoleEmailProvider(echo=False))
    now = datetime.now(UTC)
    texts: dict[str, str] = {}
    for variant, wid in sorted(wids.items()):
        add_customer(db, uid, f"c{variant}", phone=f"+1415555{len(texts) + 1:04d}")
        plan = acts.register_case(RegisterCaseRequest(
            wid, uid, f"c{variant}", wid.rsplit(":", 1)[1], 4900, "USD", now))
        assert plan.sms_variant == variant
        env = ActivityEnvironment()
        env.info = dataclasses.replace(env.info, workflow_run_id=f"r-{variant}", workflow_id=wid)
        result = env.run(acts.send_sms, MessageRequest(
            wid, uid, f"c{variant}", "inv", 1, 1, 4900, "USD", "https://pay.example.com/x",
            now, now))
        assert result.status == "sent"
        texts[variant] = sms.sent[-1].text
    assert texts["B"].startswith("B: Acme Cloud, $49.00 at ")
    assert not texts["A"].startswith("B:") and "$49.00" in texts["A"]
    with db.session() as s:
        report = experiment_report(s, uid)
    assert report is not None and report["sms_template"]["variants"]["B"]["cases"] == 1
    assert cli("experiment", "sms-template", "--account", uid, "--off")[0] == 0
    code, out, _ = cli("account", "show", uid, "--json")
    assert json.loads(out)["sms_ab_test"] is None


def test_report_shows_funnel_and_holdout(cli: Run, db: Database, uid: str, tmp_path) -> None:
    from datetime import UTC, datetime, timedelta

    from dunning.platform.db.models import Case, Message

    make_account(db, uid)
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    with db.session() as s:
        for n, (arm, state) in enumerate([("sms", "recovered"), ("sms", "exhausted"),
                                          ("holdout", "exhausted")]):
            wid = f"dunning:{uid}:inv{n}"
            s.add(Case(workflow_id=wid, account_id=uid, customer_id=f"c{n}",
                       invoice_id=f"inv{n}", amount_due=4900, currency="USD", state=state,
                       failed_at=now, started_at=now, arm=arm,
                       ended_at=now + timedelta(hours=5),
                       recovered_amount=4900 if state == "recovered" else 0))
            if arm == "sms":
                s.add(Message(workflow_id=wid, run_id="r", step=1, channel="sms",
                              account_id=uid, customer_id=f"c{n}", status="sent",
                              delivery_status="delivered", created_at=now + timedelta(hours=1)))
        s.flush()
        s.add(LinkClick(token="t" * 22, account_id=uid, workflow_id=f"dunning:{uid}:inv0",
                        step=1, channel="sms", clicked_at=now + timedelta(hours=2)))
    code, out, err = cli("report", "--account", uid, "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["funnel"] == [{"step": 1, "channel": "sms", "sent": 2, "delivered": 2,
                               "clicked": 1, "recovered": 1, "recovered_after_click": 1,
                               "median_hours_to_recover": 4.0}]
    arms = data["experiment"]["arms"]
    assert (arms["sms"]["ended"], arms["sms"]["recovered"]) == (2, 1)
    assert (arms["holdout"]["ended"], arms["holdout"]["recovered"]) == (1, 0)
    assert arms["sms"]["recovered_amount"]["USD"]["formatted"] == "$49.00"
    assert "Not significant yet" in data["experiment"]["verdict"]
    code, out, _ = cli("report", "--account", uid)
    assert "step 1 sms: 2 sent -> 2 delivered -> 1 clicked -> 1 recovered" in out
    assert "holdout: 1 cases" in out
    page = tmp_path / "r.html"
    assert cli("report", "--account", uid, "--html", str(page))[0] == 0
    text = page.read_text(encoding="utf-8")
    assert "<h2>Funnel</h2>" in text and "<h2>SMS holdout</h2>" in text
