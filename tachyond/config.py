"""Configuration: TOML read with tomllib into frozen dataclasses; every error names the dotted key."""

from __future__ import annotations


class ConfigError(Exception):
    """A bad configuration value. ``str(exc)`` is one line: ``<dotted.key>: <reason>``."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason
