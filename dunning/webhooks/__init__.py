"""The webhook server: Plivo inbound messages and delivery reports, Stripe billing events, and a
health check."""

from dunning.webhooks.app import create_app

__all__ = ["create_app"]
