"""The daemon: one trio nursery owning the RPC socket, the HTTP server, the wallet and every service."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from . import __version__
from .config import Config, ConfigError, default_document_toml
from .dex import api as dex_api
from .dex.service import DexService
from .errors import ShuttingDown, TachyonError
from .ledger import api as ledger_api
from .onramp import api as onramp_api
from .onramp.service import OnrampService
from .plugins import PluginLoadError, Plugins
from .rpc.dispatch import Dispatcher, Registry
from .rpc.server import RpcServer, SocketInUse, raise_nofile_limit
from .runtime import api as core_api
from .runtime import logs
from .runtime.hardening import PRIVATE_UMASK, disable_core_dumps, make_private_dir
from .runtime.metrics import Metrics
from .runtime.reload import Reloader, serve_signals
from .runtime.startup import StartupError, build_parser, exception_leaves, resolve_config, startup_failure
from .runtime.systemd import Notifier, serve_watchdog, watchdog_interval_s
from .wallet import api as wallet_api

log = logging.getLogger("tachyond")

DRAIN_TIMEOUT_S = 10.0


class Daemon:
    """Holds the configuration, the plugin registrations and the running services."""

    def __init__(self, config: Config, *, notifier: Notifier | None = None):
        self.config = config
        self.version = __version__
        self.metrics = Metrics()
        self.registry = Registry()
        self.dispatcher = Dispatcher(self.registry, self.metrics)
        self.plugins = Plugins(config.disabled_plugins)
        self.notifier = notifier or Notifier()
        self.shutdown = trio.Event()
        self.started_monotonic = time.monotonic()
        self.engine_factories: dict[str, tuple[str, Callable[..., Any]]] = {}
        self.provider_factories: dict[str, tuple[str, Callable[..., Any]]] = {}
        self.address_validators: dict[str, tuple[str, Callable[[str], str]]] = {}
        self.background_tasks: list[tuple[str, str, Callable[..., Any]]] = []
        self.wallet: Any = None
        self.ledger: Any = None
        self.dex: Any = None
        self.onramp: Any = None
        self.socket_path: Path = config.daemon.socket
        self.http_binds: list[str] = []
        self.nursery: trio.Nursery | None = None
        self.reloader = Reloader(self)  # SIGHUP and daemon.reload (tachyond/runtime/reload.py)

    # --- plugins --------------------------------------------------------------------------------

    def load_plugins(self, extra: Sequence[tuple[str, Any]] = ()) -> None:
        """Load entry points (and ``extra`` objects, for embedding), then gather what each registers."""
        try:
            self.plugins.load_entry_points()
            for name, obj in extra:
                self.plugins.register(obj, name)
            for plugin, name, args, kw in self.plugins.collect("register_engines"):
                self._claim(self.engine_factories, "engine", plugin, name, args[1] if len(args) > 1 else kw["factory"])
            for plugin, name, args, kw in self.plugins.collect("register_onramp_providers"):
                self._claim(
                    self.provider_factories,
                    "onramp provider",
                    plugin,
                    name,
                    args[1] if len(args) > 1 else kw["factory"],
                )
            for plugin, name, args, kw in self.plugins.collect("register_address_validators"):
                self._claim(
                    self.address_validators,
                    "address validator for network",
                    plugin,
                    name,
                    args[1] if len(args) > 1 else kw["fn"],
                )
            for plugin, name, args, kw in self.plugins.collect("register_background_tasks"):
                self.background_tasks.append((plugin, name, args[1] if len(args) > 1 else kw["fn"]))
            self._check_config_against_plugins()
            self.build_services()
            self.register_methods()
            for plugin, _name, args, kw in self.plugins.collect("register_rpc_methods"):
                try:
                    self.registry.add(*args, **kw, plugin=plugin)  # type: ignore[misc]  # a plugin passing plugin= is a TypeError, caught below
                except (TypeError, ValueError) as exc:
                    raise PluginLoadError(str(exc)) from None
        except PluginLoadError as exc:
            raise StartupError(str(exc)) from None

    def _check_config_against_plugins(self, config: Config | None = None) -> None:
        """Engines and providers the config names must be provided by a loaded plugin (a ConfigError otherwise)."""
        cfg = config or self.config
        engines = ", ".join(sorted(self.engine_factories)) or "none"
        for i, market in enumerate(cfg.markets):
            if market.engine not in self.engine_factories:
                raise ConfigError(
                    f"markets[{i}].engine", f"no loaded plugin provides engine {market.engine!r} (available: {engines})"
                )
        for name, table in cfg.engines.items():
            if name not in self.engine_factories:
                raise ConfigError(
                    f"engines.{name}", f"no loaded plugin provides engine {name!r} (available: {engines})"
                )
            validate = getattr(self.engine_factories[name][1], "validate_config", None)
            if validate is not None:  # optional: lets an engine refuse a bad table at start, not at first unlock
                try:
                    validate(dict(table))
                except Exception as exc:
                    message = getattr(exc, "message", None) or str(exc)
                    key, sep, reason = (
                        message.partition(": ") if message.startswith(f"engines.{name}.") else ("", "", "")
                    )
                    raise ConfigError(key, reason) if sep else ConfigError(f"engines.{name}", message) from None
        providers = ", ".join(sorted(self.provider_factories)) or "none"
        for name in cfg.onramp:
            if name not in self.provider_factories:
                raise ConfigError(
                    f"onramp.{name}", f"no loaded plugin provides onramp provider {name!r} (available: {providers})"
                )

    @staticmethod
    def _claim(table: dict[str, Any], what: str, plugin: str, name: Any, value: Any) -> None:
        if not isinstance(name, str) or not name:
            raise PluginLoadError(f"plugin {plugin!r} registered a {what} without a name")
        if name in table:
            raise PluginLoadError(
                f"plugin {plugin!r}: {what} {name!r} is already registered by plugin {table[name][0]!r}"
            )
        table[name] = (plugin, value)

    def prepare_services_for_check(self) -> None:
        """Build what start-up would build from the config (services, provider configs), without running."""
        if self.wallet is None:
            self.build_services()

    # --- state for RPC and HTTP -----------------------------------------------------------------

    def uptime_s(self) -> int:
        return int(time.monotonic() - self.started_monotonic)

    def wallet_state(self) -> str:
        return self.wallet.state if self.wallet is not None else "absent"

    def refresh_gauges(self) -> None:
        for service in (self.dex, self.onramp):
            if service is not None and hasattr(service, "refresh_gauges"):
                service.refresh_gauges()

    async def health(self) -> dict[str, str]:
        """What does not answer: ``{}`` when the RPC socket, the DB and every engine do."""
        problems: dict[str, str] = {}
        try:
            with trio.fail_after(2):
                stream = await trio.open_unix_socket(str(self.socket_path))
                await stream.aclose()
        except (OSError, trio.TooSlowError) as exc:
            problems["rpc_socket"] = f"{self.socket_path} does not accept connections ({exc})"
        for name, service in (("wallet", self.wallet), ("dex", self.dex), ("onramp", self.onramp)):
            if service is not None and hasattr(service, "health"):
                try:
                    with trio.fail_after(2):
                        problems.update(await service.health())
                except Exception as exc:
                    problems[name] = f"{type(exc).__name__}: {exc}"
        return problems

    def request_stop(self, why: str) -> None:
        if not self.shutdown.is_set():
            log.info("stopping: %s", why)
            self.shutdown.set()

    # --- running --------------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Start every service in one nursery; return after a graceful stop."""
        cfg = self.config
        try:
            make_private_dir(cfg.daemon.data_dir)  # 0700 before anything is written in it
        except OSError as exc:
            raise StartupError(f"daemon.data_dir: cannot create {cfg.daemon.data_dir}: {exc.strerror or exc}") from exc
        raise_nofile_limit()  # soft RLIMIT_NOFILE up to the hard one: the connection caps bind before EMFILE does
        rpc = RpcServer(
            self.dispatcher,
            drain_timeout_s=DRAIN_TIMEOUT_S,
            max_connections=cfg.daemon.max_rpc_connections,
            max_connections_per_uid=cfg.daemon.max_rpc_connections_per_uid,
            idle_timeout_s=cfg.daemon.rpc_idle_timeout_s,
            wait_for_start=True,
        )
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(serve_signals, self)
            await self._start_services(nursery)
            # The servers watch the shutdown event themselves and drain in-flight work before returning;
            # only the auxiliary tasks (signals, watchdog, plugin tasks) are cancelled afterwards.
            async with trio.open_nursery() as servers:
                try:
                    await servers.start(
                        rpc.serve, cfg.daemon.socket, cfg.daemon.socket_mode, cfg.daemon.socket_group, self.shutdown
                    )
                except (SocketInUse, OSError) as exc:
                    raise StartupError(f"daemon.socket: {exc}") from None
                if cfg.http is not None:
                    from .http import serve_http

                    try:
                        self.http_binds = await servers.start(serve_http, self, self.shutdown)
                    except* OSError as group:  # hypercorn binds inside its own nursery
                        first = exception_leaves(group)[0]
                        raise StartupError(f"http.listen: cannot listen on {', '.join(cfg.http.listen)}: "
                                           f"{getattr(first, 'strerror', None) or first}") from None
                for plugin, name, fn in self.background_tasks:
                    nursery.start_soon(self._plugin_task, plugin, name, fn)
                interval = watchdog_interval_s()
                if interval:
                    await nursery.start(serve_watchdog, self.notifier, interval, lambda: not self.shutdown.is_set())
                status = f"serving on {cfg.daemon.socket}" + (
                    f" and {', '.join(self.http_binds)}" if self.http_binds else ""
                )
                rpc.started()   # the socket answers once the HTTP listeners are bound too (daemon.info["http"])
                self.notifier.ready(status)
                log.info("tachyond %s %s (wallet %s)", self.version, status, self.wallet_state())
                self.plugins.notify("daemon_started", daemon=self)
                task_status.started(self)
                await self.shutdown.wait()
                self.notifier.stopping("draining")
                self.plugins.notify("daemon_stopping", daemon=self)
            await self._stop_services()
            nursery.cancel_scope.cancel()
        log.info("tachyond stopped")

    def build_services(self) -> None:
        """Construct the wallet and ledger (and register their schemas) before anything runs."""
        from .ledger.service import Ledger
        from .wallet.wallet import INSECURE_TEST_SCRYPT_ENV, Wallet, scrypt_n_from_env

        try:
            scrypt_n = scrypt_n_from_env(self.config.daemon.data_dir)  # refused outside the temp dir
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        if os.environ.get(INSECURE_TEST_SCRYPT_ENV):
            log.warning("%s=%d lowers the wallet's password hashing for tests (data_dir %s is under the temp "
                        "dir): never set it for real money", INSECURE_TEST_SCRYPT_ENV, scrypt_n,
                        self.config.daemon.data_dir)
        self.wallet = Wallet(self.config.daemon.data_dir, scrypt_n=scrypt_n)
        self.wallet.add_lock_listener(self.on_locked)
        self.ledger = Ledger(self.wallet, self.config.token_map())
        # Each service registers its wallet schema in its constructor; register_methods adds their RPC methods.
        # Always present: with no [[markets]], dex.markets is [] and orders name an unknown market.
        self.dex = DexService(self.wallet, self.metrics, lambda: self.config, self.plugins, self.engine_factories)
        # Always present: with no [onramp.*] table, onramp.* answers "not configured" rather than "method not found".
        self.onramp = OnrampService(self.wallet, self.ledger, lambda: self.config, self.metrics, self.plugins,
                                    self.provider_factories, self.address_validators, lambda: self.http_binds)
        for name, service in (("dex", self.dex), ("onramp", self.onramp)):
            self.reloader.add(name, service.prepare_config)  # reload: each service applies its dynamic keys

    def register_methods(self) -> None:
        """The one registration path: the core's methods, then each domain's ``api.register`` with its service
        (wallet, ledger, dex, onramp: the order of docs/rpc.md)."""
        core_api.register(self.registry, self)
        wallet_api.register(self.registry, self.wallet, settings=lambda: self.config.wallet,
                            on_unlocked=self.on_unlocked)
        ledger_api.register(self.registry, self.ledger, self.wallet)
        dex_api.register(self.registry, self.dex)
        onramp_api.register(self.registry, self.onramp)

    async def _start_services(self, nursery: trio.Nursery) -> None:
        """Open the wallet file (and unlock it from password_file); start the services that need it."""
        await nursery.start(self.wallet.serve)
        pw_file = self.config.wallet.password_file
        if pw_file is not None and self.wallet.state == "locked":
            try:
                password = pw_file.read_text().rstrip("\n")
            except OSError as exc:
                raise StartupError(f"wallet.password_file: cannot read {pw_file}: {exc.strerror}") from None
            logs.add_secret(password)
            try:
                await self.wallet.unlock(password, self.config.wallet.unlock_timeout_s)
            except TachyonError as exc:
                raise StartupError(f"wallet.password_file: {exc.message}") from None
            log.info("wallet unlocked from %s", pw_file)
        for service in (self.dex, self.onramp):
            if service is not None:
                await nursery.start(self._serve_service, service)
        await self.on_unlocked()

    async def _serve_service(self, service: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run a service; once a stop is under way, its tasks meeting the closing wallet end it quietly."""
        try:
            await service.serve(task_status=task_status)
        except* ShuttingDown:
            if not self.shutdown.is_set():
                raise
            log.debug("%s ended as the wallet closed during the stop", type(service).__name__)

    async def on_unlocked(self) -> None:
        """Tell the services that need the key (engines, the onramp inbox worker) that the wallet is unlocked."""
        if self.wallet.state != "unlocked":
            return
        indexed = await self.ledger.index_history()  # entries from before the history index (an upgrade)
        if indexed:
            log.info("ledger: %d journal entries added to the history index", indexed)
        for service in (self.dex, self.onramp):
            if service is not None:
                await service.on_unlocked()

    async def on_locked(self) -> None:
        """Tell the services that hold key material (engines) that the wallet was locked: they drop it."""
        for service in (self.dex, self.onramp):
            if service is not None and hasattr(service, "on_locked"):
                await service.on_locked()

    async def _stop_services(self) -> None:
        """Close services in reverse order (the servers have drained): onramp, dex; the wallet closes last."""
        for service in (self.onramp, self.dex):
            if service is not None:
                with trio.move_on_after(DRAIN_TIMEOUT_S) as scope:
                    scope.shield = True
                    await service.aclose()

    async def _plugin_task(self, plugin: str, name: str, fn: Callable[..., Any]) -> None:
        try:
            await fn(self)
        except Exception:
            log.exception("background task %s of plugin %s failed; the daemon goes on without it", name, plugin)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["inspect"]:  # `tachyond inspect PATH`: a stopped wallet file, read-only
        from .wallet.inspect import main as inspect_main

        return inspect_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.print_default_config:
        sys.stdout.write(default_document_toml())
        return 0
    try:
        config = resolve_config(args)
    except ConfigError as exc:
        print(f"tachyond: config error: {exc}", file=sys.stderr)
        return 2
    logs.setup(config.daemon.log_level, config.daemon.log_format)
    os.umask(PRIVATE_UMASK)  # whatever the daemon or a plugin creates is private unless it says otherwise
    hardened = disable_core_dumps()
    if not all(hardened.values()):
        log.warning("core dumps could not be fully disabled (%s): a crash could leave the unlocked key on disk",
                    ", ".join(k for k, ok in hardened.items() if not ok))
    try:
        if args.check_config:
            daemon = Daemon(config)
            daemon.load_plugins()
            daemon.prepare_services_for_check()
            print(f"tachyond: {config.source}: configuration OK")
            return 0
        trio.run(_run, config)
    except KeyboardInterrupt:
        return 0
    except BaseException as exc:  # noqa: BLE001 - a start-up failure becomes one line, whatever nursery raised it
        failure = startup_failure(exc)
        if failure is None:
            raise
        code, message = failure
        print(f"tachyond: {'config error' if code == 2 else 'cannot start'}: {message}", file=sys.stderr)
        return code
    return 0


async def _run(config: Config) -> None:
    daemon = Daemon(config)
    daemon.load_plugins()
    if config.dev:
        from .runtime.devmode import run_dev

        await run_dev(daemon)
    else:
        await daemon.run()
