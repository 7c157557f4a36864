"""Configuration: TOML read with tomllib into frozen dataclasses; every error names the dotted key.

Unknown keys, wrong types and impossible values raise :class:`ConfigError` whose message is one line,
``<dotted.key>: <reason>``. Provider and engine tables (``[onramp.<name>]``, ``[engines.<name>]``) are kept
as plain dicts and validated by the plugin that owns them, with the same error class.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from .amounts import Token, parse_decimal
from .errors import AmountError

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


# --- reading ----------------------------------------------------------------------------------------

_TOP_KEYS = {"daemon", "wallet", "http", "tokens", "markets", "engines", "onramp", "plugins"}


def load(path: Path) -> Config:
    """Read and validate a TOML file; raise ConfigError naming the dotted key."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(
            "config", f"file {path} does not exist (use --config PATH, $TACHYON_CONFIG or --dev)"
        ) from None
    except PermissionError:
        raise ConfigError("config", f"file {path} is not readable by this user") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
    return from_mapping(raw, source=str(path))


def from_mapping(raw: Mapping[str, Any], *, source: str = "<mapping>", dev: bool = False) -> Config:
    """Validate a parsed TOML document."""
    _no_unknown(raw, _TOP_KEYS, "")
    if "daemon" not in raw:
        raise ConfigError("daemon", "the [daemon] table is required")
    daemon = _daemon(_table(raw, "daemon"))
    wallet = _wallet(_table(raw, "wallet")) if "wallet" in raw else WalletConfig()
    http = _http(_table(raw, "http")) if "http" in raw else HttpConfig()  # absent: the documented defaults
    tokens = _tokens(raw.get("tokens", []))
    markets = _markets(raw.get("markets", []), {t.symbol: t for t in tokens})
    engines = _subtables(raw, "engines")
    onramp = _subtables(raw, "onramp")
    plugins = _table(raw, "plugins") if "plugins" in raw else {}
    _no_unknown(plugins, {"disabled"}, "plugins")
    disabled = tuple(_str_list(plugins.get("disabled", []), "plugins.disabled"))
    env_disabled = os.environ.get("TACHYON_DISABLED_PLUGINS", "")
    disabled += tuple(n.strip() for n in env_disabled.split(",") if n.strip())
    return Config(daemon=daemon, wallet=wallet, http=http, tokens=tokens, markets=markets, engines=engines,
                  onramp=onramp, disabled_plugins=disabled, dev=dev, source=source)


def _table(raw: Mapping[str, Any], key: str, prefix: str = "") -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(prefix + key, f"must be a table, not {_tname(value)}")
    return value


