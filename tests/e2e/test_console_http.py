"""The console and API as a real `dunning console` process, attacked and driven over HTTP:
sign-in, lock-out, CSRF, per-account isolation, viewers, cookies, the API end to end."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from dunning.credits import ledger
from dunning.platform.db import Database
from dunning.platform.db.models import AuditEntry, Customer
from tests.console_stack import (
    DUNNING,
    PASSWORD,
    ConsoleProcess,
    coded_client,
    csrf_of,
    page_csrf,
    sign_in,
    start_console,
)
from tests.fakes.plivo import FakePlivo
from tests.fakes.smtp import SmtpSink
from tests.helpers import add_customer, make_account, real_activities, running_worker, wait_for

QUEUE = "console-http"
CODEC_KEYS = "console:" + "5a" * 32


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, sqlite_db: Database,
          temporal_env: WorkflowEnvironment) -> Iterator[ConsoleProcess]:
    tmp = tmp_path_factory.mktemp("console")
    env = {
        "DUNNING_DATA_DIR": str(tmp),
        "DUNNING_DATABASE_URL": sqlite_db.url,
        "DUNNING_TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "DUNNING_TASK_QUEUE": QUEUE,
        "DUNNING_CODEC_KEYS": CODEC_KEYS,
    }
    yield from start_console(env, tmp)


def _setup(db: Database, stack: ConsoleProcess, uid: str, role: str = "operator") -> str:
    make_account(db, uid, balance=0, sms=False, schedule="0s,1h,2h")
    email = f"{role}-{uid}@example.com"
    stack.add_user(email, uid, role)
    return email


def _balance(db: Database, account: str) -> int:
    with db.session() as s:
        return ledger.balance_of(s, account)


def test_pages_need_a_session(stack):
    answer = httpx.get(f"{stack.url}/accounts/x/credits")
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
    answer = httpx.post(f"{stack.url}/accounts/x/credits/top-up", data={"amount": "5"})
    assert answer.status_code == 403


def test_wrong_password_then_lock_out(stack, sqlite_db, uid):
    email = _setup(sqlite_db, stack, uid)
    client = httpx.Client(base_url=stack.url)
    for attempt in range(5):
        token = csrf_of(client.get("/login").text)
        answer = client.post("/login", data={"csrf_token": token, "email": email,
                                             "password": "not the password"})
        assert answer.status_code == 401
        expected = "Wrong email or password." if attempt < 4 else "Too many failed sign-ins"
        assert expected in answer.text
        assert "dunning_session" not in answer.headers.get("set-cookie", "")
    token = csrf_of(client.get("/login").text)
    answer = client.post("/login", data={"csrf_token": token, "email": email,
                                         "password": PASSWORD})
    assert answer.status_code == 401 and "Too many failed sign-ins" in answer.text


def test_sign_in_without_the_form_token_is_refused(stack, sqlite_db, uid):
    email = _setup(sqlite_db, stack, uid)
    answer = httpx.post(f"{stack.url}/login", data={"email": email, "password": PASSWORD})
    assert answer.status_code == 403


def test_session_cookie_flags(stack, sqlite_db, uid):
    email = _setup(sqlite_db, stack, uid)
    client = httpx.Client(base_url=stack.url)
    token = csrf_of(client.get("/login").text)
    answer = client.post("/login", data={"csrf_token": token, "email": email,
                                         "password": PASSWORD})
    cookie = answer.headers["set-cookie"]
    assert "dunning_session=" in cookie and "HttpOnly" in cookie
    assert "samesite=lax" in cookie.lower() and "Secure" not in cookie  # plain http here
    assert answer.headers["x-frame-options"] == "DENY"


def test_a_post_without_csrf_token_changes_nothing(stack, sqlite_db, uid):
    email = _setup(sqlite_db, stack, uid)
    client = sign_in(stack.url, email)
    answer = client.post(f"/accounts/{uid}/credits/top-up", data={"amount": "50"})
    assert answer.status_code == 403
    answer = client.post(f"/accounts/{uid}/credits/top-up",
                         data={"amount": "50", "csrf_token": "forged"})
    assert answer.status_code == 403
    assert _balance(sqlite_db, uid) == 0
    csrf = page_csrf(client, f"/accounts/{uid}/credits")
    answer = client.post(f"/accounts/{uid}/credits/top-up",
                         data={"amount": "50", "csrf_token": csrf})
    assert answer.status_code == 200 and _balance(sqlite_db, uid) == 50


def test_another_accounts_urls_are_not_found(stack, sqlite_db, uid):
    email = _setup(sqlite_db, stack, uid)
    other = uid + "o"
    make_account(sqlite_db, other, balance=7)
    client = sign_in(stack.url, email)
    csrf = page_csrf(client, f"/accounts/{uid}/credits")
    for path in ("credits", "sms", "email", "import", "cases", "recovery", "compliance", "audit",
                 "credits/ledger.csv", "cases/inv1"):
        answer = client.get(f"/accounts/{other}/{path}")
        assert answer.status_code == 404, path
        assert "7 credits" not in answer.text
    assert client.get("/accounts/no-such-account/credits").status_code == 404
    answer = client.post(f"/accounts/{other}/credits/top-up",
                         data={"amount": "5", "csrf_token": csrf})
    assert answer.status_code == 404 and _balance(sqlite_db, other) == 7


def test_a_viewer_cannot_change_anything(stack, sqlite_db, uid):
    email = _setup(sqlite_db, stack, uid, role="viewer")
    client = sign_in(stack.url, email)
    csrf = page_csrf(client, f"/accounts/{uid}/credits")
    attempts = [
        ("credits/top-up", {"amount": "5"}),
        ("credits/auto-refill", {"threshold": "5", "refill_amount": "10"}),
        ("sms", {"sms_enabled": "on", "template": "{billing_link}"}),
        ("compliance", {"quiet_hours": "off", "timezone": "UTC"}),
        ("email", {"step": "1", "subject": "s", "body": "{billing_link}"}),
        ("cases/inv1/recover", {}),
    ]
    for path, data in attempts:
        answer = client.post(f"/accounts/{uid}/{path}", data={**data, "csrf_token": csrf})
        assert answer.status_code == 403, path
    files = {"file": ("p.csv", b"customer_id,phone\nc1,+14155552671\n", "text/csv")}
    answer = client.post(f"/accounts/{uid}/import", data={"csrf_token": csrf}, files=files)
    assert answer.status_code == 403
    assert _balance(sqlite_db, uid) == 0
    with sqlite_db.session() as s:
        assert s.get(Customer, (uid, "c1")) is None
        assert not s.query(AuditEntry).filter(AuditEntry.account_id == uid,
                                              AuditEntry.actor.like("user:%")).count()
    assert client.get(f"/accounts/{uid}/sms").status_code == 200  # reading is fine


def test_changes_are_audited_with_who_and_what(stack, sqlite_db, uid):
    email = _setup(sqlite_db, stack, uid)
    client = sign_in(stack.url, email)
    csrf = page_csrf(client, f"/accounts/{uid}/sms")
    answer = client.post(f"/accounts/{uid}/sms", data={
        "csrf_token": csrf, "sms_enabled": "on", "step_1": "on", "step_3": "on",
        "template": "{company_name}: pay at {billing_link}"})
    assert answer.status_code == 200 and "Changes saved." in answer.text
    page = client.get(f"/accounts/{uid}/audit").text
    assert f"user:{email}" in page and "sms_settings.updated" in page


def test_secure_cookie_behind_https_public_url(tmp_path, sqlite_db, temporal_env, uid):
    env = {"DUNNING_DATA_DIR": str(tmp_path), "DUNNING_DATABASE_URL": sqlite_db.url,
           "DUNNING_PUBLIC_URL": "https://dunning.example.com"}
    for stack in start_console(env, tmp_path):
        email = _setup(sqlite_db, stack, uid)
        form = httpx.get(f"{stack.url}/login")
        assert "Secure" in form.headers["set-cookie"]
        # Behind a TLS proxy the browser sees https and sends the Secure cookie back.
        login_cookie = form.headers["set-cookie"].split(";")[0]
        answer = httpx.post(f"{stack.url}/login", headers={"cookie": login_cookie},
                            data={"csrf_token": csrf_of(form.text), "email": email,
                                  "password": PASSWORD})
        assert answer.status_code == 303
        session_cookie = next(c for c in answer.headers.get_list("set-cookie")
                              if c.startswith("dunning_session="))
        assert "Secure" in session_cookie and "HttpOnly" in session_cookie


# --- the API -----------------------------------------------------------------------------------


def _api(stack: ConsoleProcess, key: str) -> httpx.Client:
    return httpx.Client(base_url=f"{stack.url}/api/v1", timeout=30,
                        headers={"authorization": f"Bearer {key}"})


def test_api_authenticates_first_and_isolates_accounts(stack, sqlite_db, uid):
    make_account(sqlite_db, uid, balance=3)
    make_account(sqlite_db, uid + "o", balance=9)
    key = stack.api_key(uid)
    anonymous = httpx.get(f"{stack.url}/api/v1/accounts/{uid}/credits")
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == "application/problem+json"
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.get(f"{stack.url}/api/v1/accounts/{uid}/credits",
                      headers={"authorization": f"Bearer {key[:-2]}xx"})
    assert wrong.status_code == 401
    api = _api(stack, key)
    assert api.get(f"/accounts/{uid}/credits").json()["balance"] == 3
    other = api.get(f"/accounts/{uid}o/credits")
    assert other.status_code == 404 and other.json()["status"] == 404
    assert "9" not in other.text
    top = api.post(f"/accounts/{uid}o/credits/top-ups", json={"amount": 5})
    assert top.status_code == 404 and _balance(sqlite_db, uid + "o") == 9


def test_api_settings_import_customer_preview_and_errors(stack, sqlite_db, uid):
    make_account(sqlite_db, uid, balance=0, sms=False, schedule="0d,3d")
    api = _api(stack, stack.api_key(uid))
    bad = api.patch(f"/accounts/{uid}/sms-settings", json={"template": "no link"})
    assert bad.status_code == 422 and bad.json()["field"] == "template"
    assert bad.headers["content-type"] == "application/problem+json"
    done = api.patch(f"/accounts/{uid}/sms-settings",
                     json={"sms_enabled": True, "steps": {"2": False},
                           "template": "{company_name} {billing_link}"})
    assert done.status_code == 200
    assert [s["sms"] for s in done.json()["steps"]] == [True, False]
    preview = api.post(f"/accounts/{uid}/sms-settings/preview", json={}).json()
    assert preview["encoding"] == "GSM-7" and preview["text"].startswith("Acme Cloud https://")
    preview = api.post(f"/accounts/{uid}/sms-settings/preview",
                       json={"template": "Ünïcode ✓ {billing_link}"}).json()
    assert preview["encoding"] == "UCS-2"
    csv = b"customer_id,phone\nc1,+14155552671\nc2,123\n"
    report = api.post(f"/accounts/{uid}/phone-imports", content=csv,
                      headers={"content-type": "text/csv"}).json()
    assert report["imported"] == 1 and report["rejected"] == 1
    assert report["errors"][0]["line"] == 3 and report["errors"][0]["phone"] == "123"
    broken = api.post(f"/accounts/{uid}/phone-imports", content=b"\x00\x01binary",
                      headers={"content-type": "text/csv"})
    assert broken.status_code == 422
    put = api.put(f"/accounts/{uid}/customers/c9", json={"phone": "+14155552672",
                                                         "name": "Jo"})
    assert put.json()["outcome"] == "imported"
    bad_phone = api.put(f"/accounts/{uid}/customers/c9", json={"phone": "12"})
    assert bad_phone.status_code == 422 and bad_phone.json()["field"] == "phone"
    with sqlite_db.session() as s:
        row = s.get(Customer, (uid, "c9"))
        assert row is not None and row.phone_e164 == "+14155552672"
    assert api.post(f"/accounts/{uid}/credits/top-ups", content=b"{not json",
                    headers={"content-type": "application/json"}).status_code == 400
    report_json = api.get(f"/accounts/{uid}/report").json()
    assert report_json["account_id"] == uid and "recovery_rate" in report_json


def test_api_top_up_honours_the_idempotency_key(stack, sqlite_db, uid):
    make_account(sqlite_db, uid, balance=0)
    api = _api(stack, stack.api_key(uid))
    path = f"/accounts/{uid}/credits/top-ups"
    first = api.post(path, json={"amount": 30}, headers={"Idempotency-Key": "order-1"}).json()
    again = api.post(path, json={"amount": 30}, headers={"Idempotency-Key": "order-1"}).json()
    assert (first["balance"], first["duplicate"]) == (30, False)
    assert (again["balance"], again["duplicate"]) == (30, True)
    clash = api.post(path, json={"amount": 31}, headers={"Idempotency-Key": "order-1"})
    assert clash.status_code == 422
    assert api.post(path, json={"amount": 0}).status_code == 422
    assert api.post(path, json={"amount": "5"}).status_code == 422
    assert _balance(sqlite_db, uid) == 30


async def test_api_cases_start_status_recover_cancel(stack, sqlite_db, temporal_env,
                                                     plivo_server: FakePlivo,
                                                     smtp_server: SmtpSink, uid):
    make_account(sqlite_db, uid, balance=10, schedule="0s,1h,2h")
    add_customer(sqlite_db, uid, "cus_1", email=f"api{uid}@example.com")
    key = await asyncio.to_thread(stack.api_key, uid)
    acts = real_activities(sqlite_db, plivo_server, smtp_server)
    async with httpx.AsyncClient(base_url=f"{stack.url}/api/v1", timeout=30,
                                 headers={"authorization": f"Bearer {key}"}) as api, \
            running_worker(coded_client(temporal_env, CODEC_KEYS), QUEUE, acts):
        body = {"customer_id": "cus_1", "invoice_id": "inv_1", "amount_due": 4900,
                "currency": "usd", "billing_link": "https://pay.example.com/inv_1"}
        started = await api.post(f"/accounts/{uid}/cases", json=body)
        assert started.status_code == 201, started.text
        again = await api.post(f"/accounts/{uid}/cases", json=body)
        assert again.status_code == 200 and again.json()["started"] is False

        async def first_sent() -> bool:
            got = await api.get(f"/accounts/{uid}/cases/inv_1")
            return any(r["status"] == "sent" for r in got.json()["reminders"])

        await wait_for(first_sent)
        recovered = await api.post(f"/accounts/{uid}/cases/inv_1/recover", json={})
        assert recovered.json()["ok"] is True

        async def is_recovered() -> bool:
            got = await api.get(f"/accounts/{uid}/cases/inv_1")
            return bool(got.json()["state"] == "recovered")

        await wait_for(is_recovered)
        body2 = {**body, "invoice_id": "inv_2"}
        assert (await api.post(f"/accounts/{uid}/cases", json=body2)).status_code == 201
        canceled = await api.post(f"/accounts/{uid}/cases/inv_2/cancel", json={"reason": "x"})
        assert canceled.status_code == 200

        async def is_canceled() -> bool:
            got = await api.get(f"/accounts/{uid}/cases/inv_2")
            return bool(got.json()["state"] == "canceled")

        await wait_for(is_canceled)
        missing = await api.get(f"/accounts/{uid}/cases/nope")
        assert missing.status_code == 404
        bad = await api.post(f"/accounts/{uid}/cases", json={**body, "amount_due": "49"})
        assert bad.status_code == 422 and bad.json()["field"] == "amount_due"


def test_openapi_document_matches_the_routes(stack):
    doc = httpx.get(f"{stack.url}/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    ops = {op["operationId"]: (method, path) for path, item in doc["paths"].items()
           for method, op in item.items() if method != "parameters"}
    for name in ("getAccount", "updateSmsSettings", "previewSms", "importPhones",
                 "upsertCustomer", "getBalance", "topUp", "startCase", "getCase",
                 "recoverCase", "cancelCase", "getReport"):
        assert name in ops
    for method, path in ops.values():  # every documented operation exists and authenticates
        url = f"{stack.url}/api/v1" + path.replace("{account_id}", "a").replace(
            "{invoice_id}", "i").replace("{customer_id}", "c")
        answer = httpx.request(method.upper(), url)
        assert answer.status_code == 401, (method, path, answer.status_code)
        assert json.loads(answer.text)["status"] == 401


def test_data_dir_secret_is_private(stack):
    secret = Path(stack.env["DUNNING_DATA_DIR"]) / "console-secret"
    assert secret.exists() and oct(secret.stat().st_mode & 0o777) == "0o600"


def test_api_update_account_and_revoked_keys(stack, sqlite_db, uid):
    make_account(sqlite_db, uid, balance=0)
    key = stack.api_key(uid)
    api = _api(stack, key)
    changed = api.patch(f"/accounts/{uid}", json={"schedule": "0d,2d", "quiet_hours": "off",
                                                   "company_name": "Acme Two"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["schedule"] == "0d,2d" and changed.json()["company_name"] == "Acme Two"
    bad = api.patch(f"/accounts/{uid}", json={"schedule": "soon"})
    assert bad.status_code == 422 and bad.json()["field"] == "schedule"
    unknown = api.patch(f"/accounts/{uid}", json={"credit_balance": 10**6})
    assert unknown.status_code == 422 and unknown.json()["field"] == "credit_balance"
    assert api.get(f"/accounts/{uid}").json()["credit_balance"] == 0
    key_id = key.split("_")[1]
    listed = stack.dunning("api-keys", "list", "--account", uid, "--json")
    assert json.loads(listed.stdout)["keys"][0]["key_id"] == key_id
    assert key not in listed.stdout
    revoked = stack.dunning("api-keys", "revoke", key_id, "--account", uid)
    assert revoked.returncode == 0, revoked.stderr
    assert api.get(f"/accounts/{uid}").status_code == 401
    other = stack.dunning("api-keys", "revoke", key_id, "--account", uid + "zz")
    assert other.returncode == 1 and "Traceback" not in other.stderr


def test_users_add_reads_the_password_from_stdin_and_refuses_bad_input(stack, sqlite_db, uid):
    make_account(sqlite_db, uid, balance=0)
    short = stack.dunning("users", "add", f"u{uid}@example.com", "--account", uid, "--role",
                          "admin", stdin="short\n")
    assert short.returncode == 1 and "password" in short.stderr
    assert len([ln for ln in short.stderr.splitlines() if ln.strip()]) == 1
    role = stack.dunning("users", "add", f"u{uid}@example.com", "--account", uid, "--role",
                         "owner", stdin=PASSWORD + "\n")
    assert role.returncode == 1 and "role" in role.stderr
    done = stack.dunning("users", "add", f"u{uid}@example.com", "--account", uid, "--role",
                         "viewer", "--json", stdin=PASSWORD + "\n")
    assert done.returncode == 0 and json.loads(done.stdout)["role"] == "viewer"
    assert PASSWORD not in done.stdout + done.stderr
    sign_in(stack.url, f"u{uid}@example.com")  # works


def test_user_data_is_escaped_in_pages(stack, sqlite_db, uid):
    email = _setup(sqlite_db, stack, uid)
    client = sign_in(stack.url, email)
    csrf = page_csrf(client, f"/accounts/{uid}/import")
    evil = "<img src=x onerror=alert(1)>"
    files = {"file": ("p.csv", f"customer_id,phone\n{evil},{evil}\n".encode(), "text/csv")}
    answer = client.post(f"/accounts/{uid}/import", data={"csrf_token": csrf}, files=files)
    assert answer.status_code == 200
    assert evil not in answer.text and "&lt;img src=x onerror=alert(1)&gt;" in answer.text
    assert "script-src 'self'" in answer.headers["content-security-policy"]


def test_an_oversized_sign_in_form_is_refused_unread(stack):
    answer = httpx.post(f"{stack.url}/login", content=b"email=" + b"a" * 100_000,
                        headers={"content-type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 413


def test_auto_refill_from_the_credits_page(stack, sqlite_db, uid):
    email = _setup(sqlite_db, stack, uid)  # balance 0
    client = sign_in(stack.url, email)
    csrf = page_csrf(client, f"/accounts/{uid}/credits")
    bad = client.post(f"/accounts/{uid}/credits/auto-refill",
                      data={"csrf_token": csrf, "threshold": "ten", "refill_amount": "50"})
    assert bad.status_code == 422 and "whole number" in bad.text
    done = client.post(f"/accounts/{uid}/credits/auto-refill",
                       data={"csrf_token": csrf, "threshold": "10", "refill_amount": "50"})
    assert done.status_code == 200 and "Auto-refill saved." in done.text
    # the balance (0) was below the threshold: one refill of 50 went through at once
    assert "A refill of 50 credits went through." in done.text
    assert _balance(sqlite_db, uid) == 50
    off = client.post(f"/accounts/{uid}/credits/auto-refill",
                      data={"csrf_token": csrf, "off": "on"})
    assert "Auto-refill is off." in off.text
    from dunning.platform.db.models import Account

    with sqlite_db.session() as s:
        account = s.get(Account, uid)
        assert account is not None and account.auto_refill_threshold is None


def test_console_start_errors_are_one_line(stack, tmp_path):
    secret = "too-short-secret"
    env = {**stack.env, "DUNNING_DATA_DIR": str(tmp_path)}

    def run(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DUNNING, "console"], env={**os.environ, **env, **extra},
                              capture_output=True, text=True, timeout=60)

    short = run({"DUNNING_CONSOLE_SECRET": secret})
    assert short.returncode == 1 and "DUNNING_CONSOLE_SECRET" in short.stderr
    assert secret not in short.stderr  # a secret is never echoed
    busy = run({})  # the stack's own port
    assert busy.returncode == 1
    lines = [ln for ln in busy.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "DUNNING_CONSOLE_PORT" in lines[0], busy.stderr


def test_api_undocumented_methods_get_405_with_allow(stack, sqlite_db, uid):
    make_account(sqlite_db, uid, balance=0)
    api = _api(stack, stack.api_key(uid))
    answer = api.request("DELETE", f"/accounts/{uid}")
    assert answer.status_code == 405 and answer.headers["allow"] == "GET, PATCH"
    assert answer.headers["content-type"] == "application/problem+json"
    # the empty values of a customer are "not given", as an empty CSV cell
    first = api.put(f"/accounts/{uid}/customers/c1", json={"phone": "+14155552671",
                                                           "name": "Jo"})
    assert first.json()["outcome"] == "imported"
    again = api.put(f"/accounts/{uid}/customers/c1", json={"phone": "", "name": ""})
    assert again.json()["outcome"] == "unchanged"


def test_dunning_up_serves_the_console(tmp_path, sqlite_db, temporal_env):
    import signal
    import time

    from tests.fakes.smtp import free_port

    console_port, http_port = free_port(), free_port()
    env = {**os.environ, "DUNNING_DATA_DIR": str(tmp_path),
           "DUNNING_DATABASE_URL": sqlite_db.url,
           "DUNNING_TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
           "DUNNING_TASK_QUEUE": "console-up", "DUNNING_HTTP_PORT": str(http_port),
           "DUNNING_CONSOLE_PORT": str(console_port), "DUNNING_CODEC_KEYS": CODEC_KEYS}
    with (tmp_path / "up.log").open("wb") as log:
        proc = subprocess.Popen([DUNNING, "up"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{console_port}/login", timeout=1
                             ).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{http_port}/healthz").status_code == 200
        said = " ".join((tmp_path / "up.log").read_text().split())  # rich wraps lines
        assert f"console on http://127.0.0.1:{console_port}" in said
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_per_plan_sms_templates_from_the_page(stack, sqlite_db, uid):
    from dunning.accounts import messaging

    email = _setup(sqlite_db, stack, uid)
    client = sign_in(stack.url, email)
    csrf = page_csrf(client, f"/accounts/{uid}/sms?plan=pro")
    saved = client.post(f"/accounts/{uid}/sms", data={
        "csrf_token": csrf, "plan": "pro", "sms_enabled": "on", "step_1": "on",
        "template": "Pro: {company_name} {billing_link}"})
    assert saved.status_code == 200 and "Changes saved." in saved.text
    with sqlite_db.session() as s:
        assert messaging.sms_template_source(s, uid, "pro") == (
            "Pro: {company_name} {billing_link}", "plan")
        assert messaging.sms_template_source(s, uid, None)[1] == "built-in"
    page = client.get(f"/accounts/{uid}/sms?plan=pro").text
    assert "Pro: {company_name} {billing_link}" in page and "Template in use: plan" in page
    refused = client.post(f"/accounts/{uid}/sms", data={
        "csrf_token": csrf, "plan": "pro", "template": "Pro: {company_name}"})
    assert refused.status_code == 422 and 'id="template-field-error"' in refused.text
    with sqlite_db.session() as s:  # nothing changed, not even the switch left unticked
        assert messaging.sms_template_source(s, uid, "pro")[0].startswith("Pro: {company_name} {")
        assert messaging.sms_settings_json(s, uid)["sms_enabled"] is True


def test_a_top_up_form_sent_twice_adds_once(stack, sqlite_db, uid):
    email = _setup(sqlite_db, stack, uid)
    client = sign_in(stack.url, email)
    page = client.get(f"/accounts/{uid}/credits").text
    import re

    key = re.search(r'name="idempotency_key" value="([^"]+)"', page)
    assert key is not None
    form = {"csrf_token": csrf_of(page), "amount": "25", "idempotency_key": key.group(1)}
    first = client.post(f"/accounts/{uid}/credits/top-up", data=form)
    assert "Added 25 credits (balance 25)." in first.text
    again = client.post(f"/accounts/{uid}/credits/top-up", data=form)  # a double click
    assert "This top-up was done already; nothing changed." in again.text
    assert _balance(sqlite_db, uid) == 25
