"""The emulator's settings (EmulatorConfig): where it listens, whom it accepts, where its webhooks go."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from tachyond.config import ConfigError


@dataclass(frozen=True)
class EmulatorConfig:
    """How the emulator listens, whom it accepts and where it sends webhooks. Secrets are never printed."""

    listen: str = "127.0.0.1:0"
    webhook_url: str | None = None
    webhook_secrets: tuple[str, ...] = ()
    secret_keys: tuple[str, ...] = ()  # empty: any sk_test_/rk_test_ key
    public_url: str | None = None  # base of redirect_url; default the bound address
    unsupported_ips: tuple[str, ...] = ("203.0.113.0/24",)  # customer IPs answered crypto_onramp_unsupported_country
    unsupportable_ips: tuple[str, ...] = ("192.0.2.0/24",)  # ... crypto_onramp_unsupportable_customer
    livemode: bool = False          # the livemode of every session and event (Stripe's sandbox: False)
    accept_live_keys: bool = False  # accept sk_live_/rk_live_ keys too (tests of the daemon's livemode gate)
    hosted_checkout: bool = True    # False: redirect_url is null, as for an embedded-only integration
    webhook_max_attempts: int = 6
    webhook_backoff_s: float = 0.25
    webhook_max_backoff_s: float = 8.0
    webhook_timeout_s: float = 10.0

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> EmulatorConfig:
        """From a dict (e.g. the daemon's --dev mode); lists may be comma-separated strings."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in known:
                raise ConfigError(f"stripe_emulator.{key}", "unknown key")
            if key in ("webhook_secrets", "secret_keys", "unsupported_ips", "unsupportable_ips"):
                value = _split(value) if isinstance(value, str) else tuple(value)
            values[key] = value
        return cls(**values)

    def __repr__(self) -> str:
        return (
            f"EmulatorConfig(listen={self.listen!r}, webhook_url={self.webhook_url!r}, "
            f"webhook_secrets=<{len(self.webhook_secrets)} redacted>, secret_keys=<{len(self.secret_keys)} redacted>)"
        )


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())
