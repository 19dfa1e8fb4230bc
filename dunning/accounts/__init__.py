"""Accounts and their messaging settings: switches, templates, pricing."""