def _subtables(raw: Mapping[str, Any], key: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, table in _table(raw, key).items():
        if not isinstance(table, dict):
            raise ConfigError(f"{key}.{name}", f"must be a table, not {_tname(table)}")
        out[name] = dict(table)
    return out


def _no_unknown(table: Mapping[str, Any], known: set[str], prefix: str) -> None:
    for key in table:
        if key not in known:
            dotted = f"{prefix}.{key}" if prefix else key
            raise ConfigError(dotted, f"unknown key (known: {', '.join(sorted(known))})")


def _tname(value: Any) -> str:
    return {str: "a string", int: "an integer", float: "a float", bool: "a boolean", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


def _get(table: Mapping[str, Any], key: str, typ: type | tuple[type, ...], default: Any, prefix: str) -> Any:
    if key not in table:
        return default
    value = table[key]
    ok = isinstance(value, typ) and not (
        isinstance(value, bool) and bool not in (typ if isinstance(typ, tuple) else (typ,))
    )
    if not ok:
        want = " or ".join(
            _tname(t()) if t is not type(None) else "none" for t in (typ if isinstance(typ, tuple) else (typ,))
        )
        raise ConfigError(f"{prefix}.{key}", f"must be {want}, not {_tname(value)}")
    return value


def _str_list(value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, "must be an array of strings")
    return list(value)


def _non_negative(value: int, key: str) -> int:
    if value < 0:
        raise ConfigError(key, f"must be zero or more, not {value}")
    return value


def _at_least(value: int, low: int, key: str) -> int:
    if value < low:
        raise ConfigError(key, f"must be at least {low}, not {value}")
    return value


def _networks(value: Any, key: str, example: str) -> list[str]:
    nets = _str_list(value, key)
    for i, net in enumerate(nets):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"{key}[{i}]", f"{net!r} is not an IP network such as \"{example}\"") from None
    return nets


def _daemon(t: Mapping[str, Any]) -> DaemonConfig:
    p = "daemon"
    _no_unknown(t, {"data_dir", "socket", "socket_mode", "socket_group", "log_level", "log_format",
                    "max_rpc_connections", "max_rpc_connections_per_uid", "rpc_idle_timeout_s"}, p)
    mode_text = _get(t, "socket_mode", str, "0600", p)
    if not re.fullmatch(r"0?[0-7]{3}", mode_text):
        raise ConfigError("daemon.socket_mode", f"must be an octal mode string such as \"0600\", not {mode_text!r}")
    mode = int(mode_text, 8)
    if mode & 0o007:
        raise ConfigError(
            "daemon.socket_mode", f'{mode_text} gives other users access; use "0600" or "0660" with socket_group'
        )
    group = _get(t, "socket_group", str, None, p)
    if group is not None:
        import grp
        try:
            grp.getgrnam(group)
        except KeyError:
            raise ConfigError("daemon.socket_group", f"no group named {group!r} on this system") from None
    level = _get(t, "log_level", str, "info", p)
    if level not in LOG_LEVELS:
        raise ConfigError("daemon.log_level", f"must be one of {'|'.join(LOG_LEVELS)}, not {level!r}")
    fmt = _get(t, "log_format", str, "text", p)
    if fmt not in LOG_FORMATS:
        raise ConfigError("daemon.log_format", f"must be one of {'|'.join(LOG_FORMATS)}, not {fmt!r}")
    max_conns = _at_least(_get(t, "max_rpc_connections", int, 1024, p), 1, "daemon.max_rpc_connections")
    per_uid = _at_least(_get(t, "max_rpc_connections_per_uid", int, 256, p), 1, "daemon.max_rpc_connections_per_uid")
    idle = _non_negative(_get(t, "rpc_idle_timeout_s", int, 300, p), "daemon.rpc_idle_timeout_s")
    return DaemonConfig(data_dir=Path(_get(t, "data_dir", str, "/var/lib/tachyond", p)),
                        socket=Path(_get(t, "socket", str, str(DEFAULT_SOCKET), p)),
                        socket_mode=mode, socket_group=group, log_level=level, log_format=fmt,
                        max_rpc_connections=max_conns, max_rpc_connections_per_uid=per_uid, rpc_idle_timeout_s=idle)


def _wallet(t: Mapping[str, Any]) -> WalletConfig:
    p = "wallet"
    _no_unknown(t, {"password_file", "unlock_timeout_s", "min_password_length"}, p)
    pw = _get(t, "password_file", str, None, p)
    timeout = _non_negative(_get(t, "unlock_timeout_s", int, 0, p), "wallet.unlock_timeout_s")
    min_len = _non_negative(_get(t, "min_password_length", int, 8, p), "wallet.min_password_length")
    return WalletConfig(password_file=Path(pw) if pw else None, unlock_timeout_s=timeout, min_password_length=min_len)


def parse_listen(text: str, key: str) -> tuple[str, int]:
    """``"127.0.0.1:8787"`` or ``"[::1]:8787"`` -> (host, port); a bad address is a ConfigError."""
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", text)
    if not m:
        raise ConfigError(key, f"{text!r} is not HOST:PORT (e.g. \"127.0.0.1:8787\" or \"[::1]:8787\")")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if port > 65535:
        raise ConfigError(key, f"{text!r}: port {port} is above 65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ConfigError(key, f"{text!r}: {host!r} is not an IP address (or localhost)") from None
    return host, port


def _http(t: Mapping[str, Any]) -> HttpConfig:
    p = "http"
    _no_unknown(t, {"listen", "certfile", "keyfile", "max_body_bytes", "rate_limit_per_s", "allow_ips",
                    "trusted_proxies", "admin_listen", "request_timeout_s", "max_connections"}, p)
    listen = _str_list(t.get("listen", ["127.0.0.1:8787"]), "http.listen")
    for i, addr in enumerate(listen):
        parse_listen(addr, f"http.listen[{i}]")
    admin = _str_list(t.get("admin_listen", []), "http.admin_listen")
    for i, addr in enumerate(admin):
        parse_listen(addr, f"http.admin_listen[{i}]")
    cert = _get(t, "certfile", str, None, p)
    key = _get(t, "keyfile", str, None, p)
    if bool(cert) != bool(key):
        raise ConfigError("http.keyfile" if cert else "http.certfile", "certfile and keyfile go together")
    for name, value in (("certfile", cert), ("keyfile", key)):
        if value and not (os.path.isfile(value) and os.access(value, os.R_OK)):
            why = "no such file" if not os.path.exists(value) else "not a readable file"
            raise ConfigError(f"http.{name}", f"cannot read {value}: {why}")
    body = _get(t, "max_body_bytes", int, 65536, p)
    if body < 1024 or body > 64 * 1024 * 1024:
        raise ConfigError("http.max_body_bytes", f"must be between 1024 and 67108864, not {body}")
    rate = _get(t, "rate_limit_per_s", int, 50, p)
    if rate < 1:
        raise ConfigError("http.rate_limit_per_s", f"must be at least 1, not {rate}")
    allow = _networks(t.get("allow_ips", []), "http.allow_ips", "3.18.12.63/32")
    trusted = _networks(t.get("trusted_proxies", []), "http.trusted_proxies", "127.0.0.1/32")
    timeout = _get(t, "request_timeout_s", int, 10, p)
    if not 1 <= timeout <= 3600:
        raise ConfigError("http.request_timeout_s", f"must be between 1 and 3600 seconds, not {timeout}")
    conns = _at_least(_get(t, "max_connections", int, 1024, p), 1, "http.max_connections")
    return HttpConfig(listen=tuple(listen), certfile=Path(cert) if cert else None, keyfile=Path(key) if key else None,
                      max_body_bytes=body, rate_limit_per_s=rate, allow_ips=tuple(allow),
                      trusted_proxies=tuple(trusted), admin_listen=tuple(admin), request_timeout_s=timeout,
                      max_connections=conns)


def _tokens(raw: Any) -> tuple[Token, ...]:
    if not isinstance(raw, list):
        raise ConfigError("tokens", "must be an array of tables ([[tokens]])")
    out: list[Token] = []
    seen: set[str] = set()
    for i, t in enumerate(raw):
        p = f"tokens[{i}]"
        if not isinstance(t, dict):
            raise ConfigError(p, "must be a table")
        _no_unknown(t, {"symbol", "decimals", "networks"}, p)
        if "symbol" not in t:
            raise ConfigError(f"{p}.symbol", "is required")
        sym = _get(t, "symbol", str, None, p)
        if not SYMBOL_RE.match(sym):
            raise ConfigError(f"{p}.symbol", f"{sym!r} must be upper-case letters and digits, such as \"USDC\"")
        if sym in seen:
            raise ConfigError(f"{p}.symbol", f"{sym} is declared twice")
        seen.add(sym)
        if "decimals" not in t:
            raise ConfigError(f"{p}.decimals", "is required")
        dec = _get(t, "decimals", int, None, p)
        if not 0 <= dec <= 18:
            raise ConfigError(f"{p}.decimals", f"must be 0..18, not {dec}")
        nets = _str_list(t.get("networks", []), f"{p}.networks")
        out.append(Token(symbol=sym, decimals=dec, networks=tuple(nets)))
    return tuple(out)


def _decimal(t: Mapping[str, Any], key: str, prefix: str) -> Decimal:
    value = t.get(key)
    if value is None:
        raise ConfigError(f"{prefix}.{key}", "is required")
    if not isinstance(value, str):
        raise ConfigError(f"{prefix}.{key}", f"must be a decimal string such as \"0.01\", not {_tname(value)}")
    try:
        return parse_decimal(value, key)
    except AmountError as exc:
        raise ConfigError(f"{prefix}.{key}", exc.message) from None


def _markets(raw: Any, tokens: Mapping[str, Token]) -> tuple[MarketConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError("markets", "must be an array of tables ([[markets]])")
    out: list[MarketConfig] = []
    seen: set[str] = set()
    keys = {"symbol", "engine", "tick", "lot", "min_notional", "maker_fee_bps", "taker_fee_bps", "protection_bps"}
    for i, m in enumerate(raw):
        p = f"markets[{i}]"
        if not isinstance(m, dict):
            raise ConfigError(p, "must be a table")
        _no_unknown(m, keys, p)
        sym = _get(m, "symbol", str, None, p)
        if sym is None or not re.fullmatch(r"[A-Z0-9]+/[A-Z0-9]+", sym):
            raise ConfigError(f"{p}.symbol", f"must be BASE/QUOTE such as \"ZEC/USDC\", not {sym!r}")
        if sym in seen:
            raise ConfigError(f"{p}.symbol", f"{sym} is declared twice")
        seen.add(sym)
        base, quote = sym.split("/")
        for part, what in ((base, "base"), (quote, "quote")):
            if part not in tokens:
                raise ConfigError(f"{p}.symbol", f"{what} token {part} is not declared in [[tokens]]")
        if base == quote:
            raise ConfigError(f"{p}.symbol", "base and quote must differ")
        engine = _get(m, "engine", str, "sqlite", p)
        tick, lot, min_notional = (_decimal(m, k, p) for k in ("tick", "lot", "min_notional"))
        bt, qt = tokens[base], tokens[quote]
        if tick <= 0 or tick.scaleb(qt.decimals) != tick.scaleb(qt.decimals).to_integral_value():
            raise ConfigError(
                f"{p}.tick", f"{tick} must be > 0 and a whole number of {quote} minor units ({qt.decimals} decimals)"
            )
        if lot <= 0 or lot.scaleb(bt.decimals) != lot.scaleb(bt.decimals).to_integral_value():
            raise ConfigError(
                f"{p}.lot", f"{lot} must be > 0 and a whole number of {base} minor units ({bt.decimals} decimals)"
            )
        unit_notional = (tick * lot).scaleb(qt.decimals)
        if unit_notional != unit_notional.to_integral_value():
            raise ConfigError(f"{p}.lot", f"tick {tick} x lot {lot} = {tick * lot} {quote} is finer than {quote}'s "
                              f"{qt.decimals} decimals, so fills could not be settled exactly")
        if min_notional.scaleb(qt.decimals) != min_notional.scaleb(qt.decimals).to_integral_value():
            raise ConfigError(f"{p}.min_notional", f"{min_notional} is finer than {quote}'s {qt.decimals} decimals")
        fees = {}
        for k, default in (("maker_fee_bps", 0), ("taker_fee_bps", 0), ("protection_bps", 500)):
            v = _get(m, k, int, default, p)
            if not 0 <= v <= 10000:
                raise ConfigError(f"{p}.{k}", f"must be 0..10000 basis points, not {v}")
            fees[k] = v
        if fees["protection_bps"] == 0:
            raise ConfigError(f"{p}.protection_bps", "must be at least 1 so market orders can fill")
        out.append(MarketConfig(symbol=sym, base=base, quote=quote, engine=engine, tick=tick, lot=lot,
                                min_notional=min_notional, **fees))
    return tuple(out)


# --- writing ----------------------------------------------------------------------------------------

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


# --- reload: what changed, what may change while running, where each key came from ----------------
#
# A reload re-reads the file into a new Config and compares it with the running one key by key
# (:func:`flatten`, :func:`diff`). Only the keys :func:`is_dynamic` accepts may change while running; any
# other changed key refuses the whole reload by name (:func:`restart_only`), and nothing is applied. Secrets
# are compared by a digest of what their ``*_file``/``*_env`` reference holds *now*, so rewriting a secret
# file is a change even though the config file itself is the same.

# Keys a running daemon applies. A helper adding a key that can be applied live adds it here (one line) and
# reads it in its service's apply hook (see docs/architecture.md, "Reload").
DYNAMIC_KEYS: set[str] = {
    "daemon.log_level", "daemon.log_format",
    "wallet.unlock_timeout_s", "wallet.min_password_length",
    "http.max_body_bytes", "http.rate_limit_per_s", "http.allow_ips",
    "http.trusted_proxies", "http.request_timeout_s", "http.max_connections",
}
# Per-table keys under [onramp.<name>] and [engines.<name>] that are applied live: the secret references
# (``*_file``, ``*_env``), the secret values they point at (the key without the suffix) and the reconciler.
DYNAMIC_ONRAMP_KEYS = {"reconcile_interval_s", "reconcile_lookback_h"}
DYNAMIC_ENGINE_KEYS = {"token", "token_env", "token_file"}
SECRET_SUFFIXES = ("_file", "_env")
SECRET_WORDS = ("secret", "token", "password", "key")
SET, UNSET = "<set>", "<unset>"


def secret_stem(key: str) -> str | None:
    """``webhook_secret_file`` -> ``webhook_secret``; None for a key that is not a secret reference."""
    for suffix in SECRET_SUFFIXES:
        if key.endswith(suffix) and any(w in key for w in SECRET_WORDS):
            return key[: -len(suffix)]
    return None


def is_secret_key(dotted: str) -> bool:
    """A key whose value is a secret itself (shown as <set>/<unset>), not a reference to one."""
    last = dotted.rsplit(".", 1)[-1]
    return secret_stem(last) is None and any(w in last for w in SECRET_WORDS) and not last.endswith("_s") \
        and last not in ("password_file",)


def expand_path(text: str) -> str:
    """``$CREDENTIALS_DIRECTORY/name`` (or ``${CREDENTIALS_DIRECTORY}/name``) -> the systemd credentials path;
    only that variable is expanded, and only when it is set."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        for form in ("${CREDENTIALS_DIRECTORY}", "$CREDENTIALS_DIRECTORY"):
            if text.startswith(form):
                return creds + text[len(form):]
    return text


def read_secret_reference(table: Mapping[str, Any], stem: str) -> tuple[str | None, str]:
    """What ``<stem>_file`` or ``<stem>_env`` holds now -> (value or None, "file"|"env"|"default")."""
    if f"{stem}_file" in table and isinstance(table[f"{stem}_file"], str):
        try:
            return Path(expand_path(table[f"{stem}_file"])).read_text("utf-8").strip() or None, "file"
        except OSError:
            return None, "file"
    if f"{stem}_env" in table and isinstance(table[f"{stem}_env"], str):
        return os.environ.get(table[f"{stem}_env"], "").strip() or None, "env"
    return None, "default"


def _digest(value: str | None) -> str | None:
    import hashlib

    return None if value is None else hashlib.sha256(value.encode()).hexdigest()


def flatten(cfg: Config) -> dict[str, Any]:
    """Every key of a Config as ``{dotted.key: value}``; secrets referenced by ``*_file``/``*_env`` appear
    under their stem (``onramp.stripe.webhook_secret``) as a digest of their current value."""
    import dataclasses

    out: dict[str, Any] = {}
    for section in ("daemon", "wallet", "http"):
        obj = getattr(cfg, section)
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            out[f"{section}.{f.name}"] = str(value) if isinstance(value, Path) else value
    for i, t in enumerate(cfg.tokens):
        out[f"tokens[{i}]"] = (t.symbol, t.decimals, tuple(t.networks))
    for i, m in enumerate(cfg.markets):
        out[f"markets[{i}]"] = dataclasses.astuple(m)
    for group in ("engines", "onramp"):
        for name, table in getattr(cfg, group).items():
            # The table itself: adding or removing a provider or engine table is a change of its own (not
            # dynamic), even when every key in it is one a reload may apply (secret references only).
            out[f"{group}.{name}"] = "<table>"
            _flatten_table(out, f"{group}.{name}", table)
            for key in list(table):
                stem = secret_stem(key)
                if stem is not None:
                    out[f"{group}.{name}.{stem}"] = _digest(read_secret_reference(table, stem)[0])
    out["plugins.disabled"] = tuple(cfg.disabled_plugins)
    return out


def _flatten_table(out: dict[str, Any], prefix: str, table: Mapping[str, Any]) -> None:
    for key, value in table.items():
        if isinstance(value, Mapping):
            _flatten_table(out, f"{prefix}.{key}", value)
        else:
            out[f"{prefix}.{key}"] = tuple(value) if isinstance(value, list) else value


def diff(old: Config | Mapping[str, Any], new: Config | Mapping[str, Any]) -> list[str]:
    """The dotted keys whose value differs between two configs (added and removed keys too), sorted.

    Either side may be a :func:`flatten` snapshot: a running daemon keeps the one taken when its config was
    read, since a secret file rewritten since then must compare as changed."""
    a = flatten(old) if isinstance(old, Config) else old
    b = flatten(new) if isinstance(new, Config) else new
    return sorted(k for k in a.keys() | b.keys() if a.get(k, _ABSENT) != b.get(k, _ABSENT))


_ABSENT = object()


def is_dynamic(dotted: str) -> bool:
    """True when a running daemon applies a change of this key (else a reload changing it is refused)."""
    if dotted in DYNAMIC_KEYS:
        return True
    parts = dotted.split(".")
    if len(parts) == 3 and parts[0] in ("onramp", "engines"):
        key = parts[2]
        stem = secret_stem(key)
        if parts[0] == "onramp":
            # A secret reference (``*_file``/``*_env``), the secret it points at (its stem), the reconciler.
            return key in DYNAMIC_ONRAMP_KEYS or stem is not None or secret_stem(key + "_file") == key
        return key in DYNAMIC_ENGINE_KEYS
    return False


def restart_only(changed: list[str]) -> list[str]:
    """The changed keys a running daemon cannot apply (the reload is refused naming them)."""
    return [k for k in changed if not is_dynamic(k)]


def load_raw(path: Path) -> dict[str, Any]:
    """The TOML document as parsed (for provenance); a ConfigError like :func:`load`'s when it does not parse."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None


def _in_raw(raw: Mapping[str, Any], dotted: str) -> bool:
    node: Any = raw
    for part in re.split(r"\.(?![^\[]*\])", dotted):
        m = re.fullmatch(r"([^\[]+)\[(\d+)\]", part)
        name, index = (m.group(1), int(m.group(2))) if m else (part, None)
        if not isinstance(node, Mapping) or name not in node:
            return False
        node = node[name]
        if index is not None:
            if not isinstance(node, list) or index >= len(node):
                return False
            node = node[index]
    return True


def provenance(cfg: Config, raw: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The effective configuration: ``{dotted.key: {value, from: file|default|env}}``; secret values are
    never shown, only ``<set>``/``<unset>`` (their references, a path or a variable name, are shown)."""
    import dataclasses

    out: dict[str, dict[str, Any]] = {}

    def put(key: str, value: Any, origin: str) -> None:
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Decimal):
            value = str(value)
        out[key] = {"value": value, "from": origin}

    def origin(key: str) -> str:
        if raw is None:
            return "dev" if cfg.dev else "default"
        return "file" if _in_raw(raw, key) else "default"

    for section in ("daemon", "wallet", "http"):
        obj = getattr(cfg, section)
        for f in dataclasses.fields(obj):
            key = f"{section}.{f.name}"
            value = getattr(obj, f.name)
            if key == "daemon.socket_mode":
                value = f"{value:04o}"
            put(key, value, origin(key))
    for i, t in enumerate(cfg.tokens):
        put(
            f"tokens[{i}]",
            {"symbol": t.symbol, "decimals": t.decimals, "networks": list(t.networks)},
            origin(f"tokens[{i}]"),
        )
    for i, m in enumerate(cfg.markets):
        doc = {k: (str(v) if isinstance(v, Decimal) else v) for k, v in dataclasses.asdict(m).items()}
        put(f"markets[{i}]", doc, origin(f"markets[{i}]"))
    for group in ("engines", "onramp"):
        for name, table in getattr(cfg, group).items():
            flat: dict[str, Any] = {}
            _flatten_table(flat, f"{group}.{name}", table)
            for key, value in flat.items():
                put(key, UNSET if value in (None, "") else SET, origin(key)) if is_secret_key(key) \
                    else put(key, value, origin(key))
            for key in list(table):
                stem = secret_stem(key)
                if stem is not None:
                    value, where = read_secret_reference(table, stem)
                    put(f"{group}.{name}.{stem}", SET if value else UNSET, where)
    env_disabled = [n.strip() for n in os.environ.get("TACHYON_DISABLED_PLUGINS", "").split(",") if n.strip()]
    put("plugins.disabled", cfg.disabled_plugins, "env" if env_disabled else origin("plugins.disabled"))
    return out


def reject_unknown_keys(table: Mapping[str, Any], known: set[str], prefix: str) -> None:
    """Raise ConfigError naming the dotted path of the first key of ``table`` not in ``known``."""
    _no_unknown(table, known, prefix)


def parse_tokens(raw: Any) -> tuple[Token, ...]:
    """The ``[[tokens]]`` array of tables, checked as the daemon checks it."""
    return _tokens(raw)


def parse_markets(raw: Any, tokens: Mapping[str, Token]) -> tuple[MarketConfig, ...]:
    """The ``[[markets]]`` array of tables against the declared ``tokens``, checked as the daemon checks it."""
    return _markets(raw, tokens)
