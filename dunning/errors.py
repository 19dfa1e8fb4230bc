"""The two errors a user can fix, for every layer (a leaf: imports nothing of the project).

- `InputError`: a bad value from a user (CLI option, API field, workflow argument); `field`
  names what was wrong. The CLI prints it on one line (exit 1); the workflow turns it into a
  non-retryable `InvalidInput` failure.
- `SettingsError` (also `ConfigError`): a setting is missing or malformed; the message names the
  environment variable. It stops the process at start with one line.
"""

from __future__ import annotations


class InputError(ValueError):
    """A bad value from a user; `field` names what was wrong."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the environment variable."""


ConfigError = SettingsError

__all__ = ["ConfigError", "InputError", "SettingsError"]
