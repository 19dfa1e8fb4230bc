"""Experiments: the SMS holdout and the SMS template A/B test, their settings and figures.

`set_sms_holdout` switches the holdout on (a share of NEW cases gets email only; running cases
keep the arm they were given) or off. `experiment_report` compares the arms over the cases that
have ended: recovery rate, recovered amount, and the lift with its 95% confidence interval
(`dunning.domain.experiments.lift`), in numbers and in a sentence.

`set_sms_ab_test` sends template B to a share of new cases (template A: whatever they would get
otherwise); the report compares the variants the same way (`"sms_template"`).
"""

from __future__ import annotations

import html
from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dunning.accounts.messaging import account_sample_context
from dunning.domain.contract import InputError
from dunning.domain.experiments import ARM_HOLDOUT, ARM_SMS, ArmFigures, check_percent, lift
from dunning.domain.locales import format_amount, locale_chain
from dunning.domain.templates import validate_sms_template
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


def set_sms_ab_test(
    session: Session, account_id: str, template_b: str | None, percent: int | None
) -> dict[str, Any]:
    """Send template B to `percent` of new cases' SMS (the others keep their usual template,
    A), or stop (None). Template B is validated like any SMS template, in the account's locale."""
    account = session.get(Account, account_id, with_for_update=True)
    if account is None:
        raise InputError("account", f"unknown account {account_id!r}")
    if percent is None:
        account.sms_ab_percent = None
        account.sms_ab_template = None
    else:
        if not 1 <= percent <= 99:
            raise InputError("percent", f"{percent} is not a share from 1 to 99 (percent)")
        if template_b is None:
            raise InputError("template", "template B is required to start an A/B test")
        chain = locale_chain(None, account.locale)
        validate_sms_template(template_b, account_sample_context(account, locale=chain[0]),
                              chain)
        account.sms_ab_percent = percent
        account.sms_ab_template = template_b
    session.flush()
    return {"account_id": account_id, "sms_ab_percent": account.sms_ab_percent,
            "template_b": account.sms_ab_template}


def _ab_report(session: Session, account_id: str, since: datetime | None) -> dict[str, Any] | None:
    q = select(Case.sms_variant, Case.state).where(
        Case.account_id == account_id, Case.sms_variant.is_not(None)
    )
    if since is not None:
        q = q.where(Case.failed_at >= since)
    counts = {v: {"cases": 0, "ended": 0, "recovered": 0} for v in ("A", "B")}
    seen = False
    for variant, state in session.execute(q):
        if variant not in counts:
            continue
        seen = True
        counts[variant]["cases"] += 1
        counts[variant]["ended"] += state in ENDED
        counts[variant]["recovered"] += state == "recovered"
    if not seen:
        return None
    a = ArmFigures("A", counts["A"]["ended"], counts["A"]["recovered"], 0)
    b = ArmFigures("B", counts["B"]["ended"], counts["B"]["recovered"], 0)
    result = lift(b, a)
    verdict = "Not enough ended cases with both templates to compare yet."
    if result is not None:
        verdict = (result.verdict.replace("SMS lifts recovery", "Template B lifts recovery")
                   .replace("Cases with SMS recover", "Cases with template B recover")
                   .replace("; check the SMS templates", ""))
    return {
        "variants": {
            v: {**counts[v], "recovery_rate": round(f.rate, 4) if counts[v]["ended"] else None}
            for v, f in (("A", a), ("B", b))
        },
        "lift": None if result is None else {
            "difference": round(result.difference, 4),
            "ci95": [round(result.low, 4), round(result.high, 4)],
            "significant": result.significant,
        },
        "verdict": verdict,
    }


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
    ab = _ab_report(session, account_id, since)
    if not seen:
        return {"sms_template": ab} if ab is not None else None
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
        "sms_template": ab,
    }


def experiment_html(report: dict[str, Any] | None) -> str:
    """The experiments as panels of the HTML report."""
    if not report:
        return ""
    out = []
    if report.get("arms"):
        rows = "".join(
            f"<tr><td>{arm}</td><td>{row['cases']:,}</td><td>{row['ended']:,}</td>"
            f"<td>{row['recovered']:,}</td><td>{_rate(row['recovery_rate'])}</td>"
            f"<td>{html.escape(_amounts(row['recovered_amount']))}</td></tr>"
            for arm, row in report["arms"].items()
        )
        out.append(
            '<section class="panel"><h2>SMS holdout</h2>'
            f'<p class="sub">{html.escape(report["verdict"])}</p><table><thead><tr><th>Arm</th>'
            "<th>Cases</th><th>Ended</th><th>Recovered</th><th>Rate</th><th>Amount</th></tr>"
            f"</thead><tbody>{rows}</tbody></table></section>\n"
        )
    ab = report.get("sms_template")
    if ab:
        rows = "".join(
            f"<tr><td>{v}</td><td>{row['cases']:,}</td><td>{row['ended']:,}</td>"
            f"<td>{row['recovered']:,}</td><td>{_rate(row['recovery_rate'])}</td></tr>"
            for v, row in ab["variants"].items()
        )
        out.append(
            '<section class="panel"><h2>SMS template A/B test</h2>'
            f'<p class="sub">{html.escape(ab["verdict"])}</p><table><thead><tr><th>Template'
            "</th><th>Cases</th><th>Ended</th><th>Recovered</th><th>Rate</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></section>\n"
        )
    return "".join(out)


def _amounts(amounts: dict[str, dict[str, Any]]) -> str:
    return " + ".join(a["formatted"] for a in amounts.values()) or "0"


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


__all__ = ["experiment_html", "experiment_report", "set_sms_ab_test", "set_sms_holdout"]
