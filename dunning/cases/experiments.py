"""The SMS holdout experiment: its setting on the account and its figures per arm.

`set_sms_holdout` switches the holdout on (a share of NEW cases gets email only; running cases
keep the arm they were given) or off. `experiment_report` compares the arms over the cases that
have ended: recovery rate, recovered amount, and the lift with its 95% confidence interval
(`dunning.domain.experiments.lift`), in numbers and in a sentence.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dunning.domain.contract import InputError
from dunning.domain.experiments import ARM_HOLDOUT, ARM_SMS, ArmFigures, check_percent, lift
from dunning.domain.locales import format_amount
from dunning.platform.db.models import Account, Case

ENDED = ("recovered", "exhausted", "canceled")


def set_sms_holdout(session: Session, account_id: str, percent: int | None) -> dict[str, Any]:
    """Hold `percent` of new cases out of SMS (None: off). Returns the setting."""
    account = session.get(Account, account_id, with_for_update=True)
    if account is None:
        raise InputError("account", f"unknown account {account_id!r}")
    account.sms_holdout_percent = None if percent is None else check_percent(percent)
    session.flush()
    return {"account_id": account_id, "sms_holdout_percent": account.sms_holdout_percent}


def experiment_report(
    session: Session, account_id: str, since: datetime | None = None
) -> dict[str, Any] | None:
    """Figures per arm, or None when no case of the account was ever assigned an arm."""
    q = select(Case.arm, Case.state, Case.recovered_amount, Case.currency).where(
        Case.account_id == account_id, Case.arm.is_not(None)
    )
    if since is not None:
        q = q.where(Case.failed_at >= since)
    counts: dict[str, dict[str, int]] = {
        arm: {"cases": 0, "ended": 0, "recovered": 0} for arm in (ARM_SMS, ARM_HOLDOUT)
    }
    amounts: dict[str, dict[str, int]] = {ARM_SMS: defaultdict(int), ARM_HOLDOUT: defaultdict(int)}
    seen = False
    for arm, state, recovered_amount, currency in session.execute(q):
        if arm not in counts:
            continue
        seen = True
        row = counts[arm]
        row["cases"] += 1
        if state in ENDED:
            row["ended"] += 1
        if state == "recovered":
            row["recovered"] += 1
            amounts[arm][currency] += int(recovered_amount or 0)
    if not seen:
        return None
    figures = {
        arm: ArmFigures(arm, counts[arm]["ended"], counts[arm]["recovered"],
                        sum(amounts[arm].values()))
        for arm in counts
    }
    result = lift(figures[ARM_SMS], figures[ARM_HOLDOUT])
    account = session.get(Account, account_id)
    return {
        "sms_holdout_percent": account.sms_holdout_percent if account else None,
        "arms": {
            arm: {
                **counts[arm],
                "recovery_rate": round(figures[arm].rate, 4) if counts[arm]["ended"] else None,
                "recovered_amount": {
                    cur: {"amount_minor": v, "formatted": format_amount(v, cur)}
                    for cur, v in sorted(amounts[arm].items())
                },
            }
            for arm in counts
        },
        "lift": None if result is None else {
            "difference": round(result.difference, 4),
            "ci95": [round(result.low, 4), round(result.high, 4)],
            "significant": result.significant,
        },
        "verdict": (result.verdict if result is not None
                    else "Not enough ended cases in both arms to compare yet."),
    }


__all__ = ["experiment_report", "set_sms_holdout"]
