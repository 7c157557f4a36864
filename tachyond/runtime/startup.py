"""The command line's side of starting: its arguments, the config it names, and a start-up failure turned into
one line and an exit code (2: the config; 1: anything else), however deep in exception groups trio put it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .. import __version__
from ..config import DEFAULT_CONFIG_PATH, Config, ConfigError, load


class StartupError(Exception):
    """The daemon cannot start; the message is one line an operator can act on."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tachyond", description="The tachyon wallet daemon (foreground; logs to stderr).")
    ap.add_argument(
        "--config", type=Path, help="TOML config (default: $TACHYON_CONFIG, else /etc/tachyon/tachyond.toml)"
    )
    ap.add_argument(
        "--dev",
        action="store_true",
        help="run the embedded development default under ./.tachyon-dev/ (not for real money)",
    )
    ap.add_argument("--print-default-config", action="store_true", help="write a default config to stdout and exit")
    ap.add_argument("--check-config", action="store_true", help="validate the config (and its plugins) and exit")
    ap.add_argument("--version", action="version", version=f"tachyond {__version__}")
    return ap


def resolve_config(args: argparse.Namespace) -> Config:
    if args.dev:
        from .devmode import dev_config

        return dev_config(Path.cwd() / ".tachyon-dev")
    path = args.config or Path(os.environ.get("TACHYON_CONFIG") or DEFAULT_CONFIG_PATH)
    return load(path)


def exception_leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, in order."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in exception_leaves(sub)]
    return [exc]


def startup_failure(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, one line) for a start-up failure, however deep in exception groups trio put it; else None."""
    leaves = exception_leaves(exc)
    for leaf in leaves:
        if isinstance(leaf, ConfigError):
            return 2, str(leaf)
    for leaf in leaves:
        if isinstance(leaf, StartupError):
            return 1, str(leaf)
    for leaf in leaves:
        if isinstance(leaf, OSError) and leaf.errno is not None:
            where = f" ({leaf.filename})" if leaf.filename else ""
            return 1, f"{leaf.strerror or leaf}{where}"
    return None
