"""`dunning stripe ...`: the Stripe webhook endpoint of an account and its signing secret."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import typer
from sqlalchemy import select

from dunning.accounts.accounts import get_account
from dunning.cli.common import JsonOpt, console, print_json, session, settings
from dunning.domain.contract import InputError
from dunning.platform.db.models import Account
from dunning.platform.secret_box import SecretUnreadable, secret_box_for, stripe_context
from dunning.webhooks.app import STRIPE_PATH

app = typer.Typer(
    help="Stripe billing events: the account's webhook endpoint and signing secret.",
    no_args_is_help=True,
)
AccountOpt = typer.Option(..., "--account", help="The account id.")

_SECRET_RE = re.compile(r"^whsec_[A-Za-z0-9+/=_\-]{8,193}$")


def _endpoint(account_id: str) -> str:
    return settings().public_url.rstrip("/") + STRIPE_PATH.format(account_id=account_id)


def _info(account_id: str, secret: str | None) -> dict[str, Any]:
    return {
        "account_id": account_id,
        "endpoint_url": _endpoint(account_id),
        "secret_set": bool(secret),
        "events": [
            "invoice.payment_failed", "invoice.paid", "invoice.voided",
            "invoice.marked_uncollectible", "customer.subscription.deleted",
            "customer.created", "customer.updated", "payment_method.attached",
        ],
    }


def check_secret(secret: str) -> str:
    """A Stripe endpoint signing secret (`whsec_...`), as the dashboard or `stripe listen`
    shows it; InputError otherwise."""
    value = secret.strip()
    if not _SECRET_RE.match(value):
        raise InputError(
            "secret", "is not a Stripe webhook signing secret (whsec_..., from the endpoint's "
            "page in the Stripe dashboard or from `stripe listen`)"
        )
    return value


def read_secret(secret_file: Path | None) -> str:
    """The secret from `--secret-file` (`-`: stdin), else from stdin when it is not a terminal,
    else from a hidden prompt. Never from the command line (argv is visible to every local user
    and kept in shell histories)."""
    if secret_file is not None:
        try:
            text = sys.stdin.read() if str(secret_file) == "-" else secret_file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError("secret-file", f"cannot read {secret_file}: {exc}") from None
    elif not sys.stdin.isatty():
        text = sys.stdin.readline()
    else:
        text = typer.prompt("Signing secret (whsec_...)", hide_input=True)
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise InputError("secret", "expected the signing secret on one line")
    return lines[0]


@app.command("set-secret")
def set_secret(
    account: str = AccountOpt,
    secret_file: Path | None = typer.Option(
        None, "--secret-file",
        help="Read the secret from this file (`-`: stdin). Without it: from stdin when piped, "
             "else asked for (hidden). Never given on the command line.",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Set the signing secret Stripe events for this account are verified with (stored
    encrypted with DUNNING_SECRET_KEYS)."""
    value = check_secret(read_secret(secret_file))
    box = secret_box_for(settings())
    with session() as s:
        acct = get_account(s, account)
        acct.stripe_webhook_secret = box.seal(value, context=stripe_context(account))
    data = _info(account, value)
    if as_json:
        print_json(data)
        return
    console.print(f"Stripe signing secret set for account {account}.", highlight=False)
    console.print(f"Endpoint URL for Stripe: {data['endpoint_url']}", highlight=False,
                  markup=False)


@app.command("clear-secret")
def clear_secret(account: str = AccountOpt, as_json: bool = JsonOpt) -> None:
    """Remove the signing secret: every Stripe event for this account is refused (403)."""
    with session() as s:
        get_account(s, account).stripe_webhook_secret = None
    if as_json:
        print_json(_info(account, None))
        return
    console.print(f"Stripe signing secret removed for account {account}: its Stripe events "
                  "are refused until one is set.", highlight=False)


@app.command()
def reseal(as_json: bool = JsonOpt) -> None:
    """Encrypt every stored signing secret with the first key of DUNNING_SECRET_KEYS: secrets
    stored in plain text before, and those under an older key (after a key rotation)."""
    box = secret_box_for(settings())
    count = 0
    with session() as s:
        for acct in s.scalars(select(Account).where(Account.stripe_webhook_secret.is_not(None))):
            context = stripe_context(acct.id)
            try:
                plain = box.open(acct.stripe_webhook_secret, context=context)
            except SecretUnreadable as exc:
                raise InputError("secret", f"account {acct.id}: {exc}") from None
            if plain:
                acct.stripe_webhook_secret = box.seal(plain, context=context)
                count += 1
    if as_json:
        print_json({"resealed": count})
        return
    console.print(f"{count} signing secrets encrypted with the current key.", highlight=False)


@app.command()
def show(account: str = AccountOpt, as_json: bool = JsonOpt) -> None:
    """The endpoint URL to give Stripe, the events to send to it and whether a secret is set
    (the secret itself is never shown)."""
    with session() as s:
        secret = get_account(s, account).stripe_webhook_secret
    data = _info(account, secret)
    if as_json:
        print_json(data)
        return
    console.print(f"Endpoint URL: {data['endpoint_url']}", highlight=False, markup=False)
    console.print(f"Events: {', '.join(data['events'])}", highlight=False, markup=False)
    console.print(
        "Signing secret: " + ("set" if data["secret_set"] else
                              "not set (dunning stripe set-secret): events are refused"),
        highlight=False, markup=False,
    )
