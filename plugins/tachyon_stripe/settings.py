"""The ``[onramp.stripe]`` table, checked: every error names its dotted key and never a secret's value."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tachyond.config import ConfigError, expand_path


class Settings:
    """Validates the ``[onramp.stripe]`` table; every error names its dotted key and never a secret's value."""

    PREFIX = "onramp.stripe"
    KEYS = {"secret_key_env", "secret_key_file", "webhook_secret_env", "webhook_secret_file", "api_base",
            "tolerance_s", "default_network", "default_currency", "reconcile_interval_s", "reconcile_lookback_h",
            "allowed", "timeout_s", "max_network_retries", "publishable_key_env", "publishable_key_file",
            "widget_base_url"}

    def __init__(self, raw: Mapping[str, Any], environ: Mapping[str, str]):
        self.raw, self.environ = raw, environ
        for key in raw:
            if key not in self.KEYS:
                raise ConfigError(self._key(key), f"unknown key (known: {', '.join(sorted(self.KEYS))})")

    def _key(self, name: str) -> str:
        return f"{self.PREFIX}.{name}"

    def string(self, name: str, default: str) -> str:
        value = self.raw.get(name, default)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(self._key(name), "must be a non-empty string")
        return value.strip()

    def number(self, name: str, default: float, *, integer: bool = False, minimum: float = 0,
               exclusive: bool = True) -> Any:
        value = self.raw.get(name, default)
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
            raise ConfigError(self._key(name), f"must be {'an integer' if integer else 'a number'}")
        if value < minimum or (exclusive and value == minimum):
            raise ConfigError(self._key(name), f"must be {'>' if exclusive else '>='} {minimum}")
        return value

    def secret(self, base: str, default_env: str) -> list[str]:
        """Resolve ``<base>_env`` or ``<base>_file`` into a comma-separated list of non-empty values."""
        env_key, file_key = f"{base}_env", f"{base}_file"
        if env_key in self.raw and file_key in self.raw:
            raise ConfigError(self._key(file_key), f"set only one of {env_key} and {file_key}")
        if file_key in self.raw:
            path = self.string(file_key, "")
            try:
                text = Path(expand_path(path)).read_text("utf-8")
            except OSError as exc:
                raise ConfigError(self._key(file_key), f"cannot read {path}: {exc.strerror}") from None
            where, key = f"file {path}", self._key(file_key)
        else:
            variable = self.string(env_key, default_env)
            text = self.environ.get(variable, "")
            where, key = f"environment variable {variable}", self._key(env_key)
        values = [part.strip() for part in text.split(",") if part.strip()]
        if not values:
            raise ConfigError(key, f"{where} is empty or unset")
        return values

    def allowed(self) -> dict[str, tuple[str, ...]] | None:
        value = self.raw.get("allowed")
        if value is None:
            return None
        if not isinstance(value, Mapping) or not value:
            raise ConfigError(self._key("allowed"), "must be a table of network = [currencies]")
        result = {}
        for network, currencies in value.items():
            if not isinstance(currencies, (list, tuple)) or not currencies or \
                    not all(isinstance(c, str) and c for c in currencies):
                raise ConfigError(self._key(f"allowed.{network}"), "must be a non-empty list of currency codes")
            result[str(network)] = tuple(currencies)
        return result
