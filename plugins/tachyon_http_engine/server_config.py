"""tachyon-engine-server's configuration file: ``[server]`` (listen, TLS, tokens, engine, retention) and the
``[[tokens]]``/``[[markets]]`` it serves, checked with the daemon's own parsers."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tachyond.config import ConfigError, MarketConfig, parse_listen, parse_markets, parse_tokens, reject_unknown_keys

DEFAULT_TOKEN_ENV = "TACHYON_ENGINE_TOKEN"
DEFAULT_RETENTION_S = 7 * 86400
ENGINES = ("memory", "sqlite")


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    token_env: str
    engine: str
    data_dir: Path | None
    markets: tuple[MarketConfig, ...]
    token_file: Path | None = None
    certfile: str | None = None
    keyfile: str | None = None
    retention_s: float = DEFAULT_RETENTION_S

    def token(self) -> str:
        """The bearer token, from token_file or the environment; ConfigError when neither gives one."""
        if self.token_file is not None:
            try:
                token = self.token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError("server.token_file", f"cannot read {self.token_file}: {exc.strerror}") from None
            if not token:
                raise ConfigError("server.token_file", f"{self.token_file} is empty")
            return token
        token = os.environ.get(self.token_env, "")
        if not token:
            raise ConfigError("server.token_env", f"environment variable {self.token_env} is not set or empty")
        return token


def parse_config(raw: dict[str, Any]) -> ServerConfig:
    """Validate a parsed server TOML document; ConfigError names the dotted key."""
    reject_unknown_keys(raw, {"server", "tokens", "markets"}, "")
    server = raw.get("server")
    if not isinstance(server, dict):
        raise ConfigError("server", "the [server] table is required")
    reject_unknown_keys(server, {"listen", "token_env", "token_file", "engine", "data_dir", "certfile", "keyfile",
                         "retention_s"}, "server")
    for key in ("listen", "token_env", "token_file", "engine", "data_dir", "certfile", "keyfile"):
        if key in server and not isinstance(server[key], str):
            raise ConfigError(f"server.{key}", "must be a string")
    if ("certfile" in server) != ("keyfile" in server):
        raise ConfigError("server.keyfile" if "certfile" in server else "server.certfile",
                          "certfile and keyfile go together")
    for key in ("certfile", "keyfile"):
        if key in server and not os.access(server[key], os.R_OK):
            raise ConfigError(f"server.{key}", f"cannot read {server[key]}")
    if "token_file" in server and "token_env" in server:
        raise ConfigError("server.token_file", "give token_env or token_file, not both")
    retention = server.get("retention_s", DEFAULT_RETENTION_S)
    if type(retention) not in (int, float) or not retention > 0:
        raise ConfigError("server.retention_s", "must be a positive number of seconds")
    host, port = parse_listen(server.get("listen", "127.0.0.1:9010"), "server.listen")
    token_env = server.get("token_env", DEFAULT_TOKEN_ENV)
    if not token_env:
        raise ConfigError("server.token_env", "must name an environment variable")
    engine = server.get("engine", "sqlite")
    if engine not in ENGINES:
        raise ConfigError("server.engine", f"must be one of {'|'.join(ENGINES)}, not {engine!r}")
    data_dir = Path(server["data_dir"]) if server.get("data_dir") else None
    if engine == "sqlite" and data_dir is None:
        raise ConfigError("server.data_dir", "is required with engine = \"sqlite\"")
    tokens = parse_tokens(raw.get("tokens", []))
    markets_raw = raw.get("markets", [])
    if isinstance(markets_raw, list):
        for i, m in enumerate(markets_raw):
            if isinstance(m, dict) and "engine" in m:
                raise ConfigError(f"markets[{i}].engine", "unknown key (the server's engine is server.engine)")
        # tachyond's own market validation, with the engine key it requires filled in.
        markets_raw = [dict(m, engine="http") if isinstance(m, dict) else m for m in markets_raw]
    markets = parse_markets(markets_raw, {t.symbol: t for t in tokens})
    if not markets:
        raise ConfigError("markets", "at least one [[markets]] table is required")
    return ServerConfig(host, port, token_env, engine, data_dir if engine == "sqlite" else None, markets,
                        token_file=Path(server["token_file"]) if "token_file" in server else None,
                        certfile=server.get("certfile"), keyfile=server.get("keyfile"),
                        retention_s=float(retention))


def load_config(path: Path) -> ServerConfig:
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
    return parse_config(raw)
