"""The default configuration document (`tachyond --print-default-config`), written with tomli-w."""

from __future__ import annotations

from typing import Any

from .model import DEFAULT_SOCKET

DEFAULT_DOCUMENT: dict[str, Any] = {
    "daemon": {
        "data_dir": "/var/lib/tachyond",
        "socket": str(DEFAULT_SOCKET),
        "socket_mode": "0600",
        "log_level": "info",
        "log_format": "text",
    },
    "wallet": {"unlock_timeout_s": 0, "min_password_length": 8},
    "http": {
        "listen": ["127.0.0.1:8787"],
        "max_body_bytes": 65536,
        "rate_limit_per_s": 50,
        "allow_ips": [],
        "request_timeout_s": 10,
        "max_connections": 1024,
    },
    "tokens": [
        {
            "symbol": "USDC",
            "decimals": 6,
            "networks": ["ethereum", "solana", "polygon", "avalanche", "base", "stellar"],
        },
        {"symbol": "ZEC", "decimals": 8},
    ],
    "markets": [
        {
            "symbol": "ZEC/USDC",
            "engine": "sqlite",
            "tick": "0.01",
            "lot": "0.0001",
            "min_notional": "1",
            "maker_fee_bps": 10,
            "taker_fee_bps": 20,
            "protection_bps": 500,
        },
    ],
    # The remote engine's table, as interface.md's example has it; used only by markets with engine = "http".
    "engines": {"http": {"url": "http://127.0.0.1:9010", "timeout_s": 5, "token_env": "TACHYON_ENGINE_TOKEN"}},
    "onramp": {
        "stripe": {
            "secret_key_env": "STRIPE_SECRET_KEY",
            "webhook_secret_env": "STRIPE_WEBHOOK_SECRET",
            "api_base": "https://api.stripe.com",
            "tolerance_s": 300,
            "default_network": "ethereum",
            "default_currency": "usdc",
            "reconcile_interval_s": 300,
            "reconcile_lookback_h": 72,
        }
    },
    "plugins": {"disabled": []},
}


def default_document_toml() -> str:
    """The default configuration as TOML text (written with tomli-w); it holds references, never secrets."""
    import tomli_w

    head = ("# tachyond configuration. Every key is documented in docs/operations.md.\n"
            "# Secrets are references (*_env, *_file), never values.\n\n")
    return head + tomli_w.dumps(DEFAULT_DOCUMENT)
