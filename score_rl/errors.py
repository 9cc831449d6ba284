"""The user-facing error types: each message is one line that names the problem (and, for a config, the key)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-facing configuration problem; its message is one line."""
