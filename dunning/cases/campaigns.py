"""Campaigns: a schedule per plan (e.g. monthly 0d,3d,7d,14d; annual up to 28d), each with its own
grace, SMS step switches and end-of-dunning action. The account's own schedule is the default
campaign (cases of plans without one, and cases without a plan).

A case takes its plan's campaign as it is when the case starts: the workflow asks for it once,
right after registering (`campaign_for_case`), and the answer is kept in its history, so editing
or removing a campaign never reschedules a running case (README: how to do that deliberately).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dunning.accounts.accounts import get_account
from dunning.cases.end_actions import check_action
from dunning.customers import conversation
from dunning.domain.contract import (
    InputError,
    check_id,
    format_duration,
    format_schedule,
    parse_duration,
    parse_schedule,
)
from dunning.domain.outbound import CampaignSnapshot
from dunning.platform.db.models import Campaign, Customer, utcnow

MAX_GRACE = 365 * 86400


def parse_sms_steps(text: str, steps: int) -> list[int]:
    """`1,3` -> [1, 3]: the steps that send an SMS (the others send email only); `none` -> []."""
    value = (text or "").strip().lower()
    if value in ("none", "off"):
        return []
    out: set[int] = set()
    for part in value.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise InputError("sms-steps", f"{text!r} is not a list of step numbers like 1,3 "
                                          "(or none)")
        if int(part) > steps:
            raise InputError("sms-steps", f"step {part} is past the schedule's {steps} steps")
        out.add(int(part))
    return sorted(out)


@dataclass(frozen=True)
class CampaignInput:
    schedule: str
    grace: str | None = None
    sms_steps: str | None = None
    on_exhausted: str | None = None


def set_campaign(session: Session, account_id: str, plan: str, opts: CampaignInput) -> Campaign:
    """Create or replace the plan's campaign; every value is checked before anything changes."""
    account = get_account(session, account_id)
    check_id("plan", plan)
    offsets = parse_schedule(opts.schedule)
    grace = (parse_duration(opts.grace, "grace") if opts.grace is not None
             else int(account.grace_seconds))
    if grace > MAX_GRACE:
        raise InputError("grace", "at most 365d")
    steps = parse_sms_steps(opts.sms_steps, len(offsets)) if opts.sms_steps is not None else None
    action = check_action(opts.on_exhausted) if opts.on_exhausted is not None else None
    row = session.get(Campaign, (account_id, plan))
    if row is None:
        row = Campaign(account_id=account_id, plan=plan)
        session.add(row)
    row.schedule = format_schedule(offsets)
    row.grace_seconds = grace
    row.sms_steps = steps
    row.on_exhausted = action
    row.updated_at = utcnow()
    session.flush()
    return row


def get_campaign(session: Session, account_id: str, plan: str) -> Campaign:
    get_account(session, account_id)
    row = session.get(Campaign, (account_id, plan))
    if row is None:
        raise InputError("plan", f"no campaign for plan {plan!r} of account {account_id!r}")
    return row


def list_campaigns(session: Session, account_id: str) -> list[Campaign]:
    get_account(session, account_id)
    return list(session.scalars(select(Campaign).where(Campaign.account_id == account_id)
                                .order_by(Campaign.plan)))


def remove_campaign(session: Session, account_id: str, plan: str) -> None:
    session.delete(get_campaign(session, account_id, plan))


def campaign_json(row: Campaign) -> dict[str, Any]:
    return {
        "account_id": row.account_id,
        "plan": row.plan,
        "schedule": row.schedule,
        "grace": format_duration(row.grace_seconds),
        "sms_steps": row.sms_steps if row.sms_steps is not None else "account",
        "on_exhausted": row.on_exhausted or "account",
    }


@dataclass(frozen=True)
class Snapshot:
    plan: str
    offsets: list[int]
    grace_seconds: int
    sms_steps: list[int] | None
    on_exhausted: str | None


def case_snapshot(session: Session, account_id: str, customer_id: str,
                  plan: str | None) -> CampaignSnapshot:
    """What a starting case keeps: its plan's campaign as it is now (or `found` False: the
    account's schedule), and whether the operator excluded the customer."""
    snap = snapshot_for(session, account_id, customer_id, plan)
    excluded = conversation.is_excluded(session, account_id, customer_id)
    if snap is None:
        return CampaignSnapshot(False, excluded=excluded)
    return CampaignSnapshot(True, snap.plan, snap.offsets, snap.grace_seconds, snap.sms_steps,
                            snap.on_exhausted, excluded)


def snapshot_for(session: Session, account_id: str, customer_id: str,
                 plan: str | None) -> Snapshot | None:
    """The campaign a case of this plan (or, without one, of the customer's stored plan) runs
    under; None: the account's schedule."""
    if not plan:
        plan = session.scalar(select(Customer.plan).where(
            Customer.account_id == account_id, Customer.customer_id == customer_id))
    if not plan:
        return None
    row = session.get(Campaign, (account_id, plan))
    if row is None:
        return None
    return Snapshot(row.plan, parse_schedule(row.schedule), int(row.grace_seconds),
                    list(row.sms_steps) if row.sms_steps is not None else None,
                    row.on_exhausted)
