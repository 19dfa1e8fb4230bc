"""CSV import of customers' phone numbers (`dunning phones import`).

The file: UTF-8 (with or without BOM), a header row, comma, semicolon or tab delimited (guessed
from the header line), quoted fields, `\\n` or `\\r\\n` line ends. Columns, matched
case-insensitively after trimming (spaces and dashes count as underscores): `customer_id` and
`phone` (required), `email`, `name`, `plan`, `country` (optional, ISO 3166 alpha-2: the region of
a number written without `+`), `locale` (optional, BCP 47 such as `es` or `pt-BR`: the language
of the customer's reminders); other columns are ignored.

Rows:
- Every cell is trimmed; a row whose cells are all empty is skipped.
- An empty optional cell leaves the stored value as it is (see `dunning.customers`).
- A bad row is rejected with its line (where the record starts; the header is line 1), its
  customer_id and phone as written, and a reason; it stores nothing. A customer_id seen earlier
  in the file (whether that row was stored or rejected) rejects the later row, naming the
  earlier line.
- Good rows are upserted: "imported" (new), "updated" (a value changed) or "unchanged".

A file that is not such a CSV (not UTF-8, binary, no usable header, a missing required column,
broken quoting) raises `CsvFileError`; the caller runs the whole import in one transaction, so
nothing is stored even when the bad byte is near the end of a huge file.

Memory stays flat whatever the file size: rows are read as a stream and handled in batches
(one SELECT for the batch's existing customers, executemany writes), and the customer_ids already
seen live in a temporary table of the import's own transaction, not in Python. Only the
rejected rows are kept for the report.

Speed: phonenumbers is most of the cost. `PhoneChecker` can run it in worker processes while
this process reads the file and writes the database (the CLI does so for files over 1 MiB).
On SQLite the import holds the write lock until it commits: other writers wait for it (their
busy timeout is 30 s), so import very large files when the engine is quiet.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import multiprocessing
import operator
import os
import signal
import sys
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from sqlalchemy import Column, Integer, MetaData, String, Table
from sqlalchemy.orm import Session

from dunning.customers.customers import (
    CustomerData,
    check_customer_fields,
    executemany,
    fetchall,
    upsert_customers,
)
from dunning.domain.contract import InputError, check_id, personal_data_in_id
from dunning.domain.locales import normalize_locale
from dunning.domain.phones import PhoneError, PhoneInfo, normalize_region, validate_many
from dunning.domain.pii import redact

REQUIRED: Final = ("customer_id", "phone")
OPTIONAL: Final = ("email", "name", "plan", "country", "locale")
DELIMITERS: Final = (",", ";", "\t")
BATCH_SIZE: Final = 1000
PARALLEL_MIN_BYTES: Final = 1 << 20  # smaller files are checked in-process
MAX_WORKERS: Final = 4
MAX_LINE: Final = 1 << 20  # bytes; a longer physical line means this is not a customer CSV

_BOM_UTF8 = b"\xef\xbb\xbf"
_BOMS_UTF16_32 = {
    b"\xff\xfe\x00\x00": "UTF-32",
    b"\x00\x00\xfe\xff": "UTF-32",
    b"\xff\xfe": "UTF-16",
    b"\xfe\xff": "UTF-16",
}

Progress = Callable[[int, int], None]
"""Called as progress(bytes_read, bytes_total) after each batch."""


class CsvFileError(InputError):
    """The file cannot be read as a customer CSV; nothing may be stored."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, message)


@dataclass(frozen=True, slots=True)
class RowError:
    """One rejected row, with capped copies of its cells (a file of huge bad cells must not be
    kept in memory whole)."""

    line: int
    customer_id: str
    phone: str
    reason: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "customer_id", capped(self.customer_id))
        object.__setattr__(self, "phone", capped(self.phone))
        object.__setattr__(self, "reason", capped(self.reason, MAX_REASON_CHARS))

    def as_json(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "customer_id": self.customer_id,
            "phone": self.phone,
            "reason": self.reason,
        }


MAX_CELL_CHARS = 64  # what a rejected row keeps of each cell
MAX_REASON_CHARS = 300
MAX_KEPT_ERRORS = 10_000  # rejected rows listed; `rejected` counts them all


