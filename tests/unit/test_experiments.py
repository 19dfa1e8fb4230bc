"""The SMS holdout: deterministic assignment and the lift's confidence interval."""

from __future__ import annotations

import random

import pytest

from dunning.domain.contract import InputError
from dunning.domain.experiments import (
    ArmFigures,
    assign_arm,
    assign_variant,
    bucket,
    check_percent,
    lift,
)


def test_assignment_is_deterministic_and_off_without_a_percent() -> None:
    wid = "dunning:acme:inv_1"
    assert assign_arm(wid, 20) == assign_arm(wid, 20)
    assert 0 <= bucket(wid) < 100
    assert assign_arm(wid, None) is None


def test_twenty_percent_of_a_thousand_cases_land_in_the_holdout() -> None:
    arms = [assign_arm(f"dunning:acct-{n % 7}:inv_{n}", 20) for n in range(1000)]
    share = arms.count("holdout") / len(arms)
    assert 0.17 <= share <= 0.23, share
    assert arms.count("sms") + arms.count("holdout") == 1000


def test_a_larger_share_only_adds_cases_to_the_holdout() -> None:
    ids = [f"dunning:a:inv{n}" for n in range(500)]
    at10 = {i for i in ids if assign_arm(i, 10) == "holdout"}
    at30 = {i for i in ids if assign_arm(i, 30) == "holdout"}
    assert at10 <= at30


@pytest.mark.parametrize("percent", [0, 51, -5])
def test_percent_bounds(percent: int) -> None:
    with pytest.raises(InputError, match="percent"):
        check_percent(percent)


def test_lift_interval_and_verdict() -> None:
    strong = lift(ArmFigures("sms", 2000, 700, 0), ArmFigures("holdout", 500, 100, 0))
    assert strong is not None
    assert strong.difference == pytest.approx(0.15)
    assert strong.low < 0.15 < strong.high and strong.low > 0
    assert strong.significant and strong.verdict.startswith("SMS lifts recovery by +15.0 points")
    weak = lift(ArmFigures("sms", 40, 12, 0), ArmFigures("holdout", 10, 2, 0))
    assert weak is not None and not weak.significant
    assert weak.low < 0 < weak.high and "Not significant yet" in weak.verdict
    assert "cases per arm" in weak.verdict
    assert lift(ArmFigures("sms", 10, 3, 0), ArmFigures("holdout", 0, 0, 0)) is None


def test_the_interval_covers_the_true_lift_about_95_percent_of_the_time() -> None:
    rng = random.Random(7)
    covered = 0
    trials = 400
    for _ in range(trials):
        sms = sum(rng.random() < 0.30 for _ in range(800))
        held = sum(rng.random() < 0.22 for _ in range(200))
        result = lift(ArmFigures("sms", 800, sms, 0), ArmFigures("holdout", 200, held, 0))
        assert result is not None
        covered += result.low <= 0.08 <= result.high
    assert 0.91 <= covered / trials <= 0.98


def test_ab_variants_are_deterministic_and_independent_of_the_holdout() -> None:
    ids = [f"dunning:acct:inv{n}" for n in range(2000)]
    variants = [assign_variant(i, 50) for i in ids]
    assert variants == [assign_variant(i, 50) for i in ids]
    assert 0.46 <= variants.count("B") / len(ids) <= 0.54
    assert assign_variant(ids[0], None) is None
    held = [i for i in ids if assign_arm(i, 20) == "holdout"]
    share_b_in_holdout = sum(assign_variant(i, 50) == "B" for i in held) / len(held)
    assert 0.42 <= share_b_in_holdout <= 0.58  # a different hash: no correlation
