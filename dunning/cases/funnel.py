"""The reminder funnel per step and channel: sent -> delivered -> clicked -> recovered.

Per (step, channel), counted in cases (a case gets at most one message per step and channel):
- `sent`: the provider took the reminder (`messages.status = sent`);
- `delivered`: SMS with a delivery report `delivered`; email accepted by the mail server (SMTP
  gives no later report, so for email this equals `sent`);
- `clicked`: cases with at least one click on that reminder's tracked link (`link_clicks`;
  only with tracked links on);
- `recovered`: cases that got the reminder and were recovered afterwards; `recovered_after_click`
  those that also clicked it;
- `median_hours_to_recover`: from the reminder's send to the recovery, over the recovered ones.
"""

from __future__ import annotations

import html
import statistics
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dunning.platform.db.models import Case, LinkClick, Message


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def build_funnel(session: Session, account_id: str, since: datetime | None = None) -> list[
    dict[str, Any]
]:
    """One row per (step, channel) that has sent reminders, in step then channel order."""
    cases_q = select(Case.workflow_id, Case.state, Case.ended_at).where(
        Case.account_id == account_id
    )
    if since is not None:
        cases_q = cases_q.where(Case.failed_at >= since)
    cases = {wid: (state, ended) for wid, state, ended in session.execute(cases_q)}
    sent: dict[tuple[int, str], dict[str, datetime]] = defaultdict(dict)
    delivered: dict[tuple[int, str], set[str]] = defaultdict(set)
    for wid, step, channel, status, delivery, created in session.execute(
        select(Message.workflow_id, Message.step, Message.channel, Message.status,
               Message.delivery_status, Message.created_at)
        .where(Message.account_id == account_id, Message.step > 0)
    ):
        if wid not in cases or status != "sent":
            continue
        key = (int(step), str(channel))
        sent[key][wid] = _utc(created)
        if channel == "email" or delivery == "delivered":
            delivered[key].add(wid)
    clicked: dict[tuple[int, str], set[str]] = defaultdict(set)
    for wid, step, channel in session.execute(
        select(LinkClick.workflow_id, LinkClick.step, LinkClick.channel)
        .where(LinkClick.account_id == account_id)
    ):
        if wid in cases:
            clicked[(int(step), str(channel))].add(wid)
    rows = []
    for key in sorted(sent):
        step, channel = key
        recovered: list[str] = []
        hours: list[float] = []
        for wid, at in sent[key].items():
            state, ended = cases[wid]
            if state == "recovered" and ended is not None and _utc(ended) >= at:
                recovered.append(wid)
                hours.append((_utc(ended) - at).total_seconds() / 3600)
        clicks = clicked.get(key, set()) & set(sent[key])
        rows.append({
            "step": step,
            "channel": channel,
            "sent": len(sent[key]),
            "delivered": len(delivered[key]),
            "clicked": len(clicks),
            "recovered": len(recovered),
            "recovered_after_click": len(clicks & set(recovered)),
            "median_hours_to_recover": round(statistics.median(hours), 2) if hours else None,
        })
    return rows


def funnel_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The funnel in words, one line per step and channel."""
    lines = []
    for r in rows:
        median = r["median_hours_to_recover"]
        took = f", median {median:g} h to recover" if median is not None else ""
        lines.append(
            f"step {r['step']} {r['channel']}: {r['sent']} sent -> {r['delivered']} delivered "
            f"-> {r['clicked']} clicked -> {r['recovered']} recovered{took}"
        )
    return lines


def funnel_html(rows: list[dict[str, Any]]) -> str:
    """The funnel as a panel of the HTML report (same classes as its other tables)."""
    if not rows:
        return ""
    body = "".join(
        f"<tr><td>{r['step']}</td><td>{html.escape(r['channel'])}</td><td>{r['sent']:,}</td>"
        f"<td>{r['delivered']:,}</td><td>{r['clicked']:,}</td><td>{r['recovered']:,}</td>"
        f"<td>{'' if r['median_hours_to_recover'] is None else r['median_hours_to_recover']}"
        "</td></tr>"
        for r in rows
    )
    return (
        '<section class="panel"><h2>Funnel</h2><p class="sub">Cases per reminder: sent, '
        "delivered, clicked (tracked links), recovered afterwards; median hours from the "
        "reminder to the recovery</p><table><thead><tr><th>Step</th><th>Channel</th>"
        "<th>Sent</th><th>Delivered</th><th>Clicked</th><th>Recovered</th><th>Median h</th>"
        f"</tr></thead><tbody>{body}</tbody></table></section>\n"
    )


__all__ = ["build_funnel", "funnel_html", "funnel_lines"]
