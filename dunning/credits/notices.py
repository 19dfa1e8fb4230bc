"""Balance notices: the emails an account's contact gets about its SMS credits.

`low` when a debit takes the balance below the auto-refill threshold, `zero` when the balance
hits zero or a text cannot be paid (SMS paused), `refill_failed` when an auto-refill failed.
`accounts.balance_notice` remembers the last one sent (see `dunning.credits.followups`), so each
crossing notifies once, never per message. The email provider is passed in by the caller.
"""

from __future__ import annotations

import logging
import uuid

from dunning.accounts import pricing
from dunning.credits import ledger
from dunning.platform.db import Database
from dunning.platform.db.models import Account
from dunning.platform.providers.email import EmailProvider, OutgoingEmail

log = logging.getLogger("dunning.refill")

REFILL_FAILED = "refill_failed"


def notice_email(account: Account, kind: str, balance: int, sender: str,
                 detail: str = "") -> OutgoingEmail | None:
    if not account.contact_email:
        return None
    value = pricing.credits_value(account, balance)
    shown = f"{balance} credits" + (f" (= {value})" if value else "")
    refill_on = account.auto_refill_threshold is not None and account.auto_refill_amount
    how = (f"dunning credits topup --account {account.id} N")
    if kind == ledger.NOTICE_LOW:
        subject = f"{account.company_name}: SMS credits are running low ({balance} left)"
        lines = [
            f"The SMS credit balance of {account.id} fell below "
            f"{account.auto_refill_threshold} credits: it is now {shown}.",
            (f"An automatic refill of {account.auto_refill_amount} credits has been started."
             if refill_on else "Top up to keep text reminders going."),
        ]
    elif kind == ledger.NOTICE_ZERO:
        subject = f"{account.company_name}: SMS credits used up, text reminders paused"
        lines = [
            f"The SMS credit balance of {account.id} is {shown}, not enough for the next text.",
            "Text reminders are paused and resume by themselves, oldest first, as soon as "
            "credits are added. Email reminders go on as scheduled.",
        ]
    else:  # REFILL_FAILED
        subject = f"{account.company_name}: automatic SMS credit refill failed"
        lines = [
            f"The automatic refill of {account.auto_refill_amount} credits for {account.id} "
            f"failed: {detail}",
            f"The balance is {shown}. It is not retried automatically; text reminders stay "
            "paused once the credits run out (email reminders go on).",
        ]
    lines += ["", f"To add credits: {how}", ""]
    return OutgoingEmail(
        sender=account.email_from or sender,
        to=account.contact_email,
        subject=subject,
        body="\n".join(lines),
        message_id=f"<credits-{kind}-{uuid.uuid4().hex}@dunning>",
    )


def send_notice(
    db: Database,
    account_id: str,
    kind: str,
    email: EmailProvider,
    default_sender: str = "billing@localhost",
    *,
    detail: str = "",
) -> bool:
    """Email the account's contact about its balance (low | zero) or a failed refill."""
    with db.session() as s:
        account = s.get(Account, account_id)
        if account is None:
            return False
        balance = int(account.credit_balance)
        msg = notice_email(account, kind, balance, default_sender, detail)
    if msg is None:
        log.info("balance notice %s for %s: no contact email", kind, account_id)
        return False
    try:
        email.send(msg)
    except Exception as exc:
        log.warning("balance notice %s for %s not sent: %s", kind, account_id, exc)
        return False
    return True
