"""The console in a real browser (Playwright driving Debian's headless Chromium) against a
running stack: `dunning console` as a process, a worker with the loopback Plivo and SMTP
servers, the Temporal dev server. Controls are found by role and accessible name, as people
using assistive technology find them. Screenshots of each page go to build/screenshots/.

Without /usr/bin/chromium these tests skip with the reason shown, unless CI is set (then they
fail): `.ci/run` installs it (`apt-get install -y chromium`).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from dunning.credits import ledger
from dunning.platform.db import Database
from tests.console_stack import PASSWORD, ConsoleProcess, coded_client, start_console
from tests.fakes.plivo import FakePlivo
from tests.fakes.smtp import SmtpSink
from tests.helpers import make_account, real_activities, running_worker, wait_for

CHROMIUM = "/usr/bin/chromium"
PHONE = "14155552699"  # cus_1's number as the provider sees it
SHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
QUEUE = "console-browser"
CODEC_KEYS = "browser:" + "3c" * 32
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing and CI is set: apt-get install -y chromium",
                    pytrace=False)
    pytest.skip(f"browser tests need {CHROMIUM} (apt-get install -y chromium)",
                allow_module_level=True)

playwright_api = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, sqlite_db: Database,
          temporal_env: WorkflowEnvironment) -> Iterator[ConsoleProcess]:
    tmp = tmp_path_factory.mktemp("browser")
    env = {
        "DUNNING_DATA_DIR": str(tmp),
        "DUNNING_DATABASE_URL": sqlite_db.url,
        "DUNNING_TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "DUNNING_TASK_QUEUE": QUEUE,
        "DUNNING_CODEC_KEYS": CODEC_KEYS,
    }
    yield from start_console(env, tmp)


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    async with playwright_api.async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def _page(browser, stack):
    context = await browser.new_context(base_url=stack.url, accept_downloads=True)
    context.set_default_timeout(20_000)
    return await context.new_page()


async def _sign_in(page, email: str, password: str = PASSWORD) -> None:
    await page.goto("/login")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()


async def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


CSV = (
    "customer_id,phone,email,name\n"
    "cus_1,+14155552699,cus1@example.com,Jane Doe\n"
    "cus_2,12,cus2@example.com,Too Short\n"
    "cus_3,+14155552672,cus3@example.com,Sam Roe\n"
    "cus_4,not a number,cus4@example.com,Bad Number\n"
)


async def test_the_setup_flow_by_clicking(stack, browser, sqlite_db, temporal_env,
                                          plivo_server: FakePlivo, smtp_server: SmtpSink,
                                          uid, tmp_path):
    make_account(sqlite_db, uid, balance=0, sms=False, schedule="0s,1h,2h")
    email = f"admin-{uid}@example.com"
    await _run(stack.add_user, email, uid, "admin")
    page = await _page(browser, stack)

    # sign in: a wrong password first
    await _sign_in(page, email, "not my password")
    await expect(page.get_by_role("alert")).to_contain_text("Wrong email or password")
    await _shot(page, "01-sign-in-error")
    await _sign_in(page, email)
    await expect(page.get_by_role("heading", name="Import phone numbers")).to_be_visible()
    await expect(page.locator("#stripe-configured")).to_have_text("not set")

    # import a CSV with bad rows, read the rejected rows, download them
    csv_file = tmp_path / "customers.csv"
    csv_file.write_text(CSV)
    await page.get_by_label("CSV file").set_input_files(str(csv_file))
    await page.get_by_role("button", name="Upload").click()
    table = page.get_by_role("table", name="Rejected rows")
    await expect(table).to_be_visible()
    await expect(page.get_by_label("Upload progress")).to_have_js_property("value", 100)
    rows = table.locator("tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0)).to_contain_text("3")
    await expect(rows.nth(0)).to_contain_text("cus_2")
    await expect(rows.nth(1)).to_contain_text("cus_4")
    await expect(rows.nth(1)).to_contain_text("not a number")
    await expect(page.locator("#import-result")).to_contain_text("Imported")
    await _shot(page, "02-import-phone-numbers")
    async with page.expect_download() as download_info:
        await page.get_by_role("link", name="Download rejected rows (CSV)").click()
    download = await download_info.value
    saved = tmp_path / "rejected.csv"
    await download.save_as(str(saved))
    lines = saved.read_text().splitlines()
    assert lines[0] == "line,customer_id,phone,reason" and len(lines) == 3
    assert lines[1].startswith("3,cus_2,12,") and lines[2].startswith("5,cus_4,not a number,")

    # SMS settings: switch on, step 2 off, edit the template and watch the preview change
    await page.get_by_role("link", name="SMS settings").click()
    await page.get_by_label("SMS reminders").check()
    await expect(page.get_by_label("Step 1")).to_be_checked()
    await page.get_by_label("Step 2").uncheck()
    template = page.get_by_label("Template")
    await template.fill("{company_name}: your payment of {amount} failed. Pay: {billing_link}")
    await expect(page.locator("#preview-text")).to_contain_text("Acme Cloud: your payment of")
    await expect(page.locator("#preview-encoding")).to_have_text("GSM-7")
    await template.fill("{company_name} ✓ your payment of {amount} failed. Pay: {billing_link}")
    await expect(page.locator("#preview-encoding")).to_have_text("UCS-2")
    await template.fill("{company_name}: pay here {billing_lnk}")
    await expect(page.locator("#template-error")).to_contain_text("billing_lnk")
    await _shot(page, "03-sms-settings-error")
    await template.fill("{company_name}: your payment of {amount} failed. Pay: {billing_link}")
    await expect(page.locator("#preview-credits")).to_have_text("1")
    await page.get_by_role("button", name="Save changes").click()
    await expect(page.get_by_role("status")).to_have_text("Changes saved.")
    await expect(page.get_by_label("Step 2")).not_to_be_checked()
    await expect(page.get_by_label("Step 3")).to_be_checked()
    await _shot(page, "04-sms-settings")

    # email templates per step, the same way
    await page.get_by_role("link", name="Email templates").click()
    await page.get_by_label("Reminder").select_option(label="Step 3")
    await page.get_by_role("button", name="Open").click()
    await page.get_by_label("Subject").fill("Last call: {amount} for {company_name}")
    await expect(page.locator("#email-preview-subject")).to_have_text(
        "Last call: $49.00 for Acme Cloud")
    await page.get_by_label("Body").fill("Hello {first_name}, {days_overdue} days: "
                                         "{billing_link}")
    await expect(page.locator("#email-preview-body")).to_contain_text("Hello Jane, 0 days")
    await page.get_by_role("button", name="Save changes").click()
    await expect(page.get_by_role("status")).to_have_text("Changes saved.")
    await expect(page.locator("main")).to_contain_text("In use now: step 3, plan default")
    await _shot(page, "04b-email-templates")

    # a case starts (by the API, as a billing system would); its SMS waits for credits
    key = await _run(stack.api_key, uid)
    async with httpx.AsyncClient(base_url=f"{stack.url}/api/v1", timeout=30,
                                 headers={"authorization": f"Bearer {key}"}) as api, \
            running_worker(coded_client(temporal_env, CODEC_KEYS), QUEUE,
                           real_activities(sqlite_db, plivo_server, smtp_server)):
        started = await api.post(f"/accounts/{uid}/cases", json={
            "customer_id": "cus_1", "invoice_id": "inv_1", "amount_due": 4900,
            "currency": "USD", "billing_link": "https://pay.example.com/inv_1"})
        assert started.status_code == 201, started.text

        async def paused() -> bool:
            got = (await api.get(f"/accounts/{uid}/cases/inv_1")).json()
            return bool(got["sms_paused"])

        await wait_for(paused, timeout=30)
        await page.get_by_role("link", name="Cases").click()
        await page.get_by_label("SMS paused").select_option("yes")
        await page.get_by_role("button", name="Search").click()
        await expect(page.get_by_role("table", name="Cases")).to_contain_text("inv_1")
        await _shot(page, "05-cases")
        before = len(plivo_server.accepted(PHONE))  # the fake is shared by the session
        assert not [m for m in plivo_server.accepted(PHONE) if "/inv_1" in m.text]  # paused

        # top up: the paused case resumes and its SMS reaches the provider
        await page.get_by_role("link", name="Credits").click()
        await page.get_by_label("Amount").fill("10")
        await page.get_by_role("button", name="Top up").click()
        await expect(page.get_by_role("status")).to_contain_text("Added 10 credits (balance 10)")
        await expect(page.get_by_role("status")).to_contain_text("1 paused case(s) resumed")
        await _shot(page, "06-credits")
        await wait_for(lambda: len(plivo_server.accepted(PHONE)) > before, timeout=30)
        sms = plivo_server.accepted(PHONE)[before:]
        assert len(sms) == 1
        assert sms[0].text.startswith("Acme Cloud: your payment of $49.00 failed. Pay: ")
        with sqlite_db.session() as s:
            assert ledger.balance_of(s, uid) == 9

        # recover the case, with a confirmation
        await page.get_by_role("link", name="Cases").click()
        await page.get_by_role("link", name="inv_1").click()
        await expect(page.get_by_role("table", name="Reminders")).to_contain_text("sms")
        link = page.get_by_role("link", name="Open the workflow in the Temporal UI")
        assert "/workflows/" in (await link.get_attribute("href") or "")
        await page.get_by_role("link", name="Recover…").click()
        await _shot(page, "07-recover-confirm")
        await page.get_by_role("button", name="Yes, mark as recovered").click()
        await expect(page.get_by_role("status")).to_have_text("The case was marked as recovered.")
        await expect(page.locator("#case-state")).to_have_text(
            re.compile("recovered"), timeout=20_000)
        await _shot(page, "08-case")

    await page.get_by_role("link", name="Recovery").click()
    await expect(page.get_by_role("img", name="Outcomes")).to_be_visible()
    await expect(page.get_by_role("img", name="Recoveries by step")).to_contain_text("Step 1")
    await _shot(page, "09-recovery")
    await page.get_by_role("link", name="Compliance").click()
    await page.get_by_label("Sending window (HH:MM-HH:MM in the customer's time zone, or off)"
                            ).fill("09:00-20:00")
    await page.get_by_role("button", name="Save quiet hours").click()
    await expect(page.get_by_role("status")).to_have_text("Quiet hours saved.")
    await _shot(page, "10-compliance")
    await page.get_by_role("link", name="Audit log").click()
    audit = page.get_by_role("table", name="Audit log")
    for action in ("phones.imported", "sms_settings.updated", "email_template.updated",
                   "credits.topped_up",
                   "case.recover", "quiet_hours.updated"):
        await expect(audit).to_contain_text(action)
    await expect(audit).to_contain_text(f"user:{email}")
    await _shot(page, "11-audit-log")


async def test_negative_paths_in_the_browser(stack, browser, sqlite_db, uid):
    make_account(sqlite_db, uid, balance=5, sms=False)
    # the other account's balance: a number the page cannot show by chance (the viewer's own
    # e-mail address and account id carry the random hex uid)
    other_balance = next(n for n in range(7701, 7800) if str(n) not in uid)
    make_account(sqlite_db, uid + "x", balance=other_balance)
    viewer = f"viewer-{uid}@example.com"
    await _run(stack.add_user, viewer, uid, "viewer")
    page = await _page(browser, stack)
    await _sign_in(page, viewer)
    await expect(page.get_by_role("heading", name="Import phone numbers")).to_be_visible()

    # another account's URL: not found, nothing of it shown
    answer = await page.goto(f"/accounts/{uid}x/credits")
    assert answer is not None and answer.status == 404
    await expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    await expect(page.locator("body")).not_to_contain_text(str(other_balance))
    await _shot(page, "20-other-account")

    # a viewer sees no controls that change things, and a forged post is refused
    await page.goto(f"/accounts/{uid}/sms")
    await expect(page.get_by_role("button", name="Save changes")).to_have_count(0)
    await expect(page.get_by_label("SMS reminders")).to_be_disabled()
    await page.goto(f"/accounts/{uid}/credits")
    await expect(page.get_by_label("Amount")).to_have_count(0)
    csrf = await page.locator("body").get_attribute("data-csrf")
    forged = await page.request.post(f"/accounts/{uid}/credits/top-up",
                                     form={"amount": "100", "csrf_token": csrf or ""})
    assert forged.status == 403
    # a post without the CSRF token: refused before anything is read
    no_token = await page.request.post(f"/accounts/{uid}/credits/top-up",
                                       form={"amount": "100"})
    assert no_token.status == 403
    with sqlite_db.session() as s:
        assert ledger.balance_of(s, uid) == 5
    await _shot(page, "21-viewer-credits")


async def _run(fn, *args):
    import asyncio

    return await asyncio.to_thread(fn, *args)
