"""Reload: re-read the config file and apply what may change while running (SIGHUP and ``daemon.reload``).

The mechanism, in three parts (docs/architecture.md, "Reload"):

1. :func:`tachyond.config.diff` compares the running Config with the file's, key by key (secrets by a digest
   of what their ``*_file``/``*_env`` holds now).
2. :func:`tachyond.config.restart_only` names the changed keys that need a restart; one of them refuses the
   whole reload, as does a file that does not parse (the error names the dotted key). Nothing is applied.
3. Every service registered a *prepare* hook: ``prepare(new_cfg, changed) -> apply | None``. All hooks
   prepare first (build new providers, read new secrets: anything that can fail, fails here and refuses the
   reload); then ``daemon.config`` is swapped and every ``apply`` runs (no I/O that can fail: swaps only).
"""

from __future__ import annotations

import inspect
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from ..config import (
    Config,
    ConfigError,
    diff,
    flatten,
    load,
    load_raw,
    provenance,
    read_secret_reference,
    restart_only,
    secret_stem,
)
from ..errors import ReloadRefused, TachyonError
from . import logs

log = logging.getLogger("tachyond.reload")
daemon_log = logging.getLogger("tachyond")  # the signal lines are the daemon's, as before they moved here

Apply = Callable[[], "None | Awaitable[None]"]
Prepare = Callable[[Config, list[str]], "Apply | None"]


class Reloader:
    """Holds the prepare hooks and the file the running config came from; serialises reloads."""

    def __init__(self, daemon: Any):
        self.daemon = daemon
        cfg: Config = daemon.config
        self.path: Path | None = None if cfg.dev or cfg.source.startswith("<") else Path(cfg.source)
        self.hooks: list[tuple[str, Prepare]] = [("logs", _prepare_logs)]
        self.raw: dict[str, Any] | None = None
        if self.path is not None:
            try:
                self.raw = load_raw(self.path)
            except ConfigError:
                self.raw = None
        self.reloads = 0
        self.last: dict[str, Any] | None = None  # the last reload: {at, by, ok, changed | error}, for daemon.config
        self.snapshot = flatten(cfg)  # the running config's keys, secrets as read at start (or last reload)
        register_secrets(cfg)
        self._lock = trio.Lock()

    def add(self, name: str, prepare: Prepare) -> None:
        """Register a service's prepare hook (called on every reload with the new Config and changed keys)."""
        self.hooks.append((name, prepare))

    async def reload(self, why: str) -> dict[str, list[str]]:
        """Re-read the file; apply the dynamic keys -> ``{changed: [dotted keys]}``; ReloadRefused otherwise.
        Either way the outcome is kept for ``daemon.config`` (a refused SIGHUP has no one to answer)."""
        import time

        try:
            result = await self._reload(why)
        except ReloadRefused as exc:
            self.last = {"at": time.time(), "by": why, "ok": False, "error": exc.message}
            raise
        self.last = {"at": time.time(), "by": why, "ok": True, "changed": result["changed"]}
        return result

    async def _reload(self, why: str) -> dict[str, list[str]]:
        async with self._lock:
            d = self.daemon
            if self.path is None:
                what = "the embedded --dev configuration" if d.config.dev else f"a configuration from {d.config.source}"
                raise ReloadRefused(f"config: this daemon runs {what}, not a file; there is nothing to re-read "
                                    "(restart it instead)")
            try:
                new = await trio.to_thread.run_sync(load, self.path)
                raw = await trio.to_thread.run_sync(load_raw, self.path)
                check = getattr(d, "_check_config_against_plugins", None)
                if check is not None:
                    check(new)
            except ConfigError as exc:
                log.error("reload (%s) refused, the running configuration is kept: %s", why, exc)
                raise ReloadRefused(f"{exc} (nothing applied; the running configuration is kept)",
                                    data={"key": exc.key}) from None
            new_snapshot = await trio.to_thread.run_sync(flatten, new)
            changed = diff(self.snapshot, new_snapshot)
            fixed = restart_only(changed)
            if fixed:
                log.error("reload (%s) refused: %s changed and needs a restart; nothing applied", why, ", ".join(fixed))
                raise ReloadRefused(f"{', '.join(fixed)}: changing this needs a restart "
                                    "(systemctl restart tachyond); nothing applied", data={"keys": fixed})
            applies: list[Apply] = []
            for name, prepare in self.hooks:
                try:
                    apply = prepare(new, changed)
                except ConfigError as exc:
                    log.error("reload (%s) refused by %s: %s; nothing applied", why, name, exc)
                    raise ReloadRefused(f"{exc} (nothing applied; the running configuration is kept)",
                                        data={"key": exc.key}) from None
                except Exception as exc:  # a service's or plugin's bug: refuse, never end the daemon (SIGHUP)
                    log.exception("reload (%s) refused: %s failed while preparing; nothing applied", why, name)
                    raise ReloadRefused(f"{name}: preparing the reload failed ({type(exc).__name__}; see the log); "
                                        "nothing applied, the running configuration is kept",
                                        data={"key": name}) from None
                if apply is not None:
                    applies.append(apply)
            d.config = new
            self.raw, self.snapshot = raw, new_snapshot
            register_secrets(new)  # a rotated-in secret is scrubbed from log lines like the one it replaces
            for apply in applies:
                result = apply()
                if inspect.isawaitable(result):
                    await result
            self.reloads += 1
            if changed:
                log.info("reload (%s): applied %s", why, ", ".join(changed))
            else:
                log.info("reload (%s): nothing changed", why)
            return {"changed": changed}

    def effective(self) -> dict[str, Any]:
        """``daemon.config``: the running configuration with where each key came from."""
        cfg: Config = self.daemon.config
        return {"source": cfg.source, "reloads": self.reloads, "last_reload": self.last,
                "keys": provenance(cfg, self.raw)}


