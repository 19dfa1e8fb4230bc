"""Benchmark of `dunning phones import` against bare phonenumbers.

    python -m bench.bench_import [--rows 1000000] [--batch-size 1000] [--workers N]
                                 [--reimport] [--keep]

Generates a CSV in a temporary directory (a realistic mix of regions and formats, about 2% bad
rows of every kind), then
1. times a bare loop that only parses and formats the same numbers with phonenumbers
   (`parse` + `format_number(E164)`, same regions, same process settings such as the pattern
   cache that `dunning.domain.phones` turns on);
2. runs the import exactly as `dunning phones import FILE --account bench --default-region US
   --json` does (one transaction, number-checking worker processes chosen the same way unless
   --workers says otherwise, the JSON report built) in a separate process on a fresh SQLite
   database, so that its peak RSS (VmHWM, else ru_maxrss) is measured alone; on Linux the PSS
   of that process and its workers is also sampled, which counts pages shared after fork once;
3. prints rows/s, peak memory, the ratio bare time / import time and whether the targets
   (ratio >= 0.5, memory < 300 MB) are met. Nothing is asserted. The ratio depends on idle
   CPUs: the import uses two processes or more, the bare loop one.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType

import dunning.domain.phones as phones

RATIO_TARGET = 0.5
RSS_TARGET_MB = 300
PSS_INTERVAL = 0.2
ACCOUNT = "bench"
DEFAULT_REGION = "US"

# Share of good rows per region; "*" spreads the rest over every region phonenumbers knows.
WEIGHTS: dict[str, float] = {
    "US": 34, "GB": 8, "DE": 6, "IN": 6, "FR": 5, "CA": 5, "BR": 5, "MX": 4, "AU": 3,
    "ES": 3, "IT": 3, "NL": 2, "JP": 2, "PH": 2, "NG": 2, "ZA": 2, "*": 8,
}
PLANS = ("basic", "pro", "team", "enterprise")
BAD_SHARE = 0.02


def _pool(region: str, rng: random.Random, size: int) -> list[phonenumbers.PhoneNumber]:
    """Distinct SMS-capable numbers of `region`: its example mobile with other final digits."""
    example = phonenumbers.example_number_for_type(region, PhoneNumberType.MOBILE)
    if example is None:
        return []
    nsn = phonenumbers.national_significant_number(example)
    keep = max(len(nsn) - 5, 2)
    found: dict[str, phonenumbers.PhoneNumber] = {}
    for _ in range(size * 3):
        candidate = nsn[:keep] + "".join(rng.choice("0123456789") for _ in nsn[keep:])
        num = phonenumbers.parse(f"+{example.country_code}{candidate}", None)
        if phonenumbers.region_code_for_number(num) != region:
            continue
        if not phones.is_sms_capable(f"+{example.country_code}{candidate}"):
            continue
        found[candidate] = num
        if len(found) >= size:
            break
    return list(found.values()) or [example]


def _bad_rows(rng: random.Random) -> list[tuple[str, str, str, str]]:
    """(phone, country, email, kind) templates of rejected rows."""
    def fixed(region: str) -> str:
        num = phonenumbers.example_number_for_type(region, PhoneNumberType.FIXED_LINE)
        assert num is not None
        return phonenumbers.format_number(num, PhoneNumberFormat.INTERNATIONAL)

    return [
        ("", "", "", "missing phone"),
        ("n/a", "", "", "not a number"),
        ("+44 74", "", "", "too short"),
        ("+44 7400 1234567890", "", "", "too long"),
        (fixed("GB"), "", "", "landline"),
        (fixed("DE"), "", "", "landline"),
        ("+1 800 555 0199", "", "", "toll-free"),
        ("07400 123456", "UK", "", "unknown region"),
        ("+999 123 4567", "", "", "invalid country code"),
        ("+1 999 555 0123", "", "", "invalid for region"),
        ("+44 7400 123456", "", "not-an-email", "bad email"),
        ("dup", "", "", "duplicate"),
    ]


def generate(path: Path, rows: int, seed: int = 7) -> dict[str, int]:
    """Write the CSV; returns how many rows of each kind were written."""
    rng = random.Random(seed)
    regions = sorted(phonenumbers.SUPPORTED_REGIONS)
    named = {r: w for r, w in WEIGHTS.items() if r != "*"}
    spread = WEIGHTS["*"] / len(regions)
    weights = {r: named.get(r, 0) + spread for r in regions}
    pools = {r: _pool(r, rng, 400 if r in named else 40) for r in regions}
    pools = {r: p for r, p in pools.items() if p}
    choices = list(pools)
    cum_weights = []
    total = 0.0
    for r in choices:
        total += weights[r]
        cum_weights.append(total)
    bad = _bad_rows(rng)
    kinds: dict[str, int] = {}
    with path.open("w", encoding="utf-8", newline="") as f:
        out = csv.writer(f, lineterminator="\r\n")
        out.writerow(["customer_id", "phone", "email", "name", "plan", "country"])
        for i in range(rows):
            cid = f"cus_{i:08d}"
            email = f"user{i}@example.com" if rng.random() < 0.7 else ""
            name = f"Customer {i}" if rng.random() < 0.8 else ""
            plan = rng.choice(PLANS)
            if rng.random() < BAD_SHARE:
                phone, country, bad_email, kind = bad[i % len(bad)]
                if kind == "duplicate":
                    cid = f"cus_{max(i - 1, 0):08d}"
                    phone = "+44 7400 123456"
                out.writerow([cid, phone, bad_email or email, name, plan, country])
                kinds[kind] = kinds.get(kind, 0) + 1
                continue
            region = rng.choices(choices, cum_weights=cum_weights)[0]
            num = rng.choice(pools[region])
            style = rng.random()
            country = ""
            if region == DEFAULT_REGION and style < 0.5:
                phone = phonenumbers.format_number(num, PhoneNumberFormat.NATIONAL)
            elif style < 0.4:
                phone = phonenumbers.format_number(num, PhoneNumberFormat.E164)
            elif style < 0.7:
                phone = phonenumbers.format_number(num, PhoneNumberFormat.INTERNATIONAL)
            else:
                phone = phonenumbers.format_number(num, PhoneNumberFormat.NATIONAL)
                country = region
            out.writerow([cid, phone, email, name, plan, country])
            kinds["good"] = kinds.get("good", 0) + 1
    return kinds


def bare_loop(path: Path) -> tuple[float, int]:
    """Seconds to parse and format every phone of the file (read into memory first)."""
    pairs: list[tuple[str, str | None]] = []
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for row in reader:
            pairs.append((row[1], row[5] or DEFAULT_REGION))
    parse, fmt, e164 = phonenumbers.parse, phonenumbers.format_number, PhoneNumberFormat.E164
    error = phonenumbers.NumberParseException
    start = time.perf_counter()
    for phone, region in pairs:
        try:
            fmt(parse(phone, region), e164)
        except error:
            continue
    return time.perf_counter() - start, len(pairs)


def _peak_rss_kb() -> int:
    """Peak RSS of this process since it started (VmHWM where /proc has it: ru_maxrss also
    counts the parent's memory at fork time, before exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(
    csv_path: str, db_url: str, result_path: str, batch_size: int, runs: int, workers: int
) -> None:
    """In a fresh process: create the account, time the import as `dunning phones import
    --json` runs it (one transaction, report as JSON), report times and peak RSS."""
    os.environ["DUNNING_DATABASE_URL"] = db_url
    from dunning.accounts.accounts import AccountOptions, create_account, get_account
    from dunning.cli import common
    from dunning.customers.importer import PhoneChecker, auto_workers, import_file

    with common.Invocation():  # as one `dunning` command run
        with common.session() as s:
            create_account(s, ACCOUNT, AccountOptions(company_name="Bench"))
        timings = []
        out_base = Path(result_path).with_suffix("")
        workers = auto_workers(Path(csv_path).stat().st_size) if workers < 0 else workers
        for run in range(runs):
            start = time.perf_counter()
            with PhoneChecker(workers) as checker, common.session() as s:
                get_account(s, ACCOUNT)
                report = import_file(s, ACCOUNT, csv_path, default_region=DEFAULT_REGION,
                                     batch_size=batch_size, checker=checker)
            text = json.dumps(report.as_json())
            timings.append(time.perf_counter() - start)
            Path(f"{out_base}.out{run}.json").write_text(text)
    result = {
        "seconds": timings,
        "workers": workers,
        "maxrss_kb": _peak_rss_kb(),
        "worker_maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    }
    Path(result_path).write_text(json.dumps(result))


def _pss_mb(pid: int) -> float:
    """Proportional set size of a process (shared pages split among their users)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _children(pid: int) -> list[int]:
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(c) for c in found]


def sample_pss(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> float | None:
    """Wait for `proc`; return the peak of PSS summed over it and its children (Linux), or
    None where /proc cannot tell."""
    if not Path(f"/proc/{proc.pid}/smaps_rollup").exists():
        proc.wait()
        return None
    peak = 0.0
    while proc.poll() is None:
        pids = [proc.pid, *_children(proc.pid)]
        peak = max(peak, sum(_pss_mb(p) for p in pids))
        time.sleep(PSS_INTERVAL)
    return peak


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=-1,
                        help="worker processes checking numbers (default: as the CLI chooses)")
    parser.add_argument("--reimport", action="store_true", help="time a second, unchanged run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--child", nargs=3, metavar=("CSV", "DB_URL", "RESULT"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        csv_arg, db_arg, result_arg = args.child
        child(csv_arg, db_arg, result_arg, args.batch_size, args.runs, args.workers)
        return

    tmp = Path(tempfile.mkdtemp(prefix="dunning-bench-import-"))
    csv_path = tmp / "customers.csv"
    t0 = time.perf_counter()
    kinds = generate(csv_path, args.rows)
    size_mb = csv_path.stat().st_size / 1e6
    print(f"generated {args.rows:,} rows ({size_mb:.1f} MB, {kinds.get('good', 0):,} good, "
          f"{args.rows - kinds.get('good', 0):,} bad) in {time.perf_counter() - t0:.1f} s: "
          f"{csv_path}")

    # The import runs first: a child forked from this process while it holds the bare loop's
    # numbers would inherit that peak in its ru_maxrss.
    result_path = tmp / "result.json"
    db_url = f"sqlite:///{tmp / 'dunning.db'}"
    cmd = [sys.executable, "-m", "bench.bench_import", "--child", str(csv_path), db_url,
           str(result_path), "--batch-size", str(args.batch_size),
           "--runs", "2" if args.reimport else "1", "--workers", str(args.workers)]
    env = dict(os.environ, DUNNING_DATA_DIR=str(tmp / "data"))
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
        peak_pss = sample_pss(proc)
        if proc.returncode != 0:
            log.seek(0)
            print(log.read(), file=sys.stderr)
            raise SystemExit(f"the import failed (exit {proc.returncode})")
    result = json.loads(result_path.read_text())
    report = json.loads(Path(f"{result_path.with_suffix('')}.out0.json").read_text())

    bare_s, n = bare_loop(csv_path)
    print(f"bare phonenumbers parse+format: {bare_s:.2f} s, {n / bare_s:,.0f} rows/s")
    import_s = result["seconds"][0]
    rss_mb = result["maxrss_kb"] / 1024
    worker_mb = result["worker_maxrss_kb"] / 1024
    workers = result["workers"]
    total_mb = rss_mb + workers * worker_mb
    ratio = bare_s / import_s
    print(f"import: {import_s:.2f} s, {n / import_s:,.0f} rows/s "
          f"(imported {report['imported']:,}, updated {report['updated']:,}, "
          f"unchanged {report['unchanged']:,}, rejected {report['rejected']:,})")
    if args.reimport:
        again = json.loads(Path(f"{result_path.with_suffix('')}.out1.json").read_text())
        re_s = result["seconds"][1]
        print(f"re-import: {re_s:.2f} s, {n / re_s:,.0f} rows/s "
              f"(unchanged {again['unchanged']:,}, rejected {again['rejected']:,})")
    if workers:
        print(f"peak RSS: import process {rss_mb:.0f} MB; each of its {workers} "
              f"number-checking workers at most {worker_mb:.0f} MB, most of it pages shared "
              f"with the parent they were forked from (plain sum {total_mb:.0f} MB)")
    else:
        print(f"peak RSS of the import process: {rss_mb:.0f} MB "
              "(numbers checked in-process)")
    if peak_pss is not None:
        print(f"peak memory of the import and its workers together (sum of PSS, sampled "
              f"every {PSS_INTERVAL}s): {peak_pss:.0f} MB")
    ok_ratio = ratio >= RATIO_TARGET
    # Shared pages counted once when /proc tells us (PSS), else the conservative plain sum.
    memory_mb = max(rss_mb, peak_pss) if peak_pss is not None else total_mb
    ok_rss = memory_mb < RSS_TARGET_MB
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {cpus} CPUs, load average {os.getloadavg()[0]:.1f} at the end "
          "(other work on the machine slows the import's workers more than the bare loop)")
    print(f"ratio bare/import: {ratio:.3f} (target >= {RATIO_TARGET}): "
          f"{'met' if ok_ratio else 'NOT met'}")
    print(f"peak memory {memory_mb:.0f} MB (target < {RSS_TARGET_MB} MB): "
          f"{'met' if ok_rss else 'NOT met'}")
    if args.keep:
        print(f"kept {tmp}")
    else:
        for p in sorted(tmp.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        tmp.rmdir()


if __name__ == "__main__":
    main()