def capped(text: str, limit: int = MAX_CELL_CHARS) -> str:
    """`text`, or its first `limit` characters and how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters)"


@dataclass
class ImportReport:
    """Counts per outcome and the rejected rows in file order (the first MAX_KEPT_ERRORS of
    them; `errors_omitted` counts the rest)."""

    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    errors: list[RowError] = field(default_factory=list)
    rows: int = 0
    delimiter: str = ","
    errors_omitted: int = 0

    def add_errors(self, errors: list[RowError]) -> None:
        self.rejected += len(errors)
        room = max(0, MAX_KEPT_ERRORS - len(self.errors))
        self.errors.extend(errors[:room])
        self.errors_omitted += max(0, len(errors) - room)

    def as_json(self) -> dict[str, Any]:
        """The `--json` object of `dunning phones import` (contract shape; `errors_omitted`
        only when the list was capped)."""
        data: dict[str, Any] = {
            "imported": self.imported,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "errors": [e.as_json() for e in self.errors],
        }
        if self.errors_omitted:
            data["errors_omitted"] = self.errors_omitted
        return data


# --- reading the file ----------------------------------------------------------------------


def _normalize_header(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


@dataclass
class _Header:
    delimiter: str
    columns: dict[str, int]


def _parse_header(line: str, where: str) -> _Header:
    """Pick the delimiter under which the header names both required columns."""
    if not line.strip():
        raise CsvFileError(
            where, "line 1 is empty: expected a header row such as customer_id,phone"
        )
    if "\r" in line.rstrip("\r\n"):
        raise CsvFileError(
            where, "lines end with a bare carriage return (CR); save the file with LF or CRLF "
            "line ends"
        )
    best: tuple[int, str, list[str]] | None = None
    for delim in DELIMITERS:
        try:
            names = next(csv.reader([line], delimiter=delim, strict=True))
        except (csv.Error, StopIteration):
            continue
        normalized = [_normalize_header(n) for n in names]
        known = sum(1 for n in normalized if n in REQUIRED or n in OPTIONAL)
        if all(r in normalized for r in REQUIRED):
            columns: dict[str, int] = {}
            for i, n in enumerate(normalized):
                if n in REQUIRED or n in OPTIONAL:
                    if n in columns:
                        raise CsvFileError(where, f"line 1: column {n!r} appears twice")
                    columns[n] = i
            return _Header(delim, columns)
        if best is None or (known, len(names)) > (best[0], len(best[2])):
            best = (known, delim, normalized)
    found = best[2] if best else []
    missing = [r for r in REQUIRED if r not in found]
    shown = ", ".join(repr(n) for n in found[:8] if n) or "nothing"
    raise CsvFileError(
        where,
        f"line 1: no {' and no '.join(missing)} column; the header row must name customer_id and "
        f"phone (comma, semicolon or tab separated), found {shown}",
    )


class _Lines:
    """Physical lines of a binary stream, decoded as UTF-8, with the checks that make a text
    file a text file. `number` is the line last returned (1-based)."""

    def __init__(self, stream: IO[bytes], where: str) -> None:
        self._stream = stream
        self._where = where
        self.number = 0

    def _fail(self, message: str) -> CsvFileError:
        return CsvFileError(self._where, f"line {self.number}: {message}")

    def _decode(self, data: bytes) -> str:
        if b"\x00" in data:
            raise self._fail("contains NUL bytes: this is a binary file, not CSV text")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = data[exc.start : exc.start + 1].hex()
            raise self._fail(
                f"not UTF-8 text (byte 0x{bad} at column {exc.start + 1}); save the file as "
                "UTF-8 CSV"
            ) from None

    def first(self) -> str | None:
        data = self._stream.readline(MAX_LINE)
        if not data:
            return None
        self.number = 1
        for bom, name in _BOMS_UTF16_32.items():
            if data.startswith(bom):
                raise self._fail(f"the file is {name} text; save it as UTF-8 CSV")
        if data.startswith(_BOM_UTF8):
            data = data[len(_BOM_UTF8) :]
        self._check_length(data)
        return self._decode(data)

    def _check_length(self, data: bytes) -> None:
        if len(data) >= MAX_LINE and not data.endswith(b"\n"):
            raise self._fail(f"longer than {MAX_LINE // 1024} KiB: not a customer CSV")

    def __iter__(self) -> Iterator[str]:
        readline = self._stream.readline
        decode = self._decode
        while True:
            data = readline(MAX_LINE)
            if not data:
                return
            self.number += 1
            if len(data) >= MAX_LINE:
                self._check_length(data)
            yield decode(data)


# (line, customer_id, phone, email, name, plan, country, locale); optional cells None when empty.
Row = tuple[int, str, str, str | None, str | None, str | None, str | None, str | None]


def _rows(lines: _Lines, header: _Header, where: str) -> Iterator[Row]:
    """Records of the file from line 2 on; all-empty rows are skipped."""
    reader = csv.reader(iter(lines), delimiter=header.delimiter, strict=True)
    cols = header.columns
    order = [cols["customer_id"], cols["phone"], *(cols.get(c, -1) for c in OPTIONAL)]
    width = max(order) + 1
    pick = operator.itemgetter(*order)  # -1: an absent optional column, the "" appended below
    pad = [""] * width
    start = lines.number + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise CsvFileError(
                where, f"line {start}: malformed CSV ({exc}); check the quoting"
            ) from None
        line, start = start, lines.number + 1
        if len(cells) < width:
            cells += pad[len(cells) :]
        cells.append("")
        cid, phone, email, name, plan, country, locale = (c.strip() for c in pick(cells))
        if not (cid or phone or email or name or plan or country or locale) and not any(
            c.strip() for c in cells
        ):
            continue
        yield (line, cid, phone, email or None, name or None, plan or None, country or None,
               locale or None)


# --- duplicates across batches -------------------------------------------------------------


class _SeenIds:
    """customer_id -> first line, in a temporary table of the import's transaction."""

    def __init__(self, session: Session) -> None:
        self._session = session
        kwargs: dict[str, Any] = {}
        if session.get_bind().dialect.name == "postgresql":
            kwargs["postgresql_on_commit"] = "DROP"
        self.table = Table(
            f"import_seen_{uuid.uuid4().hex[:12]}",
            MetaData(),
            Column("customer_id", String(128), primary_key=True),
            Column("line", Integer, nullable=False),
            prefixes=["TEMPORARY"],
            **kwargs,
        )
        self.table.create(session.connection())
        self._insert = f"INSERT INTO {self.table.name} (customer_id, line) VALUES (?, ?)"

    def lookup(self, ids: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            sql = (
                f"SELECT customer_id, line FROM {self.table.name} "
                f"WHERE customer_id IN ({', '.join('?' * len(chunk))})"
            )
            found.update((cid, line) for cid, line in fetchall(self._session, sql, tuple(chunk)))
        return found

    def add(self, first_lines: dict[str, int]) -> None:
        executemany(self._session, self._insert, list(first_lines.items()))

    def drop(self) -> None:
        self.table.drop(self._session.connection())


# --- checking numbers, here or in worker processes ------------------------------------------


Results = Callable[[], list[PhoneInfo | PhoneError]]
# What a worker sends back per number: PhoneInfo fields, or (code, reason). Plain tuples
# pickle twenty times faster than dataclass instances.
_Packed = tuple[str, str | None, str, tuple[str, ...]] | tuple[str, str]


def _check_packed(items: list[tuple[str, str | None]], default_region: str | None) -> list[_Packed]:
    """`validate_many` for a worker process."""
    return [
        (r.code, r.reason) if isinstance(r, PhoneError)
        else (r.e164, r.region, r.number_type, r.time_zones)
        for r in validate_many(items, default_region)
    ]


def _unpack(packed: list[_Packed]) -> list[PhoneInfo | PhoneError]:
    return [PhoneInfo(*p) if len(p) == 4 else PhoneError(*p) for p in packed]


class PhoneChecker:
    """Checks batches of numbers with `validate_many`: in this process (`workers=0`) or in a
    pool of worker processes, while this process reads the file and writes the database.

    Use it as a context manager, entered before the database session and before any thread
    starts: the workers are forked (on Linux) when it is entered. A worker that dies makes the
    import fail (BrokenProcessPool) instead of hanging.
    """

    def __init__(self, workers: int = 0) -> None:
        self.workers = max(workers, 0)
        self._pool: ProcessPoolExecutor | None = None

    @property
    def max_pending(self) -> int:
        """Batches submitted but not yet collected (keeps memory bounded)."""
        return 2 * self.workers

    def __enter__(self) -> PhoneChecker:
        if self.workers:
            methods = multiprocessing.get_all_start_methods()
            method = "fork" if sys.platform == "linux" and "fork" in methods else "spawn"
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context(method),
                initializer=_worker_init,
            )
            # Objects inherited through fork stay shared only if the workers' garbage collector
            # leaves them alone (it writes to every object it visits): freeze them for the fork.
            gc.freeze()
            try:
                self._pool.submit(int).result()  # start the workers now
            finally:
                gc.unfreeze()
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=exc_type is not None)

    def submit(self, items: list[tuple[str, str | None]], default_region: str | None) -> Results:
        if self._pool is None:
            done = validate_many(items, default_region)
            return lambda: done
        future = self._pool.submit(_check_packed, items, default_region)
        return lambda: _unpack(future.result())


