"""Messages customers understand, end to end: a real dev server, Plivo's SDK against the
loopback Plivo, a real SMTP server (aiosmtpd) whose mail is read back with email.parser."""

from __future__ import annotations

from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from html.parser import HTMLParser

from sqlalchemy import select
from temporalio.testing import WorkflowEnvironment

from dunning.platform.db import Database
from dunning.platform.db.models import Account, Customer
from dunning.platform.db.models import Message as MessageRow
from tests.fakes.plivo import FakePlivo
from tests.fakes.smtp import SmtpSink
from tests.helpers import (
    add_customer,
    case_input,
    make_account,
    query_status,
    real_activities,
    running_worker,
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
    ("ja1", "ja", "JPY", 4900, "￥4,900", "didn't go through", "Reply STOP to unsubscribe."),
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
        assert links.lang == {"es": "es", "pt-BR": "pt", "ja": "en", None: "en"}[locale]


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
