"""Experiments: the SMS holdout (a share of new cases gets email only) and its statistics.

Assignment is a pure function of the workflow id (SHA-256, first 8 bytes as a fraction): the same
case always lands in the same arm, on every worker and under replay, and the share of a large
number of cases converges on the percent asked for. The `register_case` activity records the arm
on the case row once; the send activity reads it from there.

The report compares recovery between the arms: the difference of two proportions with a 95%
Wald confidence interval (normal approximation), and says in words whether the lift is
significant yet (the interval excludes zero) or how far it is from being measurable.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

ARM_SMS = "sms"
ARM_HOLDOUT = "holdout"
Z_95 = 1.959963984540054


def bucket(workflow_id: str) -> float:
    """A stable number in [0, 100) for a case."""
    digest = hashlib.sha256(b"sms-holdout:" + workflow_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def assign_arm(workflow_id: str, holdout_percent: int | None) -> str | None:
    """`holdout` for the case's share of `holdout_percent`, else `sms`; None without an
    experiment."""
    if holdout_percent is None:
        return None
    return ARM_HOLDOUT if bucket(workflow_id) < holdout_percent else ARM_SMS


def assign_variant(workflow_id: str, b_percent: int | None) -> str | None:
    """The SMS template A/B test: `B` for the case's share of `b_percent`, else `A`; None
    without a test. Hashed apart from the holdout, so the two experiments are independent."""
    if b_percent is None:
        return None
    digest = hashlib.sha256(b"sms-ab:" + workflow_id.encode("utf-8")).digest()
    return "B" if int.from_bytes(digest[:8], "big") / 2**64 * 100 < b_percent else "A"


def check_percent(percent: int) -> int:
    from dunning.domain.contract import InputError

    if not 1 <= percent <= 50:
        raise InputError("percent", f"{percent} is not a holdout share from 1 to 50 (percent)")
    return percent


@dataclass(frozen=True)
class ArmFigures:
    arm: str
    cases: int
    recovered: int
    recovered_amount: int

    @property
    def rate(self) -> float:
        return self.recovered / self.cases if self.cases else 0.0


@dataclass(frozen=True)
class Lift:
    """Recovery rate of the SMS arm minus the holdout's, with its 95% interval."""

    difference: float
    low: float
    high: float
    significant: bool
    verdict: str


def _pct(x: float) -> str:
    return f"{x * 100:+.1f} points"


def lift(sms: ArmFigures, holdout: ArmFigures) -> Lift | None:
    """The SMS lift with a 95% confidence interval; None until both arms have cases."""
    if sms.cases == 0 or holdout.cases == 0:
        return None
    p1, p0 = sms.rate, holdout.rate
    diff = p1 - p0
    se = math.sqrt(p1 * (1 - p1) / sms.cases + p0 * (1 - p0) / holdout.cases)
    if se == 0:
        se = math.sqrt(0.25 / sms.cases + 0.25 / holdout.cases)  # all-or-nothing arms
    low, high = diff - Z_95 * se, diff + Z_95 * se
    significant = low > 0 or high < 0
    if significant and diff > 0:
        verdict = (f"SMS lifts recovery by {_pct(diff)} (95% CI {_pct(low)} to {_pct(high)}): "
                   "significant at the 5% level.")
    elif significant:
        verdict = (f"Cases with SMS recover {_pct(diff)} less (95% CI {_pct(low)} to "
                   f"{_pct(high)}): significant at the 5% level; check the SMS templates.")
    else:
        # Cases per arm for this difference to be significant with the current rates.
        needed = (math.ceil((Z_95 / diff) ** 2 * (p1 * (1 - p1) + p0 * (1 - p0)))
                  if diff else None)
        more = (f" at this difference, about {needed} cases per arm would show it"
                if needed else "")
        verdict = (f"Not significant yet: the lift is {_pct(diff)} but the 95% CI "
                   f"({_pct(low)} to {_pct(high)}) includes zero{';' if more else '.'}{more}"
                   + ("." if more else ""))
    return Lift(diff, low, high, significant, verdict)


__all__ = [
    "ARM_HOLDOUT",
    "ARM_SMS",
    "ArmFigures",
    "Lift",
    "assign_arm",
    "assign_variant",
    "bucket",
    "check_percent",
    "lift",
]
