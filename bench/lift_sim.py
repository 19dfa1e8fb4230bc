"""A simulation with a known SMS lift: does the report find it, within its interval?

    python -m bench.lift_sim [--cases 5000] [--holdout 20] [--base 0.22] [--lift 0.08]
                             [--runs 20] [--seed 1] [--database-url URL]

Each run makes an account with an SMS holdout of `--holdout` percent and registers `--cases`
cases through the engine's own `register_case` activity (so the arms are assigned exactly as in
production, from a hash of the workflow id). Each case then recovers with probability `--base`
in the holdout arm and `--base + --lift` in the SMS arm and is closed through `finish_case`.
`dunning report`'s experiment section (`experiment_report`) is computed from the database and
compared with the true lift.

Printed per run: the holdout share, the measured lift with its 95% interval, whether it covers
the true lift, and the verdict; at the end how often the interval covered the truth (about 95%
expected) and the share of significant verdicts (the power at this size).
"""

from __future__ import annotations

import argparse
import random
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from temporalio.testing import ActivityEnvironment

from activities import DunningActivities
from dunning.accounts.accounts import AccountOptions, create_account
from dunning.cases.experiments import experiment_report, set_sms_holdout
from dunning.domain.contract import FinishCaseRequest, RegisterCaseRequest
from dunning.platform.db import Database
from dunning.platform.db.models import Case
from dunning.platform.providers.email import ConsoleEmailProvider
from dunning.platform.providers.sms import ConsoleSmsProvider


def simulate(
    db: Database, account: str, *, cases: int, holdout: int, base: float, lift: float,
    rng: random.Random,
) -> tuple[dict[str, Any], float]:
    """(the experiment report, the holdout share) of one simulated account."""
    with db.session() as s:
        create_account(s, account, AccountOptions(company_name="Sim Co"))
        set_sms_holdout(s, account, holdout)
    acts = DunningActivities(db, ConsoleSmsProvider(echo=False), ConsoleEmailProvider(echo=False))
    env = ActivityEnvironment()  # the activities run as the worker runs them (activity.info())
    failed = datetime(2026, 11, 1, tzinfo=UTC)
    ended = datetime(2026, 11, 20, tzinfo=UTC)
    for n in range(cases):
        wid = f"dunning:{account}:inv{n}"
        plan = env.run(acts.register_case, RegisterCaseRequest(
            wid, account, f"cus{n}", f"inv{n}", 4900, "USD", failed,
        ))
        p = base if plan.arm == "holdout" else base + lift
        recovered = rng.random() < p
        env.run(acts.finish_case, FinishCaseRequest(
            wid, account, "recovered" if recovered else "exhausted", 3, 0 if plan.arm ==
            "holdout" else 3, 0, ended, 4900 if recovered else 0, "email",
        ))
    with db.session() as s:
        report = experiment_report(s, account)
        held = s.query(Case).filter(Case.account_id == account, Case.arm == "holdout").count()
    assert report is not None
    return report, held / cases


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--holdout", type=int, default=20)
    parser.add_argument("--base", type=float, default=0.22, help="holdout recovery rate")
    parser.add_argument("--lift", type=float, default=0.08, help="true SMS lift (points/100)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'lift.db'}"
        db = Database(url)
        db.upgrade()
        covered = significant = 0
        shares = []
        print(f"== lift_sim: {args.runs} runs x {args.cases} cases, holdout {args.holdout}%, "
              f"holdout rate {args.base:.2f}, true lift {args.lift:+.3f}")
        for run in range(args.runs):
            report, share = simulate(db, f"sim{args.seed}-{run}-{rng.randrange(10**9)}",
                                     cases=args.cases, holdout=args.holdout, base=args.base,
                                     lift=args.lift, rng=rng)
            lift = report["lift"]
            low, high = lift["ci95"]
            hit = low <= args.lift <= high
            covered += hit
            significant += bool(lift["significant"])
            shares.append(share)
            print(f"run {run + 1:>3}: holdout share {shares[-1]:.3f}, measured lift "
                  f"{lift['difference']:+.4f}, 95% CI [{low:+.4f}, {high:+.4f}] "
                  f"{'covers' if hit else 'MISSES'} the true {args.lift:+.3f}")
        if args.runs:
            print(f"last verdict: {report['verdict']}")
        db.dispose()
    figures = {
        "coverage": covered / args.runs,
        "significant_share": significant / args.runs,
        "mean_holdout_share": sum(shares) / len(shares),
    }
    print(f"interval covered the true lift in {covered}/{args.runs} runs "
          f"({figures['coverage']:.0%}; about 95% expected); significant in "
          f"{figures['significant_share']:.0%}; mean holdout share "
          f"{figures['mean_holdout_share']:.3f} (asked {args.holdout / 100:.2f})")
    return figures


if __name__ == "__main__":
    main()