def _worker_init() -> None:
    """Ctrl-C is for the importing process, which stops the workers itself (no tracebacks)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def auto_workers(total_bytes: int) -> int:
    """Worker processes worth starting for a file of this size (0: check in-process)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    if cpus < 2 or total_bytes < PARALLEL_MIN_BYTES:
        return 0
    return min(cpus, MAX_WORKERS)


# --- the import ----------------------------------------------------------------------------


_NO_REGION_REASON = (
    "no country: write the number with + and its country code, or fill the country column "
    "or give a default region"
)


def _duplicate(row: Row, earlier: int) -> RowError:
    return RowError(
        row[0], row[1], row[2], f"duplicate customer_id (first seen on line {earlier})"
    )


@dataclass
class _Pending:
    candidates: list[Row]
    errors: list[RowError]
    results: Results
    rows: int
    position: int


class _Importer:
    def __init__(self, session: Session, account_id: str, default_region: str | None,
                 source: str, checker: PhoneChecker) -> None:
        self.session = session
        self.account_id = account_id
        self.default_region = default_region
        self.source = source
        self.checker = checker
        self.seen = _SeenIds(session)
        self.report = ImportReport()

    def submit(self, rows: list[Row], position: int) -> _Pending:
        """Reject rows without a usable, first-seen customer_id; send the rest's numbers off."""
        errors: list[RowError] = []
        first: dict[str, int] = {}  # first line of each id in this batch
        candidates: list[Row] = []
        for row in rows:
            cid = row[1]
            if not cid:
                errors.append(RowError(row[0], "", row[2], "missing customer_id"))
                continue
            try:
                check_id("customer_id", cid)
            except InputError as exc:
                shown = redact(cid) if personal_data_in_id(cid) else cid  # not echoed whole
                errors.append(RowError(row[0], shown, row[2], f"bad customer_id: {exc.message}"))
                continue
            earlier = first.get(cid)
            if earlier is not None:
                errors.append(_duplicate(row, earlier))
                continue
            first[cid] = row[0]
            candidates.append(row)
        if first:
            before = self.seen.lookup(list(first))
            self.seen.add({cid: line for cid, line in first.items() if cid not in before})
            if before:
                errors.extend(_duplicate(r, before[r[1]]) for r in candidates if r[1] in before)
                candidates = [r for r in candidates if r[1] not in before]
        results = self.checker.submit([(r[2], r[6]) for r in candidates], self.default_region)
        return _Pending(candidates, errors, results, len(rows), position)

    def finish(self, batch: _Pending) -> None:
        """Store the good rows of a batch and account for all of them."""
        errors = batch.errors
        good: list[CustomerData] = []
        for row, phone in zip(batch.candidates, batch.results(), strict=True):
            line, cid, raw, email, name, plan, country, locale = row
            if isinstance(phone, PhoneError):
                reason = phone.reason
                if phone.code == "no_region":
                    reason = _NO_REGION_REASON
                elif phone.code == "unknown_region" and country is not None:
                    reason = f"bad country: {reason}"
                errors.append(RowError(line, cid, raw, reason))
                continue
            if email is not None or name is not None or plan is not None:
                try:
                    check_customer_fields(email, name, plan)
                except InputError as exc:
                    errors.append(RowError(line, cid, raw, f"bad {exc.field}: {exc.message}"))
                    continue
            if locale is not None:
                try:
                    locale = normalize_locale(locale)
                except InputError as exc:
                    errors.append(RowError(line, cid, raw, f"bad locale: {exc.message}"))
                    continue
            good.append(CustomerData(cid, phone, email, name, plan, locale))
        report = self.report
        for outcome in upsert_customers(self.session, self.account_id, good, self.source):
            if outcome == "imported":
                report.imported += 1
            elif outcome == "updated":
                report.updated += 1
            else:
                report.unchanged += 1
        if errors:
            errors.sort(key=lambda e: e.line)
            report.add_errors(errors)
        report.rows += batch.rows


