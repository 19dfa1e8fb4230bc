"""The HTTP API under /api/v1: per-account API keys, problem+json errors, an OpenAPI document."""
