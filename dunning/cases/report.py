"""Recovery figures for one account, from the database: `dunning report`.

`build_report` returns one JSON-ready dict; `dunning.cases.report_html.render_html` turns it
into a self-contained page (inline CSS and SVG charts, no scripts, no external assets).

Figures:
- cases: total, by state, active; with `since`, only cases whose payment failed at or after it.
- recovered: count and amount per currency (minor units plus formatted).
- recovery rate: recovered / ended cases (recovered + exhausted + canceled), and / all cases.
- recoveries by the channel of the last reminder sent before the case ended (email, sms, none).
- SMS spend: credits debited for SMS less credits refunded (the ledger), and its display price
  when the account has `credit_price_minor` and `credit_currency`; with `since`, ledger entries
  made at or after it.
- messages (reminders only; HELP/STOP replies are counted apart) by channel and status.
- median time to recovery: from the payment failure to the recovery.
- daily series (UTC days): recoveries by day of recovery, SMS spend by day of ledger entry.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import UTC, date, datetime, time
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from dunning.accounts.accounts import get_account
from dunning.domain.contract import InputError
from dunning.domain.locales import format_amount
from dunning.platform.db.models import Case, CreditEntry, Message

STATES = ("active", "recovered", "exhausted", "canceled")
ENDED = ("recovered", "exhausted", "canceled")
CHANNELS = ("email", "sms", "none")
MESSAGE_CHANNELS = ("email", "sms")
MESSAGE_STATUSES = ("sent", "failed", "skipped", "unknown")
COMPLIANCE_PREFIXES = ("help:", "stop:")


# --- inputs -----------------------------------------------------------------------------------


def parse_since(value: str) -> datetime:
    """`2026-03-01` (midnight UTC) or an RFC 3339 timestamp with an offset."""
    text = value.strip()
    try:
        day = date.fromisoformat(text)
    except ValueError:
        pass
    else:
        if len(text) == 10:
            return datetime.combine(day, time(0), tzinfo=UTC)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(
            "since", f"{value!r} is not a date like 2026-03-01 or a timestamp like "
            "2026-03-01T09:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything the engine stores is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# --- figures ----------------------------------------------------------------------------------


def money(amounts: dict[str, int]) -> dict[str, dict[str, Any]]:
    """{"USD": 4900} -> {"USD": {"amount_minor": 4900, "formatted": "$49.00"}}, by currency."""
    return {
        cur: {"amount_minor": int(v), "formatted": format_amount(int(v), cur)}
        for cur, v in sorted(amounts.items())
    }


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def human_duration(seconds: float | None) -> str:
    """3d 4h, 5h 12m, 42m, 30s; '-' for None."""
    if seconds is None:
        return "-"
    total = round(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"


def build_report(
    session: Session, account_id: str, *, since: datetime | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The account's recovery figures as one JSON-ready dict (InputError: unknown account)."""
    account = get_account(session, account_id)
    since = _utc(since) if since is not None else None

    # cases by state and currency
    case_filter = [Case.account_id == account_id]
    if since is not None:
        case_filter.append(Case.failed_at >= since)
    by_state = dict.fromkeys(STATES, 0)
    due: dict[str, int] = defaultdict(int)
    outstanding: dict[str, int] = defaultdict(int)
    for state, currency, count, amount_due in session.execute(
        select(Case.state, Case.currency, func.count(), func.sum(Case.amount_due))
        .where(*case_filter)
        .group_by(Case.state, Case.currency)
    ):
        by_state[state] = by_state.get(state, 0) + int(count)
        due[currency] += int(amount_due or 0)
        if state == "active":
            outstanding[currency] += int(amount_due or 0)
    total = sum(by_state.values())
    ended = sum(by_state[s] for s in ENDED)

    # recovered cases one by one: channel, day, time to recovery
    recovered: dict[str, int] = defaultdict(int)
    recovered_cases: dict[str, int] = defaultdict(int)
    by_channel: dict[str, dict[str, Any]] = {
        ch: {"count": 0, "amounts": defaultdict(int)} for ch in CHANNELS
    }
    by_day: dict[date, dict[str, Any]] = {}
    durations: list[float] = []
    rows = session.execute(
        select(Case.failed_at, Case.ended_at, Case.currency, Case.recovered_amount,
               Case.last_channel)
        .where(*case_filter, Case.state == "recovered")
        .execution_options(yield_per=2000)
    )
    for failed_at, ended_at, currency, amount, last_channel in rows:
        amount = int(amount or 0)
        recovered[currency] += amount
        recovered_cases[currency] += 1
        channel = last_channel if last_channel in MESSAGE_CHANNELS else "none"
        by_channel[channel]["count"] += 1
        by_channel[channel]["amounts"][currency] += amount
        if ended_at is not None:
            end = _utc(ended_at)
            durations.append(max(0.0, (end - _utc(failed_at)).total_seconds()))
            day = by_day.setdefault(end.date(), {"count": 0, "amounts": defaultdict(int)})
            day["count"] += 1
            day["amounts"][currency] += amount
    median = statistics.median(durations) if durations else None

    # reminders by channel and status; HELP/STOP replies apart
    msg_filter = [Message.account_id == account_id]
    if since is not None:
        msg_filter.append(Message.created_at >= since)
    is_reply = or_(*(Message.workflow_id.startswith(p) for p in COMPLIANCE_PREFIXES))
    messages: dict[str, dict[str, int]] = {
        ch: dict.fromkeys(MESSAGE_STATUSES, 0) for ch in MESSAGE_CHANNELS
    }
    message_credits = 0
    for channel, status, count, spent in session.execute(
        select(Message.channel, Message.status, func.count(), func.sum(Message.credits))
        .where(*msg_filter, ~is_reply)
        .group_by(Message.channel, Message.status)
    ):
        messages.setdefault(channel, dict.fromkeys(MESSAGE_STATUSES, 0))
        messages[channel][status] = messages[channel].get(status, 0) + int(count)
        message_credits += int(spent or 0)
    replies = int(session.execute(
        select(func.count()).select_from(Message).where(*msg_filter, is_reply)
    ).scalar_one())

    # SMS spend from the ledger: debits less refunds
    ledger_filter = [
        CreditEntry.account_id == account_id,
        CreditEntry.kind.in_(("sms_debit", "refund")),
    ]
    if since is not None:
        ledger_filter.append(CreditEntry.created_at >= since)
    debited = refunded = 0
    spend_by_day: dict[date, int] = defaultdict(int)
    for kind, amount, created_at in session.execute(
        select(CreditEntry.kind, CreditEntry.amount, CreditEntry.created_at)
        .where(and_(*ledger_filter))
        .execution_options(yield_per=2000)
    ):
        amount = int(amount)
        if kind == "sms_debit":
            debited += -amount
        else:
            refunded += amount
        spend_by_day[_utc(created_at).date()] += -amount
    spent = debited - refunded
    price: dict[str, Any] | None = None
    if account.credit_price_minor is not None and account.credit_currency:
        cost = spent * account.credit_price_minor
        price = {
            "amount_minor": cost, "currency": account.credit_currency,
            "formatted": format_amount(cost, account.credit_currency),
            "credit_price_minor": account.credit_price_minor,
        }

    return {
        "account_id": account.id,
        "company_name": account.company_name,
        "generated_at": _utc(now or datetime.now(UTC)).isoformat(),
        "since": since.isoformat() if since else None,
        "cases": {
            "total": total, "active": by_state["active"], "ended": ended, "by_state": by_state,
            "amount_due": money(due), "outstanding": money(outstanding),
        },
        "recovered": {
            "count": by_state["recovered"], "amount": money(recovered),
            "cases_by_currency": dict(sorted(recovered_cases.items())),
        },
        "recovery_rate": {
            "of_ended": _rate(by_state["recovered"], ended),
            "of_all": _rate(by_state["recovered"], total),
        },
        "recoveries_by_channel": {
            ch: {"count": v["count"], "amount": money(v["amounts"])}
            for ch, v in by_channel.items()
        },
        "median_time_to_recovery": {
            "seconds": median, "human": human_duration(median), "cases": len(durations),
        },
        "sms_spend": {
            "credits": spent, "debited": debited, "refunded": refunded, "price": price,
            "balance": account.credit_balance,
        },
        "messages": {
            "by_channel": messages,
            "sms_credits": message_credits,
            "compliance_replies": replies,
        },
        "daily": {
            "recoveries": [
                {"date": d.isoformat(), "count": v["count"], "amount": money(v["amounts"])}
                for d, v in sorted(by_day.items())
            ],
            "sms_spend": [
                {"date": d.isoformat(), "credits": v} for d, v in sorted(spend_by_day.items())
            ],
        },
    }


def amounts_text(amount: dict[str, dict[str, Any]], empty: str = "0") -> str:
    """The formatted amounts of a `money()` dict, joined: `$49.00 + 12,00 €`."""
    return " + ".join(v["formatted"] for v in amount.values()) or empty


def percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"
