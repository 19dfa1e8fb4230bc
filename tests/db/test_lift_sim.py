"""bench/lift_sim.py: with a known lift, the report's interval covers it (fixed seeds)."""

from __future__ import annotations

from bench import lift_sim
from dunning.platform.db import Database


def test_the_report_recovers_a_known_lift(db: Database) -> None:
    figures = lift_sim.main(["--cases", "300", "--runs", "3", "--seed", "5",
                             "--database-url", db.url])
    # A 95% interval misses the truth one run in twenty: most of these three must cover it.
    assert figures["coverage"] >= 2 / 3
    assert 0.16 <= figures["mean_holdout_share"] <= 0.24  # 20% asked, 900 cases in all
