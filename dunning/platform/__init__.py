"""Adapters and process plumbing: settings, codec, Temporal connection, logs, metrics, database,
providers."""
