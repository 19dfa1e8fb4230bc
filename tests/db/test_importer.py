"""dunning.customers.importer and dunning.customers.customers on real databases (SQLite and
PostgreSQL)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import phonenumbers
import pytest
from phonenumbers import PhoneNumberFormat, PhoneNumberType
from sqlalchemy import select

from dunning.accounts.accounts import AccountOptions, create_account
from dunning.customers.customers import (
    CustomerData,
    upsert_customer,
    upsert_customers,
    zones_column,
)
from dunning.customers.importer import (
    CsvFileError,
    ImportReport,
    PhoneChecker,
    import_file,
    import_stream,
)
from dunning.domain.contract import InputError
from dunning.domain.phones import PhoneInfo, validate_phone
from dunning.platform.db import Database
from dunning.platform.db.models import Customer

HEADER = "customer_id,phone,email,name,plan,country"


@pytest.fixture
def account(db: Database, uid: str) -> str:
    account_id = f"acct-{uid}"
    with db.session() as s:
        create_account(s, account_id, AccountOptions(company_name="Test Co"))
    return account_id


def run_import(db: Database, account: str, data: str | bytes, **kwargs: Any) -> ImportReport:
    raw = data.encode() if isinstance(data, str) else data
    with db.session() as s:
        return import_stream(s, account, io.BytesIO(raw), name="customers.csv",
                             total_bytes=len(raw), **kwargs)


def stored(db: Database, account: str) -> dict[str, dict[str, Any]]:
    with db.session() as s:
        rows = s.scalars(select(Customer).where(Customer.account_id == account)).all()
        return {
            c.customer_id: {
                "name": c.name, "email": c.email, "phone_e164": c.phone_e164,
                "phone_region": c.phone_region, "phone_type": c.phone_type,
                "phone_time_zones": c.phone_time_zones, "plan": c.plan, "source": c.source,
                "updated_at": c.updated_at,
            }
            for c in rows
        }


def csv_text(rows: list[list[str]], header: str = HEADER, sep: str = ",",
             newline: str = "\n") -> str:
    lines = [header.replace(",", sep)]
    for row in rows:
        cells = []
        for cell in row:
            if any(ch in cell for ch in (sep, '"', "\n", "\r")):
                cell = '"' + cell.replace('"', '""') + '"'
            cells.append(cell)
        lines.append(sep.join(cells))
    return newline.join(lines) + newline


def expected_columns(num: phonenumbers.PhoneNumber) -> dict[str, Any]:
    info = validate_phone(phonenumbers.format_number(num, PhoneNumberFormat.E164))
    return {
        "phone_e164": phonenumbers.format_number(num, PhoneNumberFormat.E164),
        "phone_region": phonenumbers.region_code_for_number(num),
        "phone_type": info.number_type,
        "phone_time_zones": zones_column(info.time_zones),
    }


# --- a file with every region and every kind of bad row --------------------------------------


@dataclass
class Expected:
    line: int
    customer_id: str
    phone: str
    reason: str


def world_file() -> tuple[str, dict[str, phonenumbers.PhoneNumber], list[Expected]]:
    """Every region's example mobile, nationally with `country` and internationally without,
    with bad rows of every kind mixed in. Returns (csv, good numbers by id, expected errors)."""
    rows: list[list[str]] = []
    good: dict[str, phonenumbers.PhoneNumber] = {}
    errors: list[Expected] = []

    def bad(cid: str, phone: str, reason: str, email: str = "", country: str = "") -> None:
        rows.append([cid, phone, email, "", "", country])
        errors.append(Expected(len(rows) + 1, cid, phone, reason))

    bad_rows = [
        ("bad-missing-phone", "", "missing phone"),
        ("", "+44 7400 123456", "missing customer_id"),
        ("bad id with spaces", "+44 7400 123456", "bad customer_id"),
        ("bad-nan", "call me maybe", "not a phone number"),
        ("bad-short", "+44 74", "too short"),
        ("bad-long", "+44 7400 1234567890", "too long"),
        ("bad-invalid", "+1 999 555 0123", "not a valid number for +1 (US,"),
        ("bad-landline", "+44 20 7946 0018", "landline (FIXED_LINE) cannot receive SMS"),
        ("bad-tollfree", "+1 800 555 0199", "toll-free number (TOLL_FREE) cannot receive SMS"),
        ("bad-cc", "+999 123 4567", "invalid country code"),
        ("bad-noregion", "07400 123456", "no country"),
    ]
    regions = sorted(phonenumbers.SUPPORTED_REGIONS)
    for i, region in enumerate(regions):
        num = phonenumbers.example_number_for_type(region, PhoneNumberType.MOBILE)
        if num is None:
            continue
        national = phonenumbers.format_number(num, PhoneNumberFormat.NATIONAL)
        intl = phonenumbers.format_number(num, PhoneNumberFormat.INTERNATIONAL)
        rows.append([f"{region}-nat", national, f"{region.lower()}@example.com",
                     f"Customer {region}", "pro", region.lower() if i % 2 else region])
        good[f"{region}-nat"] = num
        rows.append([f"{region}-intl", intl, "", "", "", ""])
        good[f"{region}-intl"] = num
        if i % 20 == 5 and bad_rows:
            cid, phone, reason = bad_rows.pop(0)
            bad(cid, phone, reason)
    assert not bad_rows
    bad("bad-region", "138 0013 800", "not a valid number for CN", country="CN")
    bad("bad-landline-de", "030 123456", "landline (FIXED_LINE) cannot receive SMS",
        country="DE")
    bad("bad-country", "07400 123456", "bad country: unknown region 'XX'", country="XX")
    bad("bad-email", "+44 7400 123456", "bad email: 'not-an-email' is not an email address",
        email="not-an-email")
    gb_line = next(i for i, r in enumerate(rows) if r[0] == "GB-nat") + 2
    bad("GB-nat", "+44 7400 999999", f"duplicate customer_id (first seen on line {gb_line})")
    bad_line = next(e.line for e in errors if e.customer_id == "bad-nan")
    bad("bad-nan", "+44 7400 999998", f"duplicate customer_id (first seen on line {bad_line})")
    return csv_text(rows), good, errors


def check_errors(report: ImportReport, expected: list[Expected]) -> None:
    got = [(e.line, e.customer_id, e.phone) for e in report.errors]
    assert got == [(e.line, e.customer_id, e.phone) for e in expected]
    for error, exp in zip(report.errors, expected, strict=True):
        assert exp.reason in error.reason, (error, exp)
    assert report.rejected == len(expected)


def test_every_region_with_bad_rows_then_reimport(db: Database, account: str) -> None:
    text, good, errors = world_file()
    report = run_import(db, account, text)
    assert report.imported == len(good) >= 480
    assert (report.updated, report.unchanged) == (0, 0)
    check_errors(report, errors)
    assert report.rows == len(good) + len(errors)

    rows = stored(db, account)
    assert set(rows) == set(good)  # bad rows never stored
    for cid, num in good.items():
        row = rows[cid]
        assert {k: row[k] for k in expected_columns(num)} == expected_columns(num), cid
        assert row["source"] == "import"
    assert rows["FR-nat"]["email"] == "fr@example.com"
    assert rows["FR-nat"]["name"] == "Customer FR"
    assert rows["FR-intl"]["email"] is None

    again = run_import(db, account, text)
    assert (again.imported, again.updated, again.unchanged) == (0, 0, len(good))
    check_errors(again, errors)
    assert stored(db, account) == rows  # not even updated_at moved


def test_updates_and_empty_cells_keep_values(db: Database, account: str) -> None:
    first = csv_text([
        ["c1", "+44 7400 123456", "one@example.com", "One", "basic", ""],
        ["c2", "07400 123457", "two@example.com", "Two", "basic", "GB"],
        ["c3", "+33 6 12 34 56 78", "three@example.com", "Three", "pro", ""],
        ["c4", "+49 1512 3456789", "four@example.com", "Four", "team", ""],
    ])
    assert run_import(db, account, first).imported == 4
    before = stored(db, account)

    second = csv_text([
        ["c1", "(201) 555-0123", "", "", "", "US"],  # new number: phone columns all change
        ["c2", "+447400123457", "new@example.com", "", "", ""],  # same number, new email
        ["c3", "+33 612345678", "", "", "", ""],  # same number, other spelling, nothing else
        ["c4", "+49 1512 3456789", "", "", "", ""],
        ["c5", "+34 612 34 56 78", "", "Five", "", ""],
    ])
    report = run_import(db, account, second)
    assert (report.imported, report.updated, report.unchanged, report.rejected) == (1, 2, 2, 0)
    after = stored(db, account)
    assert after["c1"]["phone_e164"] == "+12015550123"
    assert after["c1"]["phone_region"] == "US"
    assert after["c1"]["phone_type"] == "FIXED_LINE_OR_MOBILE"
    assert after["c1"]["phone_time_zones"] == "America/New_York"
    assert (after["c1"]["email"], after["c1"]["name"], after["c1"]["plan"]) == (
        "one@example.com", "One", "basic")
    assert after["c2"]["email"] == "new@example.com"
    assert after["c2"]["name"] == "Two"
    assert after["c3"] == before["c3"]
    assert after["c4"] == before["c4"]
    assert after["c5"]["name"] == "Five"
    assert after["c5"]["email"] is None
    assert after["c1"]["updated_at"] >= before["c1"]["updated_at"]


@pytest.mark.parametrize("sep", [",", ";", "\t"])
@pytest.mark.parametrize("bom", [False, True])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_delimiters_bom_and_line_ends(db: Database, account: str, sep: str, bom: bool,
                                      newline: str) -> None:
    rows = [
        ["q1", "+44 7400 123456", "q1@example.com", f"Smith{sep} \"Jo\"", "pro", ""],
        ["q2", "06 12 34 56 78", "", "Line one\nline two", "", "FR"],  # record spans 2 lines
        ["q3", "not a number", "", "", "", ""],
        ["q4", "+49 1512 3456789", "", "Müller ✓", "", ""],
    ]
    text = csv_text(rows, header=" Customer_ID ,PHONE,Email,Name,plan,Country", sep=sep,
                    newline=newline)
    raw = ("\ufeff" if bom else "") + text
    report = run_import(db, account, raw.encode("utf-8"))
    assert report.delimiter == sep
    assert (report.imported, report.rejected) == (3, 1)
    assert [(e.line, e.customer_id) for e in report.errors] == [(5, "q3")]  # q2 took lines 3-4
    got = stored(db, account)
    assert got["q1"]["name"] == f"Smith{sep} \"Jo\""
    assert got["q2"]["name"] == "Line one\nline two"
    assert got["q2"]["phone_e164"] == "+33612345678"
    assert got["q4"]["name"] == "Müller ✓"


def test_column_order_extra_columns_short_rows_and_blank_lines(db: Database,
                                                              account: str) -> None:
    text = (
        "Notes;Phone;Customer ID;Country\r\n"
        "vip;07400 123456;k1;GB\r\n"
        "\r\n"
        ";;;\r\n"
        ";+33 6 12 34 56 78;k2\r\n"  # short row: no country cell
        "only a note;;;\r\n"
        "x;;k3;GB\r\n"
    )
    report = run_import(db, account, text)
    assert (report.imported, report.rejected) == (2, 2)
    assert [(e.line, e.customer_id, e.reason) for e in report.errors] == [
        (6, "", "missing customer_id"),
        (7, "k3", "missing phone"),
    ]
    assert stored(db, account)["k1"]["phone_e164"] == "+447400123456"


def test_default_region(db: Database, account: str) -> None:
    text = csv_text([
        ["d1", "(201) 555-0123", "", "", "", ""],
        ["d2", "07400 123456", "", "", "", "GB"],
        ["d3", "+33 6 12 34 56 78", "", "", "", ""],
    ])
    bad = run_import(db, account, text, default_region="UK")
    assert (bad.imported, bad.rejected) == (2, 1)
    assert bad.errors[0].customer_id == "d1"
    assert "unknown default region 'UK'" in bad.errors[0].reason
    assert "did you mean GB?" in bad.errors[0].reason
    none = run_import(db, account, text)
    assert none.errors[0].reason.startswith("no country")
    assert "default region" in none.errors[0].reason
    assert "--" not in none.errors[0].reason  # the service names no CLI flag
    ok = run_import(db, account, text, default_region="us")
    assert (ok.imported, ok.unchanged, ok.rejected) == (1, 2, 0)
    assert stored(db, account)["d1"]["phone_e164"] == "+12015550123"


def test_duplicates_across_batches(db: Database, account: str) -> None:
    rows = [[f"b{i}", f"+44 7400 1{i:05d}", "", "", "", ""] for i in range(10)]
    rows[4][1] = "+44 20 7946 0018"  # b4: a landline, rejected ...
    rows.append(["b2", "+44 7400 200000", "", "", "", ""])
    rows.append(["b4", "+44 7400 200001", "", "", "", ""])  # ... but it claimed its id
    rows.append(["b11", "+44 7400 200002", "", "", "", ""])
    rows.append(["b11", "+44 7400 200003", "", "", "", ""])
    report = run_import(db, account, csv_text(rows), batch_size=3)
    assert report.imported == 10
    assert [(e.line, e.customer_id, e.reason) for e in report.errors] == [
        (6, "b4", "landline (FIXED_LINE) cannot receive SMS"),
        (12, "b2", "duplicate customer_id (first seen on line 4)"),
        (13, "b4", "duplicate customer_id (first seen on line 6)"),
        (15, "b11", "duplicate customer_id (first seen on line 14)"),
    ]
    assert stored(db, account)["b2"]["phone_e164"] == "+447400100002"


# --- files that are not such a CSV: exit with a message, store nothing ---------------------------


def good_rows(n: int) -> str:
    return "".join(f"ok{i},+44 7400 {i:06d},,,,\n" for i in range(n))


BAD_FILES = [
    (b"", "the file is empty"),
    (b"\n" + good_rows(2).encode(), "line 1 is empty"),
    (b"c1,+447400123456\nc2,+447400123457\n", "no customer_id and no phone column"),
    (b"customer_id;email\nc1;a@example.com\n", "no phone column"),
    (b"customer_id,phone,Phone\nc1,+447400123456,x\n", "column 'phone' appears twice"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "line 1: not UTF-8 text (byte 0x89"),
    (f"{HEADER}\n".encode() + good_rows(3).encode() + b"c9,+44 7400 999999,\x00\x00,,,\n",
     "line 5: contains NUL bytes"),
    (f"{HEADER}\n{good_rows(2)}".encode("utf-16"), "the file is UTF-16 text"),
    (f"{HEADER}\nc1,\"+44 7400 123456\nc2,+44 7400 123457\n".encode(),
     "line 2: malformed CSV"),
    (f"{HEADER}\nc1,\"+44\"7400,,,,\n".encode(), "line 2: malformed CSV"),
    (f"{HEADER}\n".encode() + b"x" * (1 << 20) + b"\n", "line 2: longer than 1024 KiB"),
    (f"{HEADER}\r{good_rows(3)}".replace("\n", "\r").encode(), "bare carriage return"),
    (f"{HEADER}\n".encode() + good_rows(3000).encode() + "c9,+44 7400 999999,,José,,\n"
     .encode("latin-1"), "line 3002: not UTF-8 text (byte 0xe9 at column 24)"),
]


@pytest.mark.parametrize(("data", "message"), BAD_FILES, ids=[m for _, m in BAD_FILES])
def test_bad_files_store_nothing(db: Database, account: str, data: bytes, message: str) -> None:
    with pytest.raises(CsvFileError) as err:
        run_import(db, account, data, batch_size=500)
    assert message in str(err.value)
    assert str(err.value).startswith("customers.csv: ")
    assert isinstance(err.value, InputError)
    assert stored(db, account) == {}


def test_missing_file(db: Database, account: str, tmp_path: Any) -> None:
    with pytest.raises(CsvFileError) as err, db.session() as s:
        import_file(s, account, tmp_path / "nope.csv")
    assert "cannot open: No such file" in str(err.value)


def test_header_only_imports_nothing(db: Database, account: str) -> None:
    report = run_import(db, account, HEADER + "\r\n")
    assert report.as_json() == {"imported": 0, "updated": 0, "unchanged": 0, "rejected": 0,
                                "errors": []}


# --- streaming ---------------------------------------------------------------------------------


class CountingStream(io.BytesIO):
    """A stream that records how much of itself had been read at each progress report."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.max_position = 0

    def readline(self, size: int | None = -1) -> bytes:
        line = super().readline(size)
        self.max_position = max(self.max_position, self.tell())
        return line


