"""`dunning stripe ...`: the Stripe webhook endpoint of an account and its signing secret."""

from __future__ import annotations

import re
from typing import Any

import typer

from dunning.accounts.accounts import get_account
from dunning.cli.common import JsonOpt, console, print_json, session, settings
from dunning.domain.contract import InputError
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


@app.command("set-secret")
def set_secret(
    account: str = AccountOpt,
    secret: str = typer.Option(
        ..., "--secret", prompt="Signing secret (whsec_...)", hide_input=True,
        help="The endpoint's signing secret; asked for (hidden) when left out.",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Set the signing secret Stripe events for this account are verified with."""
    value = check_secret(secret)
    with session() as s:
        acct = get_account(s, account)
        acct.stripe_webhook_secret = value
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
