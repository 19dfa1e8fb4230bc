"""Customers: the phone import, the customer records and consent (opt-out/opt-in)."""