def five_thousand_rows() -> bytes:
    rows = []
    for i in range(5000):
        if i % 100 == 7:
            rows.append([f"s{i}", "12", "", "", "", "GB"])
        else:
            rows.append([f"s{i}", f"+44 7400 {i:06d}", f"s{i}@example.com", f"S {i}", "", ""])
    return csv_text(rows, newline="\r\n").encode()


def test_streams_in_batches_with_progress(db: Database, account: str) -> None:
    data = five_thousand_rows()
    stream = CountingStream(data)
    calls: list[tuple[int, int, int]] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total, stream.max_position))

    with db.session() as s:
        report = import_stream(s, account, stream, total_bytes=len(data), batch_size=250,
                               progress=progress)
    assert (report.imported, report.rejected) == (4950, 50)
    assert all(e.reason.startswith("too short") for e in report.errors)
    assert len(calls) >= 20
    positions = [c[0] for c in calls]
    assert positions == sorted(positions)
    assert calls[-1][:2] == (len(data), len(data))
    # When the first batch was stored, only that batch had been read: the file is streamed.
    assert calls[0][2] < len(data) // 10
    assert len(stored(db, account)) == 4950


def test_worker_processes_give_the_same_result(db: Database, uid: str) -> None:
    text, good, errors = world_file()
    data = text.encode() + five_thousand_rows().split(b"\r\n", 1)[1].replace(b"\r\n", b"\n")
    reports = []
    for workers in (0, 2):
        account = f"w{workers}-{uid}"
        with db.session() as s:
            create_account(s, account, AccountOptions(company_name="W"))
        with PhoneChecker(workers) as checker, db.session() as s:
            reports.append(import_stream(s, account, io.BytesIO(data), batch_size=400,
                                         checker=checker))
    assert reports[0].as_json() == reports[1].as_json()
    assert reports[1].imported == len(good) + 4950
    assert reports[1].rejected == len(errors) + 50


