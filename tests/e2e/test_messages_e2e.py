"""Messages customers understand, end to end: a real dev server, Plivo's SDK against the
loopback Plivo, a real SMTP server (aiosmtpd) whose mail is read back with email.parser."""

from __future__ import annotations

import re
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from html.parser import HTMLParser

from sqlalchemy import select
from starlette.testclient import TestClient
from temporalio.testing import WorkflowEnvironment

from activities import DunningActivities
from dunning.cases.experiments import experiment_report, set_sms_holdout
from dunning.cases.funnel import build_funnel
from dunning.domain.experiments import assign_arm
from dunning.messages.links import TOKEN_LENGTH, signer_for
from dunning.platform.db import Database
from dunning.platform.db.models import Account, Customer
from dunning.platform.db.models import Message as MessageRow
from dunning.platform.providers.email import SmtpEmailProvider
from dunning.platform.providers.sms import ConsoleSmsProvider, PlivoSmsProvider
from dunning.platform.settings import Settings
from dunning.webhooks import create_app
from starter import DunningClient
from tests.fakes.plivo import FakePlivo
from tests.fakes.smtp import SmtpSink
from tests.helpers import (
    add_customer,
    case_input,
    make_account,
    query_status,
    real_activities,
    running_worker,
    wait_for,
)


def _phone(uid: str, n: int) -> str:
    return "+1415555" + str((int(uid, 16) + n * 7919) % 10000).zfill(4)


def _parsed(raw: Message) -> EmailMessage:
    """What the SMTP sink received, through the standard library's parser (modern policy)."""
    msg = BytesParser(policy=policy.default).parsebytes(raw.as_bytes())
    assert isinstance(msg, EmailMessage)
    return msg


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.tags: set[str] = set()
        self.lang = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.hrefs.append(str(a["href"]))
        if tag == "html":
            self.lang = str(a.get("lang"))


CASES = [
    # (customer, locale, currency, amount, amount as written, words of the SMS, opt-out line)
    ("es1", "es", "EUR", 4900, "49,00 €", "no pudimos cobrar", "Responde STOP para darte de baja."),
    ("pt1", "pt-BR", "BRL", 4900, "R$ 49,00", "forma de pagamento", "Responda STOP para cancelar."),
    ("ja1", "ja", "JPY", 4900, "￥4,900", "お支払いが完了しませんでした",
     "配信停止はSTOPと返信してください。"),
    ("en1", None, "USD", 4900, "$49.00", "didn't go through", "Reply STOP to unsubscribe."),
]


