"""The recovery report as one self-contained HTML page: inline CSS and SVG charts, no scripts,
no external assets (`dunning report --html FILE`). The figures come from
`dunning.cases.report.build_report`; nothing here reads the database."""

from __future__ import annotations

import html
import math
from collections import defaultdict
from datetime import date, timedelta
from typing import Any

from dunning.cases.report import CHANNELS, MESSAGE_STATUSES, amounts_text, money, percent
from dunning.domain.locales import format_amount

COLORS = {
    "recovered": "#10b981", "exhausted": "#f59e0b", "canceled": "#94a3b8", "active": "#3b82f6",
    "email": "#6366f1", "sms": "#0ea5e9", "none": "#cbd5e1", "spend": "#8b5cf6",
}
LABELS = {
    "recovered": "Recovered", "exhausted": "Exhausted", "canceled": "Canceled",
    "active": "Active", "email": "Email", "sms": "SMS", "none": "No reminder",
}
FONT = ("-apple-system, BlinkMacSystemFont, 'Segoe UI', Inter, Roboto, 'Helvetica Neue', "
        "Arial, sans-serif")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _nice_max(value: float, ticks: int = 4) -> tuple[float, float]:
    """An axis maximum at or above `value` and its tick step, on 1-2-5 steps."""
    if value <= 0:
        return 1.0, 1.0 / ticks
    raw = value / ticks
    power = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        step = mult * power
        if step >= raw:
            break
    if value >= 1 and step < 1:
        step = 1
    return step * math.ceil(value / step - 1e-9), step


def donut_svg(parts: list[tuple[str, int]], center_big: str, center_small: str) -> str:
    """A donut of `parts` (key, value); the keys pick colours and labels."""
    size, radius, width = 220, 80, 30
    c = size / 2
    circumference = 2 * math.pi * radius
    total = sum(v for _, v in parts)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {size} {size}" '
           f'width="{size}" height="{size}" role="img" aria-label="Outcomes">',
           f'<circle cx="{c}" cy="{c}" r="{radius}" fill="none" stroke="#eef2f7" '
           f'stroke-width="{width}"/>']
    offset = 0.0
    for key, value in parts:
        if not value:
            continue
        length = circumference * value / total
        gap = 2.0 if len([v for _, v in parts if v]) > 1 and length > 4 else 0.0
        out.append(
            f'<circle cx="{c}" cy="{c}" r="{radius}" fill="none" stroke="{COLORS[key]}" '
            f'stroke-width="{width}" stroke-dasharray="{length - gap:.2f} '
            f'{circumference - length + gap:.2f}" stroke-dashoffset="{-offset:.2f}" '
            f'transform="rotate(-90 {c} {c})"><title>{_e(LABELS[key])}: {value}</title>'
            '</circle>'
        )
        offset += length
    out.append(f'<text x="{c}" y="{c - 2}" text-anchor="middle" font-size="30" '
               f'font-weight="700" fill="#0f172a">{_e(center_big)}</text>')
    out.append(f'<text x="{c}" y="{c + 22}" text-anchor="middle" font-size="13" '
               f'fill="#64748b">{_e(center_small)}</text>')
    out.append("</svg>")
    return "".join(out)


def hbar_svg(rows: list[tuple[str, int, str]]) -> str:
    """Horizontal bars: (key, value, note shown under the bar)."""
    width, row_h, label_w, right = 520, 62, 110, 56
    height = row_h * len(rows)
    top = max([v for _, v, _ in rows] + [1])
    bar_w = width - label_w - right
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
           f'width="100%" role="img" aria-label="Recoveries by channel">']
    for i, (key, value, note) in enumerate(rows):
        y = 4 + i * row_h
        w = max(bar_w * value / top, 3 if value else 0)
        out.append(f'<text x="0" y="{y + 18}" font-size="14" fill="#334155">'
                   f'{_e(LABELS[key])}</text>')
        out.append(f'<rect x="{label_w}" y="{y + 2}" width="{bar_w}" height="22" rx="6" '
                   'fill="#f1f5f9"/>')
        if w:
            out.append(f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="22" rx="6" '
                       f'fill="{COLORS[key]}"><title>{_e(LABELS[key])}: {value}</title></rect>')
        out.append(f'<text x="{width}" y="{y + 18}" text-anchor="end" font-size="15" '
                   f'font-weight="700" fill="#0f172a">{value:,}</text>')
        if note:
            out.append(f'<text x="{label_w}" y="{y + 42}" font-size="12" '
                       f'fill="#64748b">{_e(note)}</text>')
    out.append("</svg>")
    return "".join(out)


