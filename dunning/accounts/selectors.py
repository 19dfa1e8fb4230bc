"""Template selectors: a case with a decline code (Stripe's `decline_code`, e.g. `expired_card`)
gets the templates stored under the plan key `decline:<code>` when the account has any, e.g.
a different first message for an expired card than for insufficient funds:

    dunning sms template set --account A --plan decline:expired_card "..."
    dunning email template set --account A --plan decline:expired_card --step 1 ...

Otherwise the case's plan decides as before (plan, then the account's default, then built-in).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from dunning.platform.db.models import EmailTemplate, SmsTemplate

PREFIX = "decline:"


def decline_key(decline_code: str) -> str:
    return f"{PREFIX}{decline_code}"


def plan_for(session: Session, account_id: str, channel: str, plan: str | None,
             decline_code: str | None) -> str | None:
    """The template plan key for this reminder: `decline:<code>` if the account has a template
    for it on this channel, else `plan`."""
    if not decline_code:
        return plan
    key = decline_key(decline_code)
    model = SmsTemplate if channel == "sms" else EmailTemplate
    found = session.scalar(select(model.plan).where(model.account_id == account_id,
                                                    model.plan == key).limit(1))
    return key if found is not None else plan
