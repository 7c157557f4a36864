"""The core's RPC methods (rpc.discover, daemon.*, plugins.list), registered like a domain's: the daemon calls
``register(registry, daemon)`` on its one registration path (Daemon.register_methods)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..rpc.dispatch import Registry
from .reload import register_reload_methods

if TYPE_CHECKING:
    from ..daemon import Daemon


def register(r: Registry, d: Daemon) -> None:
    """``rpc.discover``, ``daemon.info``, ``daemon.stop``, ``plugins.list`` (and reload's ``daemon.reload``,
    ``daemon.config``) into ``r``, answering from the daemon ``d``."""

    @r.method("rpc.discover", result="an OpenRPC 1.x document")
    async def rpc_discover(p: dict[str, Any]) -> Any:
        """An OpenRPC 1.x document of every method, plugins' included."""
        return r.discover(d.version)

    @r.method(
        "daemon.info", result="{version, uptime_s, wallet, unlocked_until, plugins, engines, markets, onramp_providers}"
    )
    async def daemon_info(p: dict[str, Any]) -> Any:
        """The daemon's version, uptime, wallet state, plugins, engines, markets and onramp providers."""
        info = {
            "version": d.version,
            "uptime_s": d.uptime_s(),
            "wallet": d.wallet_state(),
            "unlocked_until": getattr(d.wallet, "unlocked_until", None) if d.wallet is not None else None,
            "plugins": [p["name"] for p in d.plugins.listing()],
            "engines": sorted(d.engine_factories),
            "markets": [m.symbol for m in d.config.markets],
            "onramp_providers": sorted(d.config.onramp),
            "socket": str(d.socket_path),
            "http": d.http_binds,
            "dev": d.config.dev,
        }
        return info

    @r.method("daemon.stop", result="{stopping: true}")
    async def daemon_stop(p: dict[str, Any]) -> Any:
        """Stop the daemon gracefully: in-flight calls finish, the socket file is removed, exit code 0."""
        d.request_stop("daemon.stop RPC")
        return {"stopping": True}

    @r.method("plugins.list", result="[{name, version, hooks, builtin}]")
    async def plugins_list(p: dict[str, Any]) -> Any:
        """Every loaded plugin with its version, the hooks it implements and whether it ships with tachyond."""
        return d.plugins.listing()

    register_reload_methods(d)