# --- the upsert shared with the billing-source sync --------------------------------------------


def test_upsert_customer(db: Database, account: str) -> None:
    gb = validate_phone("+44 7400 123456")
    fr = validate_phone("06 12 34 56 78", "FR")
    with db.session() as s:
        assert upsert_customer(s, account, "cus_1", gb, email="a@example.com") == "imported"
        assert upsert_customer(s, account, "cus_1", gb, email="a@example.com") == "unchanged"
        assert upsert_customer(s, account, "cus_1") == "unchanged"  # nothing given
        assert upsert_customer(s, account, "cus_1", name="Ann", source="stripe") == "updated"
        assert upsert_customer(s, account, "cus_2", plan="pro", source="stripe") == "imported"
    rows = stored(db, account)
    assert rows["cus_1"]["email"] == "a@example.com"
    assert rows["cus_1"]["name"] == "Ann"
    assert rows["cus_1"]["phone_e164"] == "+447400123456"
    assert rows["cus_1"]["source"] == "stripe"
    assert rows["cus_2"]["phone_e164"] is None
    with db.session() as s:
        outcomes = upsert_customers(s, account, [
            CustomerData("cus_2", fr),
            CustomerData("cus_3", gb, name="Cy"),
            CustomerData("cus_3", fr),  # the same id twice in one batch: applied in order
            CustomerData("cus_1", gb, email="a@example.com"),
        ], source="import")
    assert outcomes == ["updated", "imported", "updated", "unchanged"]
    rows = stored(db, account)
    assert rows["cus_2"]["phone_e164"] == "+33612345678"
    assert rows["cus_2"]["plan"] == "pro"
    assert (rows["cus_3"]["phone_e164"], rows["cus_3"]["name"]) == ("+33612345678", "Cy")
    with pytest.raises(InputError), db.session() as s:
        upsert_customer(s, account, "cus 4", gb)
    with pytest.raises(InputError) as err, db.session() as s:
        upsert_customer(s, account, "cus_4", gb, email="nope")
    assert err.value.field == "email"


