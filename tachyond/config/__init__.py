"""Configuration: TOML read with tomllib into frozen dataclasses; every error names the dotted key.

Unknown keys, wrong types and impossible values raise :class:`ConfigError` whose message is one line,
``<dotted.key>: <reason>``. Provider and engine tables (``[onramp.<name>]``, ``[engines.<name>]``) are kept
as plain dicts and validated by the plugin that owns them, with the same error class.

The package's modules: ``model`` (the dataclasses and ConfigError), ``tables`` (one parser per table),
``document`` (the default document), ``changes`` (a reload's comparison and provenance). Every public name
is importable from ``tachyond.config`` itself, which is the plugin API.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..amounts import Token
from .changes import (
    DYNAMIC_ENGINE_KEYS,
    DYNAMIC_KEYS,
    DYNAMIC_ONRAMP_KEYS,
    SECRET_SUFFIXES,
    SECRET_WORDS,
    SET,
    UNSET,
    diff,
    expand_path,
    flatten,
    is_dynamic,
    is_secret_key,
    load_raw,
    provenance,
    read_secret_reference,
    restart_only,
    secret_stem,
)
from .document import DEFAULT_DOCUMENT, default_document_toml
from .model import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_SOCKET,
    LOG_FORMATS,
    LOG_LEVELS,
    NAME_RE,
    SYMBOL_RE,
    Config,
    ConfigError,
    DaemonConfig,
    HttpConfig,
    MarketConfig,
    WalletConfig,
)
from .tables import _daemon, _http, _markets, _no_unknown, _str_list, _subtables, _table, _tokens, _wallet, parse_listen

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


def reject_unknown_keys(table: Mapping[str, Any], known: set[str], prefix: str) -> None:
    """Raise ConfigError naming the dotted path of the first key of ``table`` not in ``known``."""
    _no_unknown(table, known, prefix)


def parse_tokens(raw: Any) -> tuple[Token, ...]:
    """The ``[[tokens]]`` array of tables, checked as the daemon checks it."""
    return _tokens(raw)


def parse_markets(raw: Any, tokens: Mapping[str, Token]) -> tuple[MarketConfig, ...]:
    """The ``[[markets]]`` array of tables against the declared ``tokens``, checked as the daemon checks it."""
    return _markets(raw, tokens)


__all__ = [
    "DEFAULT_CONFIG_PATH", "DEFAULT_DOCUMENT", "DEFAULT_SOCKET", "DYNAMIC_ENGINE_KEYS", "DYNAMIC_KEYS",
    "DYNAMIC_ONRAMP_KEYS", "LOG_FORMATS", "LOG_LEVELS", "NAME_RE", "SECRET_SUFFIXES", "SECRET_WORDS", "SET",
    "SYMBOL_RE", "UNSET", "Config", "ConfigError", "DaemonConfig", "HttpConfig", "MarketConfig", "WalletConfig",
    "default_document_toml", "diff", "expand_path", "flatten", "from_mapping", "is_dynamic", "is_secret_key",
    "load", "load_raw", "parse_listen", "parse_markets", "parse_tokens", "provenance", "read_secret_reference",
    "reject_unknown_keys", "restart_only", "secret_stem",
]