def register_secrets(cfg: Config) -> None:
    """Every secret the provider and engine tables refer to (``*_file``/``*_env``; each value of a list)
    joins the log scrubber's set."""
    for group in (cfg.engines, cfg.onramp):
        for table in group.values():
            for key in list(table):
                stem = secret_stem(key)
                if stem is None:
                    continue
                value = read_secret_reference(table, stem)[0]
                for part in (value or "").split(","):
                    logs.add_secret(part.strip())


def _prepare_logs(new: Config, changed: list[str]) -> Apply | None:
    if "daemon.log_level" in changed or "daemon.log_format" in changed:
        return lambda: logs.setup(new.daemon.log_level, new.daemon.log_format)
    return None


def register_reload_methods(d: Any) -> None:
    """``daemon.reload`` and ``daemon.config``."""
    r = d.registry

    @r.method("daemon.reload", result="{changed: [dotted keys]}")
    async def daemon_reload(p: dict[str, Any]) -> Any:
        """Re-read the config file and apply the dynamic keys (log level and format, [http] limits and
        allow_ips, onramp providers' secrets and reconciler settings, [engines.*] tokens) without dropping
        connections or locking the wallet; SIGHUP does the same. Refused (-32060, naming the key, nothing
        applied) when the file does not parse or a key that needs a restart changed."""
        return await d.reloader.reload("daemon.reload RPC")

    @r.method("daemon.config", result="{source, reloads, last_reload: {at, by, ok, changed | error} | null, "
                                      "keys: {dotted.key: {value, from: file|default|env|dev}}}")
    async def daemon_config(p: dict[str, Any]) -> Any:
        """The effective configuration and where each key came from; secret values are shown only as
        <set>/<unset> (the *_file path or *_env variable name that refers to them is shown). `reloads` counts
        applied reloads; `last_reload` is the last attempt's outcome (a refused SIGHUP shows its error here)."""
        return d.reloader.effective()


async def serve_signals(d: Any) -> None:
    """SIGTERM and SIGINT stop the daemon ``d`` (gracefully); SIGHUP reopens the logs and reloads the config.
    Runs until cancelled."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                logs.setup(d.config.daemon.log_level, d.config.daemon.log_format)
                daemon_log.info("SIGHUP: logs reopened; reloading %s", d.config.source)
                try:
                    await d.reloader.reload("SIGHUP")
                except TachyonError:
                    pass  # logged by the reloader, with the key; the running configuration is kept
                except Exception:  # a bug in an apply hook must not end the daemon on a SIGHUP
                    daemon_log.exception("reload (SIGHUP) failed")
                continue
            d.request_stop(signal.Signals(signum).name)