def test_phone_replaces_all_phone_columns(db: Database, account: str) -> None:
    satellite = validate_phone("+870 773 111 632")
    assert satellite.region is None
    with db.session() as s:
        upsert_customer(s, account, "sat", validate_phone("+44 7400 123456"))
        assert upsert_customer(s, account, "sat", satellite) == "updated"
    row = stored(db, account)["sat"]
    assert (row["phone_e164"], row["phone_region"], row["phone_type"]) == (
        "+870773111632", None, "MOBILE")


@pytest.fixture
def info() -> Iterator[PhoneInfo]:
    yield validate_phone("+44 7400 123456")


def test_other_accounts_are_untouched(db: Database, account: str, uid: str,
                                      info: PhoneInfo) -> None:
    other = f"other-{uid}"
    with db.session() as s:
        create_account(s, other, AccountOptions(company_name="Other"))
        upsert_customer(s, other, "c1", info, name="Kept")
    report = run_import(db, account, csv_text([["c1", "+33 6 12 34 56 78", "", "New", "", ""]]))
    assert report.imported == 1
    assert stored(db, other)["c1"]["name"] == "Kept"
    assert stored(db, other)["c1"]["phone_e164"] == "+447400123456"


def test_rejected_rows_keep_only_capped_cells(db: Database, account: str) -> None:
    huge_phone, huge_id = "4" * 100_000, "c" * 120
    report = run_import(db, account, f"customer_id,phone\nc1,{huge_phone}\n{huge_id},+1\n")
    assert report.rejected == 2
    for err in report.errors:
        assert len(err.phone) < 100 and len(err.customer_id) < 100 and len(err.reason) < 400
    assert "100,000 characters" in report.errors[0].phone
