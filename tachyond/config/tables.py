"""One parser per TOML table: each checks its keys' types and values and raises ConfigError naming the
dotted key. Private to the package; plugins use the public wrappers in ``tachyond.config``."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..amounts import Token, parse_decimal
from ..errors import AmountError
from .model import (
    DEFAULT_SOCKET,
    LOG_FORMATS,
    LOG_LEVELS,
    SYMBOL_RE,
    ConfigError,
    DaemonConfig,
    HttpConfig,
    MarketConfig,
    WalletConfig,
)


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