def import_stream(
    session: Session,
    account_id: str,
    stream: IO[bytes],
    *,
    name: str = "file",
    default_region: str | None = None,
    source: str = "import",
    batch_size: int = BATCH_SIZE,
    progress: Progress | None = None,
    total_bytes: int = 0,
    checker: PhoneChecker | None = None,
) -> ImportReport:
    """Import customers from a binary CSV stream into `account_id` (which must exist).

    Runs inside the caller's transaction; on CsvFileError the caller must roll back (a
    `Database.session()` block does). `name` is how error messages call the file. Numbers are
    checked in-process unless an entered `checker` with workers is given.
    """
    lines = _Lines(stream, name)
    first = lines.first()
    if first is None:
        raise CsvFileError(
            name, "the file is empty: expected a header row such as customer_id,phone"
        )
    header = _parse_header(first, name)
    default = default_region
    with contextlib.suppress(PhoneError):  # if unknown, rows that need it say so
        default = normalize_region(default_region, default=True)
    importer = _Importer(session, account_id, default, source, checker or PhoneChecker(0))
    importer.report.delimiter = header.delimiter
    max_pending = importer.checker.max_pending
    pending: deque[_Pending] = deque()
    tell = getattr(stream, "tell", None)

    def finish_oldest() -> None:
        batch = pending.popleft()
        importer.finish(batch)
        if progress is not None:
            progress(batch.position, total_bytes)

    rows: list[Row] = []
    for row in _rows(lines, header, name):
        rows.append(row)
        if len(rows) >= batch_size:
            pending.append(importer.submit(rows, tell() if tell is not None else 0))
            rows = []
            while len(pending) > max_pending:
                finish_oldest()
    if rows:
        pending.append(importer.submit(rows, total_bytes))
    while pending:
        finish_oldest()
    importer.seen.drop()
    if progress is not None:
        progress(total_bytes, total_bytes)
    return importer.report


def import_file(
    session: Session,
    account_id: str,
    path: str | Path,
    *,
    default_region: str | None = None,
    source: str = "import",
    batch_size: int = BATCH_SIZE,
    progress: Progress | None = None,
    checker: PhoneChecker | None = None,
) -> ImportReport:
    """Import a CSV file (see the module docstring); OSError problems become CsvFileError."""
    p = Path(path)
    try:
        total = p.stat().st_size
        f = p.open("rb")
    except OSError as exc:
        raise CsvFileError(str(p), f"cannot open: {exc.strerror or exc}") from None
    with f:
        try:
            return import_stream(
                session,
                account_id,
                f,
                name=str(p),
                default_region=default_region,
                source=source,
                batch_size=batch_size,
                progress=progress,
                total_bytes=total,
                checker=checker,
            )
        except OSError as exc:
            raise CsvFileError(str(p), f"cannot read: {exc.strerror or exc}") from None


__all__ = [
    "REQUIRED",
    "CsvFileError",
    "ImportReport",
    "PhoneChecker",
    "RowError",
    "auto_workers",
    "import_file",
    "import_stream",
]
