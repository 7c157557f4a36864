"""The configuration's shape: the frozen dataclasses every table becomes, the error every check raises,
and the constants the checks share."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..amounts import Token

DEFAULT_CONFIG_PATH = Path("/etc/tachyon/tachyond.toml")
DEFAULT_SOCKET = Path("/run/tachyond/rpc.sock")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
SYMBOL_RE = re.compile(r"^[A-Z][A-Z0-9]{0,15}$")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class ConfigError(Exception):
    """A bad configuration value. ``str(exc)`` is one line: ``<dotted.key>: <reason>``."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class DaemonConfig:
    data_dir: Path = Path("/var/lib/tachyond")
    socket: Path = DEFAULT_SOCKET
    socket_mode: int = 0o600
    socket_group: str | None = None
    log_level: str = "info"
    log_format: str = "text"
    max_rpc_connections: int = 1024          # RPC socket connections open at once
    max_rpc_connections_per_uid: int = 256   # ... from one uid
    rpc_idle_timeout_s: int = 300            # a connection with nothing in flight and no stream; 0: never


@dataclass(frozen=True)
class WalletConfig:
    password_file: Path | None = None
    unlock_timeout_s: int = 0
    min_password_length: int = 8


@dataclass(frozen=True)
class HttpConfig:
    listen: tuple[str, ...] = ("127.0.0.1:8787",)
    certfile: Path | None = None
    keyfile: Path | None = None
    max_body_bytes: int = 65536
    rate_limit_per_s: int = 50
    allow_ips: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    admin_listen: tuple[str, ...] = ()
    request_timeout_s: int = 10
    max_connections: int = 1024

    def allowed_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(n, strict=False) for n in self.allow_ips]

    def trusted_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(n, strict=False) for n in self.trusted_proxies]

    @property
    def max_connections_per_address(self) -> int:
        return max(1, self.max_connections // 10)


@dataclass(frozen=True)
class MarketConfig:
    symbol: str
    base: str
    quote: str
    engine: str
    tick: Decimal
    lot: Decimal
    min_notional: Decimal
    maker_fee_bps: int = 0
    taker_fee_bps: int = 0
    protection_bps: int = 500


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    wallet: WalletConfig = field(default_factory=WalletConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    tokens: tuple[Token, ...] = ()
    markets: tuple[MarketConfig, ...] = ()
    engines: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    onramp: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    disabled_plugins: tuple[str, ...] = ()
    dev: bool = False
    source: str = "<defaults>"

    def token_map(self) -> dict[str, Token]:
        return {t.symbol: t for t in self.tokens}

    def market_map(self) -> dict[str, MarketConfig]:
        return {m.symbol: m for m in self.markets}
