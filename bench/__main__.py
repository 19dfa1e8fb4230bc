"""`make bench`: every benchmark, one after another, each printing its figures.

    python -m bench [--quick]
"""

from __future__ import annotations

import argparse
import importlib
import sys

SLEEPING = ["--schedule", "3d,7d,14d", "--no-cancel"]

# (module, full-size arguments, quick arguments)
BENCHES: list[tuple[str, list[str], list[str]]] = [
    ("bench.bench_engine", ["--cases", "1000"], ["--cases", "200"]),
    ("bench.bench_engine", ["--cases", "1000", "--postgres"], ["--cases", "200", "--postgres"]),
    ("bench.bench_import", ["--rows", "1000000"], ["--rows", "50000"]),
    ("bench.bench_credits", [], ["--seconds", "3"]),
    ("bench.bench_wake", ["--cases", "10000"], ["--cases", "500"]),
    # 100,000 cases asleep before their first step (about 1.5 hours each on 2 cores), then
    # 10,000 through step 1 (the send path at scale, with the cancel rate)
    ("bench.bench_scale", [*SLEEPING, "--cases", "100000"], ["--cases", "1000"]),
    ("bench.bench_scale", [*SLEEPING, "--cases", "100000", "--postgres"],
     ["--cases", "1000", "--postgres"]),
    ("bench.bench_scale", ["--cases", "10000"], [*SLEEPING, "--cases", "1000"]),
    ("bench.lift_sim", ["--cases", "5000", "--runs", "20"], ["--cases", "1000", "--runs", "5"]),
    ("bench.bench_console", [], ["--customers", "20000", "--cases", "2000", "--repeat", "3"]),
    ("bench.chaos", ["--cases", "500"], ["--cases", "60", "--kills", "3", "--outages", "1"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    parser.add_argument("--only", help="run only benchmarks whose name contains this")
    args = parser.parse_args()
    failed = 0
    for module, full, quick in BENCHES:
        if args.only and args.only not in module:
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            print(f"\n== {module}: not available ({exc})")
            continue
        try:
            mod.main(quick if args.quick else full)
        except Exception as exc:  # one failing benchmark must not hide the others' figures
            failed += 1
            print(f"\n== {module}: FAILED: {exc!r}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