def day_range(*series: list[dict[str, Any]]) -> list[date]:
    """Every day from the first to the last date found in the series (empty if none)."""
    days = [date.fromisoformat(p["date"]) for s in series for p in s]
    if not days:
        return []
    first, last = min(days), max(days)
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def bucket(days: list[date]) -> tuple[list[date], int]:
    """Long ranges are drawn by week (Mondays) so bars stay readable: (bucket starts, size)."""
    if len(days) <= 92:
        return days, 1
    start = days[0] - timedelta(days=days[0].weekday())
    weeks = (days[-1] - start).days // 7 + 1
    return [start + timedelta(weeks=i) for i in range(weeks)], 7


def columns_svg(
    values: list[tuple[date, float, str]], color: str, label: str,
) -> str:
    """Vertical bars over time: (day, value, tooltip). A y axis with nice ticks."""
    width, height = 1040, 260
    left, right, top, bottom = 56, 16, 16, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    peak, step = _nice_max(max([v for _, v, _ in values] + [0]))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
           f'width="100%" role="img" aria-label="{_e(label)}">']
    ticks = round(peak / step)
    for i in range(ticks + 1):
        v = step * i
        y = top + plot_h - plot_h * v / peak
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="{"#cbd5e1" if i == 0 else "#eef2f7"}" stroke-width="1"/>')
        out.append(f'<text x="{left - 10}" y="{y + 4:.1f}" text-anchor="end" font-size="12" '
                   f'fill="#94a3b8">{_e(_num(v))}</text>')
    n = max(len(values), 1)
    slot = plot_w / n
    bar = max(min(slot * 0.7, 48), 1.0)
    every = max(1, math.ceil(n / 12))
    for i, (day, value, tip) in enumerate(values):
        x = left + slot * i + (slot - bar) / 2
        h = plot_h * value / peak
        if value:
            h = max(h, 2)
            out.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" '
                       f'height="{h:.1f}" rx="{min(4, bar / 3):.1f}" fill="{color}">'
                       f'<title>{_e(tip)}</title></rect>')
        if i % every == 0:
            out.append(f'<text x="{x + bar / 2:.1f}" y="{height - 12}" text-anchor="middle" '
                       f'font-size="12" fill="#64748b">{day.strftime("%b")} {day.day}</text>')
    out.append("</svg>")
    return "".join(out)


def _series(
    report: dict[str, Any], days: list[date], size: int,
) -> tuple[list[tuple[date, float, str]], list[tuple[date, float, str]]]:
    def key(d: date) -> date:
        return d if size == 1 else d - timedelta(days=d.weekday())

    rec: dict[date, tuple[int, dict[str, int]]] = {}
    for p in report["daily"]["recoveries"]:
        k = key(date.fromisoformat(p["date"]))
        count, amounts = rec.get(k, (0, {}))
        merged = dict(amounts)
        for cur, v in p["amount"].items():
            merged[cur] = merged.get(cur, 0) + v["amount_minor"]
        rec[k] = (count + p["count"], merged)
    spend: dict[date, int] = defaultdict(int)
    for p in report["daily"]["sms_spend"]:
        spend[key(date.fromisoformat(p["date"]))] += p["credits"]
    prefix = "week of " if size == 7 else ""
    recoveries = []
    for d in days:
        count, amounts = rec.get(d, (0, {}))
        tip = f"{prefix}{d.isoformat()}: {count} recovered"
        if amounts:
            tip += " (" + amounts_text(money(amounts)) + ")"
        recoveries.append((d, float(count), tip))
    spends = [(d, float(spend.get(d, 0)), f"{prefix}{d.isoformat()}: {spend.get(d, 0)} credits")
              for d in days]
    return recoveries, spends


CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f6f7fb;color:#0f172a;font-family:%(font)s;
  -webkit-font-smoothing:antialiased;line-height:1.45}
.wrap{max-width:1120px;margin:0 auto;padding:40px 32px 56px}
header{display:flex;justify-content:space-between;align-items:flex-end;gap:24px;
  margin-bottom:28px}
.eyebrow{font-size:12px;letter-spacing:.12em;text-transform:uppercase;color:#64748b;
  font-weight:600}
