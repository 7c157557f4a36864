"""What a reload compares: every key flattened, the keys that changed, which of them a running daemon may
apply, and where each effective key came from (``daemon.config``)."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from .model import Config, ConfigError

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
