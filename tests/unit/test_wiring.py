"""worker.py is the composition root: it builds the balance follow-ups once (its email
provider, the configured gateways, a waker on its own client) and hands them to the
activities; nothing is found through a module global."""

from __future__ import annotations

from pathlib import Path

from dunning.credits.gateways import StripeGateway
from dunning.credits.wake import LoopWaker
from dunning.platform.db import Database
from dunning.platform.settings import Settings
from worker import build_activities


async def test_the_worker_wires_the_follow_ups(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, stripe_api_key="sk_test_wired",
                        stripe_api_url="http://127.0.0.1:9", email_from="billing@acme.test")
    db = Database(f"sqlite:///{tmp_path / 'wiring.db'}")
    client = object()  # the worker's Temporal client: only handed to the waker here
    try:
        acts = build_activities(settings, db, client)  # type: ignore[arg-type]
        follow = acts.followups
        assert follow.db is db and follow.email is acts.email
        assert follow.default_sender == "billing@acme.test"
        assert isinstance(follow.waker, LoopWaker) and follow.waker.client is client
        stripe = follow.gateways.get("stripe")
        assert isinstance(stripe, StripeGateway)
        assert (stripe.api_key, stripe.api_base) == ("sk_test_wired", "http://127.0.0.1:9")
        # Two workers in one process get two sets of collaborators, nothing shared.
        other = build_activities(settings, db, client)
        assert other.followups is not follow
    finally:
        db.dispose()
