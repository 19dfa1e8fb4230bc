"""Outbound events: what a billing system learns about its cases, as Standard Webhooks.

- `catalog`: the event types (pure).
- `signing`: secrets and signatures (Standard Webhooks, HMAC-SHA256).
- `endpoints`: an account's receivers (add, list, remove, rotate the secret).
- `outbox`: recording an event in the transaction of the change that caused it, and one
  pending delivery per subscribed endpoint; listing and redelivering.
- `delivery`: posting an endpoint's pending deliveries in order, logging every attempt.
- `kicker`: the worker's loop that starts or signals an endpoint's delivery workflow
  (workflows/events.py) when deliveries are pending.
"""
