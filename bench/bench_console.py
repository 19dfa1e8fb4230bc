"""Console page times with a large account: 100,000 customers, 10,000 cases, 20,000 ledger
entries, 2,000 cases paused for credits (defaults), served by a real `dunning console`
process on loopback and fetched signed in, as a browser would.

    python -m bench.bench_console [--customers 100000] [--cases 10000] [--database-url URL]

Prints the median and worst time of each page over `--repeat` fetches. The case pages ask
Temporal, which is not running here (a closed port: the page shows what the database knows).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import insert

from dunning.accounts.accounts import AccountOptions, create_account
from dunning.console.access import add_user
from dunning.platform.db import Database
from dunning.platform.db.models import Case, CreditEntry, Customer, SmsWaiter

ACCOUNT = "bench-console"
EMAIL = "bench@example.com"
PASSWORD = "bench password 123"


def fill(db: Database, customers: int, cases: int, ledger: int) -> None:
    now = datetime.now(UTC)
    with db.session() as s:
        create_account(s, ACCOUNT, AccountOptions(company_name="Bench Cloud",
                                                  sms_sender="+14155550100"))
        add_user(s, EMAIL, ACCOUNT, "admin", PASSWORD)
    chunk = 5000
    for start in range(0, customers, chunk):
        with db.session() as s:
            s.execute(insert(Customer), [
                {"account_id": ACCOUNT, "customer_id": f"cus_{i}", "name": f"Customer {i}",
                 "email": f"c{i}@example.com", "phone_e164": f"+1415{i:07d}",
                 "phone_region": "US", "phone_type": "MOBILE",
                 "phone_time_zones": "America/Los_Angeles", "source": "import",
                 "updated_at": now}
                for i in range(start, min(customers, start + chunk))])
    states = ("active", "recovered", "exhausted", "canceled")
    for start in range(0, cases, chunk):
        with db.session() as s:
            rows = []
            for i in range(start, min(cases, start + chunk)):
                state = states[i % 4]
                failed = now - timedelta(days=i % 60, minutes=i)
                rows.append({
                    "workflow_id": f"dunning-{ACCOUNT}-inv_{i}", "account_id": ACCOUNT,
                    "customer_id": f"cus_{i * 7 % customers}", "invoice_id": f"inv_{i}",
                    "amount_due": 4900, "currency": "USD", "state": state,
                    "failed_at": failed, "started_at": failed,
                    "ended_at": None if state == "active" else failed + timedelta(days=2),
                    "emails_sent": 2, "sms_sent": 1, "credits_spent": 1,
                    "recovered_amount": 4900 if state == "recovered" else 0,
                    "last_channel": "sms" if i % 3 else "email"})
            s.execute(insert(Case), rows)
    with db.session() as s:
        s.execute(insert(SmsWaiter), [
            {"account_id": ACCOUNT, "workflow_id": f"dunning-{ACCOUNT}-inv_{i}",
             "credits_needed": 1, "since": now, "step": 1, "credits_granted": 0}
            for i in range(0, min(cases, 8000), 4)])
    balance = 0
    for start in range(0, ledger, chunk):
        with db.session() as s:
            rows = []
            for i in range(start, min(ledger, start + chunk)):
                amount = 100 if i % 50 == 0 else -1
                balance += amount
                rows.append({"account_id": ACCOUNT, "kind": "topup" if amount > 0
                             else "sms_debit", "amount": amount, "balance_after": balance,
                             "created_at": now - timedelta(minutes=ledger - i)})
            s.execute(insert(CreditEntry), rows)
    with db.session() as s:
        from dunning.platform.db.models import Account

        account = s.get(Account, ACCOUNT)
        assert account is not None
        account.credit_balance = balance


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--ledger", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--database-url", default="", help="default: SQLite in a temp dir")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="dunning-bench-console-"))
    url = args.database_url or f"sqlite:///{tmp / 'dunning.db'}"
    db = Database(url)
    db.upgrade()
    t0 = time.perf_counter()
    fill(db, args.customers, args.cases, args.ledger)
    print(f"filled {args.customers:,} customers, {args.cases:,} cases, {args.ledger:,} ledger "
          f"entries in {time.perf_counter() - t0:.1f} s ({db.dialect})")
    db.dispose()

    from tests.fakes.smtp import free_port

    port = free_port()
    env = {**os.environ, "DUNNING_DATA_DIR": str(tmp), "DUNNING_DATABASE_URL": url,
           "DUNNING_CONSOLE_PORT": str(port), "DUNNING_TEMPORAL_ADDRESS": "127.0.0.1:1",
           "DUNNING_LOG_LEVEL": "WARNING"}
    dunning = str(Path(sys.executable).parent / "dunning")
    with (tmp / "console.log").open("wb") as log:
        proc = subprocess.Popen([dunning, "console"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        client = httpx.Client(base_url=base, timeout=120)
        token = re.search(r'name="csrf_token" value="([^"]+)"',
                          client.get("/login").text)
        assert token is not None
        signed = client.post("/login", data={"csrf_token": token.group(1), "email": EMAIL,
                                             "password": PASSWORD})
        assert signed.status_code == 303, signed.text
        acct = f"/accounts/{ACCOUNT}"
        csrf = re.search(r'data-csrf="([^"]+)"', client.get(f"{acct}/sms").text)
        assert csrf is not None
        pages = [
            ("import", "GET", f"{acct}/import"),
            ("sms settings", "GET", f"{acct}/sms"),
            ("sms preview (as you type)", "POST", f"{acct}/sms/preview"),
            ("credits (ledger page 1)", "GET", f"{acct}/credits"),
            ("credits (ledger last page)", "GET", f"{acct}/credits?page={args.ledger // 50}"),
            ("ledger CSV export", "GET", f"{acct}/credits/ledger.csv"),
            ("cases (all, page 1)", "GET", f"{acct}/cases"),
            ("cases (state=active)", "GET", f"{acct}/cases?state=active"),
            ("cases (SMS paused)", "GET", f"{acct}/cases?sms_paused=yes"),
            ("cases (one customer)", "GET", f"{acct}/cases?customer=cus_700"),
            ("cases (page 150)", "GET", f"{acct}/cases?page=150"),
            ("recovery", "GET", f"{acct}/recovery"),
            ("compliance", "GET", f"{acct}/compliance"),
            ("audit log", "GET", f"{acct}/audit"),
        ]
        print(f"\n{'page':32} {'median ms':>10} {'worst ms':>10} {'bytes':>10}")
        for name, method, path in pages:
            times = []
            size = 0
            for _ in range(args.repeat):
                start = time.perf_counter()
                if method == "GET":
                    answer = client.get(path)
                else:
                    answer = client.post(path, headers={"X-CSRF-Token": csrf.group(1)},
                                         data={"template": "{company_name} {billing_link}"})
                times.append((time.perf_counter() - start) * 1000)
                assert answer.status_code == 200, (path, answer.status_code)
                size = len(answer.content)
            print(f"{name:32} {statistics.median(times):10.1f} {max(times):10.1f} {size:10,}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
