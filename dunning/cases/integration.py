"""An account's billing-system integration settings: the end-of-dunning action and whether a
changed card pays open invoices at once. Shared by `dunning account update` and `show`."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from dunning.accounts.accounts import get_account
from dunning.cases.end_actions import check_action
from dunning.domain.contract import InputError
from dunning.platform.db.models import Account

_SWITCH = {"on": True, "off": False, "true": True, "false": False, "yes": True, "no": False}


def check_switch(value: str, field_name: str) -> bool:
    switch = _SWITCH.get((value or "").strip().lower())
    if switch is None:
        raise InputError(field_name, f"{value!r} is not on or off")
    return switch


def apply(session: Session, account_id: str, on_exhausted: str | None,
          charge_on_card_update: str | None, daily_message_limit: int | None = None) -> None:
    """Validate every value first: a bad one changes nothing."""
    action = check_action(on_exhausted) if on_exhausted is not None else None
    charge = (check_switch(charge_on_card_update, "charge-on-card-update")
              if charge_on_card_update is not None else None)
    if daily_message_limit is not None and not 0 <= daily_message_limit <= 100:
        raise InputError("daily-message-limit", "must be 0 (no limit) to 100")
    account = get_account(session, account_id)
    if daily_message_limit is not None:
        account.daily_message_limit = daily_message_limit
    if action is not None:
        account.on_exhausted = action
    if charge is not None:
        account.charge_on_card_update = charge


def settings_json(account: Account) -> dict[str, Any]:
    return {"on_exhausted": account.on_exhausted or "none",
            "charge_on_card_update": bool(account.charge_on_card_update),
            "daily_message_limit": int(account.daily_message_limit
                                       if account.daily_message_limit is not None else 1)}