async def test_customers_get_their_language_and_amounts(
    temporal_env: WorkflowEnvironment, db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    account, queue = f"loc-{uid}", f"q-{uid}"
    make_account(db, account, schedule="0s", grace="1s", balance=20)
    with db.session() as s:
        s.get_one(Account, account).track_links = False
    for n, (cid, locale, *_rest) in enumerate(CASES):
        add_customer(db, account, cid, phone=_phone(uid, n), email=f"{cid}-{uid}@example.com")
        with db.session() as s:
            s.get_one(Customer, (account, cid)).locale = locale
    acts = real_activities(db, plivo_server, smtp_server)
    client = temporal_env.client
    async with running_worker(client, queue, acts):
        handles = []
        for cid, _locale, currency, amount, *_ in CASES:
            handles.append(await client.start_workflow(
                "DunningWorkflow",
                case_input(account, f"inv-{cid}", cid, currency=currency, amount_due=amount),
                id=f"dunning:{account}:inv-{cid}", task_queue=queue,
            ))
        for h in handles:
            assert (await h.result())["outcome"] == "exhausted"
    for n, (cid, locale, _cur, _amt, written, words, opt_out) in enumerate(CASES):
        texts = [m.text for m in plivo_server.accepted(_phone(uid, n).lstrip("+"))]
        assert len(texts) == 1, cid
        assert written in texts[0] and words in texts[0], texts[0]
        assert texts[0].endswith(opt_out), texts[0]
        if cid == "ja1":
            assert "4,900.00" not in texts[0] and "49.00" not in texts[0]  # JPY: no decimals
        mails = smtp_server.to(f"{cid}-{uid}@example.com")
        assert len(mails) == 1
        msg = _parsed(mails[0])
        assert msg.get_content_type() == "multipart/alternative"
        text_part, html_part = msg.get_body(("plain",)), msg.get_body(("html",))
        assert text_part is not None and html_part is not None
        text, html = text_part.get_content(), html_part.get_content()
        assert written in msg["Subject"] or written in text
        assert written in text and written in html
        link = f"https://pay.example.com/inv-{cid}"
        assert link in text
        links = _Links()
        links.feed(html)
        assert link in links.hrefs  # the button
        assert "img" not in links.tags and "script" not in links.tags
        assert links.lang == {"es": "es", "pt-BR": "pt", "ja": "ja", None: "en"}[locale]


async def test_smtp_permanent_failure_is_recorded_and_sms_goes_on(
    temporal_env: WorkflowEnvironment, db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    account, queue = f"smtp-{uid}", f"q-{uid}"
    phone = _phone(uid, 9)
    email = f"bounce-{uid}@example.com"
    make_account(db, account, schedule="0s,1s", grace="1s", balance=10)
    add_customer(db, account, "c1", phone=phone, email=email)
    smtp_server.reject.add(email)  # 550 at RCPT
    acts = real_activities(db, plivo_server, smtp_server)
    client = temporal_env.client
    async with running_worker(client, queue, acts):
        handle = await client.start_workflow(
            "DunningWorkflow", case_input(account, "inv1", "c1"),
            id=f"dunning:{account}:inv1", task_queue=queue,
        )
        result = await handle.result()
        status = await query_status(handle)
    assert result["emails_sent"] == 0 and result["sms_sent"] == 2
    assert len(plivo_server.accepted(phone.lstrip("+"))) == 2
    emails = [r for r in status["reminders"] if r["channel"] == "email"]
    assert [r["status"] for r in emails] == ["failed", "failed"]
    assert all("550" in r["reason"] and "mailbox unavailable" in r["reason"] for r in emails)
    with db.session() as s:
        rows = s.scalars(select(MessageRow).where(MessageRow.account_id == account,
                                                  MessageRow.channel == "email")).all()
    assert [r.status for r in rows] == ["failed", "failed"]
    assert all(r.reason and r.reason.startswith("recipient refused: 550") for r in rows)
    assert all(email not in (r.reason or "") for r in rows)  # no address in the record


PUBLIC = "https://dunning.example.net"
KEYS = "k1:" + "ab" * 32


def _tracking_activities(db: Database, plivo: FakePlivo, smtp: SmtpSink,
                         settings: Settings) -> DunningActivities:
    return DunningActivities(
        db, PlivoSmsProvider(plivo.auth_id, plivo.auth_token, plivo.url, timeout=5),
        SmtpEmailProvider("127.0.0.1", smtp.port), public_url=PUBLIC,
        links=signer_for(settings),
    )


async def _no_temporal() -> DunningClient:
    raise AssertionError("short links need no Temporal client")


async def test_a_click_on_a_short_link_is_counted_in_the_funnel(
    temporal_env: WorkflowEnvironment, db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    account, queue = f"lnk-{uid}", f"q-{uid}"
    phone = _phone(uid, 11)
    settings = Settings(database_url=db.url, public_url=PUBLIC, codec_keys=KEYS,
                        task_queue=queue)
    make_account(db, account, schedule="0s,30s", grace="1s", balance=10)
    add_customer(db, account, "c1", phone=phone, email=f"lnk-{uid}@example.com")
    acts = _tracking_activities(db, plivo_server, smtp_server, settings)
    client = temporal_env.client
    app = create_app(settings, db, sms_provider=ConsoleSmsProvider(echo=False),
                     temporal=_no_temporal)
    async with running_worker(client, queue, acts):
        handle = await client.start_workflow(
            "DunningWorkflow", case_input(account, "inv1", "c1"),
            id=f"dunning:{account}:inv1", task_queue=queue,
        )

        async def sms_sent() -> bool:
            return len(plivo_server.accepted(phone.lstrip("+"))) == 1 and bool(
                smtp_server.to(f"lnk-{uid}@example.com"))

        await wait_for(sms_sent, timeout=20)
        text = plivo_server.accepted(phone.lstrip("+"))[0].text
        found = re.search(re.escape(PUBLIC) + r"/l/([A-Za-z0-9_-]+)", text)
        assert found is not None, text
        token = found.group(1)
        assert len(token) == TOKEN_LENGTH
        assert "pay.example.com" not in text and "inv1" not in token and uid not in token
        mail = _parsed(smtp_server.to(f"lnk-{uid}@example.com")[0])
        html_part = mail.get_body(("html",))
        assert html_part is not None
        email_token = re.search(re.escape(PUBLIC) + r"/l/([A-Za-z0-9_-]+)",
                                html_part.get_content())
        assert email_token is not None and email_token.group(1) != token  # per channel
        with TestClient(app) as web:
            forged = token[:-1] + ("A" if token[-1] != "A" else "B")
            assert web.get(f"/l/{forged}", follow_redirects=False).status_code == 404
            assert web.get("/l/short", follow_redirects=False).status_code == 404
            r = web.get(f"/l/{token}", follow_redirects=False)
            assert r.status_code == 303
            assert r.headers["location"] == "https://pay.example.com/inv1"
        await handle.signal("payment_recovered")
        assert (await handle.result())["outcome"] == "recovered"
    with db.session() as s:
        funnel = {(r["step"], r["channel"]): r for r in build_funnel(s, account)}
    sms = funnel[(1, "sms")]
    assert (sms["sent"], sms["clicked"], sms["recovered"], sms["recovered_after_click"]) == (
        1, 1, 1, 1)
    assert sms["median_hours_to_recover"] is not None
    assert funnel[(1, "email")]["clicked"] == 0
    assert (2, "sms") not in funnel  # never sent: the case was recovered first


async def test_holdout_cases_get_email_only_and_show_their_arm(
    temporal_env: WorkflowEnvironment, db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    account, queue = f"hld-{uid}", f"q-{uid}"
    make_account(db, account, schedule="0s", grace="1s", balance=10)
    with db.session() as s:
        set_sms_holdout(s, account, 50)
    invoices: dict[str, str] = {}
    n = 0
    while len(invoices) < 2:  # one case of each arm (the assignment is a pure hash)
        arm = assign_arm(f"dunning:{account}:inv{n}", 50)
        assert arm is not None
        invoices.setdefault(arm, f"inv{n}")
        n += 1
    phones = {arm: _phone(uid, 20 + i) for i, arm in enumerate(sorted(invoices))}
    for arm in invoices:
        add_customer(db, account, f"c-{arm}", phone=phones[arm],
                     email=f"{arm}-{uid}@example.com")
    acts = real_activities(db, plivo_server, smtp_server)
    client = temporal_env.client
    async with running_worker(client, queue, acts):
        statuses = {}
        for arm, inv in invoices.items():
            handle = await client.start_workflow(
                "DunningWorkflow", case_input(account, inv, f"c-{arm}"),
                id=f"dunning:{account}:{inv}", task_queue=queue,
            )
            await handle.result()
            statuses[arm] = await query_status(handle)
    assert statuses["holdout"]["experiment"] == {"sms_holdout": "holdout", "sms_template": None}
    assert statuses["sms"]["experiment"] == {"sms_holdout": "sms", "sms_template": None}
    held = [r for r in statuses["holdout"]["reminders"] if r["channel"] == "sms"]
    assert held[0]["status"] == "skipped" and "holdout" in held[0]["reason"]
    assert plivo_server.accepted(phones["holdout"].lstrip("+")) == []
    assert len(plivo_server.accepted(phones["sms"].lstrip("+"))) == 1
    assert len(smtp_server.to(f"holdout-{uid}@example.com")) == 1  # email still goes
    with db.session() as s:
        report = experiment_report(s, account)
    assert report is not None
    assert report["arms"]["holdout"]["cases"] == 1 and report["arms"]["sms"]["cases"] == 1


def _zone_where_it_is_20h() -> str:
    """An Etc/GMT zone whose wall clock reads 20:xx right now."""
    from datetime import UTC, datetime

    off = (20 - datetime.now(UTC).hour) % 24
    if off > 14:
        off -= 24
    return "Etc/UTC" if off == 0 else (f"Etc/GMT-{off}" if off > 0 else f"Etc/GMT+{-off}")


async def test_a_florida_number_at_20h_waits_and_status_shows_the_window(
    temporal_env: WorkflowEnvironment, db: Database, plivo_server: FakePlivo,
    smtp_server: SmtpSink, uid: str,
) -> None:
    account, queue = f"fl-{uid}", f"q-{uid}"
    phone = "+1305555" + str(int(uid, 16) % 10000).zfill(4)  # a Miami number
    make_account(db, account, schedule="0s", grace="1h", balance=10, quiet_hours="08:00-21:00")
    add_customer(db, account, "c1", phone=phone, time_zones=_zone_where_it_is_20h())
    acts = real_activities(db, plivo_server, smtp_server)
    client = temporal_env.client
    async with running_worker(client, queue, acts):
        handle = await client.start_workflow(
            "DunningWorkflow", case_input(account, "inv1", "c1"),
            id=f"dunning:{account}:inv1", task_queue=queue,
        )

        async def held() -> bool:
            st = await query_status(handle)
            return any(r["channel"] == "sms" and "Florida law" in r["reason"]
                       for r in st["reminders"])

        await wait_for(held, timeout=20)
        status = await query_status(handle)
        sms = next(r for r in status["reminders"] if r["channel"] == "sms")
        assert sms["status"] == "pending"
        assert "window 08:00-20:00, Florida law allows 08:00-20:00" in sms["reason"]
        assert "step 1 held until" in status["waiting_for"]
        assert plivo_server.accepted(phone.lstrip("+")) == []
        await handle.signal("cancel")
        assert (await handle.result())["sms_sent"] == 0