h1{font-size:30px;margin:6px 0 0;letter-spacing:-.02em}
.meta{text-align:right;color:#64748b;font-size:13px}
.meta b{color:#0f172a;font-weight:600}
.cards{display:grid;grid-template-columns:repeat(5,1fr);gap:16px;margin-bottom:20px}
.card{background:#fff;border:1px solid #e6e9f0;border-radius:14px;padding:18px 20px;
  box-shadow:0 1px 2px rgba(15,23,42,.04)}
.card .k{font-size:12px;color:#64748b;font-weight:600;text-transform:uppercase;
  letter-spacing:.06em}
.card .v{font-size:28px;font-weight:700;margin-top:8px;letter-spacing:-.02em;
  white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.card .s{font-size:13px;color:#64748b;margin-top:4px}
.card.hero{background:linear-gradient(135deg,#059669,#10b981);border:none;color:#fff}
.card.hero .k,.card.hero .s{color:rgba(255,255,255,.85)}
.grid2{display:grid;grid-template-columns:1fr 1.35fr;gap:20px;margin-bottom:20px}
.panel{background:#fff;border:1px solid #e6e9f0;border-radius:14px;padding:22px 24px;
  box-shadow:0 1px 2px rgba(15,23,42,.04);margin-bottom:20px}
.grid2 .panel{margin-bottom:0}
h2{font-size:16px;margin:0 0 4px;letter-spacing:-.01em}
.sub{font-size:13px;color:#64748b;margin:0 0 16px}
.donut{display:flex;align-items:center;gap:28px}
.legend{list-style:none;margin:0;padding:0;font-size:14px;flex:1}
.legend li{display:flex;align-items:center;gap:10px;padding:7px 0;
  border-bottom:1px solid #f1f5f9}
.legend li:last-child{border-bottom:none}
.legend .dot{width:10px;height:10px;border-radius:3px;flex:none}
.legend .n{margin-left:auto;font-weight:700;font-variant-numeric:tabular-nums}
.legend .p{color:#94a3b8;width:52px;text-align:right;font-variant-numeric:tabular-nums}
table{border-collapse:collapse;width:100%%;font-size:14px;font-variant-numeric:tabular-nums}
th,td{padding:10px 12px;text-align:right;border-bottom:1px solid #f1f5f9}
th:first-child,td:first-child{text-align:left}
th{font-size:12px;color:#64748b;text-transform:uppercase;letter-spacing:.06em;font-weight:600}
tbody tr:last-child td{border-bottom:none}
.empty{color:#94a3b8;font-size:14px;padding:36px 0;text-align:center}
footer{color:#94a3b8;font-size:12px;text-align:center;margin-top:28px}
"""


def _card(key: str, value: str, sub: str, hero: bool = False) -> str:
    return (f'<div class="card{" hero" if hero else ""}"><div class="k">{_e(key)}</div>'
            f'<div class="v" title="{_e(value)}">{_e(value)}</div>'
            f'<div class="s">{_e(sub)}</div></div>')


def render_html(report: dict[str, Any]) -> str:
    """One self-contained HTML page for the report (no scripts, no external assets)."""
    cases = report["cases"]
    by_state = cases["by_state"]
    total = cases["total"]
    rec = report["recovered"]
    rate = report["recovery_rate"]
    spend = report["sms_spend"]
    median = report["median_time_to_recovery"]
    period = ("since " + report["since"][:10]) if report["since"] else "all time"
    generated = report["generated_at"][:16].replace("T", " ") + " UTC"

    # the currency with the most recoveries leads; the others follow in the line below
    order = sorted(rec["amount"], key=lambda c: -rec["cases_by_currency"].get(c, 0))
    amounts = [rec["amount"][c] for c in order]
    hero_value = amounts[0]["formatted"] if amounts else "0"
    hero_sub = f"{rec['count']} cases recovered"
    if len(amounts) > 1:
        hero_sub = " + ".join(a["formatted"] for a in amounts[1:]) + " · " + hero_sub
    spend_value = spend["price"]["formatted"] if spend["price"] else f"{spend['credits']:,}"
    spend_sub = (f"{spend['credits']:,} credits" if spend["price"] else "credits") + (
        f" · {spend['refunded']:,} refunded" if spend["refunded"] else "")
    cards = "".join([
        _card("Recovered", hero_value, hero_sub, hero=True),
        _card("Recovery rate", percent(rate["of_ended"]),
              f"of ended cases · {percent(rate['of_all'])} of all"
              if rate["of_ended"] is not None else "no case has ended yet"),
        _card("Cases", f"{total:,}", f"{cases['active']:,} still active"),
        _card("Median recovery", median["human"], "from payment failure"),
        _card("SMS spend", spend_value, spend_sub),
    ])

    # outcomes donut and legend
    parts = [(s, by_state[s]) for s in ("recovered", "exhausted", "canceled", "active")]
    legend = "".join(
        f'<li><span class="dot" style="background:{COLORS[k]}"></span>{_e(LABELS[k])}'
        f'<span class="n">{v:,}</span><span class="p">'
        f'{percent(v / total if total else None)}</span></li>'
        for k, v in parts
    )
    donut = donut_svg(parts, f"{total:,}", "cases" if total != 1 else "case")

    # recoveries by channel
    chan = report["recoveries_by_channel"]
    chan_rows = [(k, chan[k]["count"], amounts_text(chan[k]["amount"], "")) for k in CHANNELS]
    if rec["count"]:
        channel_block = hbar_svg(chan_rows)
    else:
        channel_block = '<div class="empty">No recoveries yet</div>'

    # over time
    days, size = bucket(day_range(report["daily"]["recoveries"], report["daily"]["sms_spend"]))
    per = "week" if size == 7 else "day"
    recoveries, spends = _series(report, days, size)
    if report["daily"]["recoveries"]:
        rec_chart = columns_svg(recoveries, COLORS["recovered"], "Recoveries over time")
    else:
        rec_chart = '<div class="empty">No recoveries in this period</div>'
    if any(v for _, v, _ in spends):
        spend_chart = columns_svg(spends, COLORS["spend"], "SMS spend over time")
    else:
        spend_chart = '<div class="empty">No SMS spend in this period</div>'

    # messages table
    msgs = report["messages"]["by_channel"]
    statuses = list(MESSAGE_STATUSES) + sorted(
        {s for row in msgs.values() for s in row} - set(MESSAGE_STATUSES))
    head = "".join(f"<th>{_e(s)}</th>" for s in statuses)
    body = "".join(
        f"<tr><td>{_e(LABELS.get(ch, ch))}</td>"
        + "".join(f"<td>{row.get(s, 0):,}</td>" for s in statuses)
        + f"<td><b>{sum(row.values()):,}</b></td></tr>"
        for ch, row in msgs.items()
    )
    replies = report["messages"]["compliance_replies"]
    replies_note = (f"{replies:,} HELP/STOP {'reply is' if replies == 1 else 'replies are'} "
                    "not counted as reminders."
                    if replies else "Reminders the engine tried to send.")
    price_note = ""
    if spend["price"]:
        unit = format_amount(spend["price"]["credit_price_minor"], spend["price"]["currency"])
        price_note = f" at {unit} per credit"

    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Recovery report · {_e(report['company_name'])}</title>
<style>{CSS % {"font": FONT}}</style></head>
<body><div class="wrap">
<header><div><div class="eyebrow">Recovery report</div>
<h1>{_e(report['company_name'])}</h1></div>
<div class="meta">Account <b>{_e(report['account_id'])}</b><br>
Period: <b>{_e(period)}</b><br>Generated {_e(generated)}</div></header>
<section class="cards">{cards}</section>
<section class="grid2">
<div class="panel"><h2>Outcomes</h2><p class="sub">Every case by its current state</p>
<div class="donut">{donut}<ul class="legend">{legend}</ul></div></div>
<div class="panel"><h2>Recoveries by channel</h2>
<p class="sub">The channel of the last reminder sent before the customer paid</p>
{channel_block}</div>
</section>
<section class="panel"><h2>Recoveries over time</h2>
<p class="sub">Cases recovered per {per} of recovery (UTC)</p>{rec_chart}</section>
<section class="panel"><h2>SMS spend over time</h2>
<p class="sub">Credits spent on SMS per {per}, net of refunds{_e(price_note)}</p>
{spend_chart}</section>
<section class="panel"><h2>Messages</h2><p class="sub">{_e(replies_note)}</p>
<table><thead><tr><th>Channel</th>{head}<th>Total</th></tr></thead>
<tbody>{body}</tbody></table></section>
<footer>dunning engine · figures from the case database</footer>
</div></body></html>
"""
