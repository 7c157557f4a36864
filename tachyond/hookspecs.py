"""Every hook a tachyond plugin can implement. Each is documented, with an example, in docs/plugins.md.

Hooks are plain (sync) functions that register objects; the registered objects carry the async methods.
pluggy has no async support: an ``async def`` hook implementation would return an un-awaited coroutine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import hookspec


@hookspec
def register_engines(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register matching-engine factories: ``register("memory", factory)``; factory(EngineContext) -> engine."""


@hookspec
def register_onramp_providers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register onramp-provider factories: ``register("stripe", factory)``; factory(config: dict) -> provider."""


@hookspec
def register_rpc_methods(register: Callable[..., None]) -> None:
    """Register JSON-RPC methods: ``register(name, handler, params=[Param...], doc="...")``; handler(params) is async."""  # noqa: E501 (shown verbatim)


@hookspec
def register_address_validators(register: Callable[[str, Callable[[str], str]], None]) -> None:
    """Register address validators per network: ``register("ethereum", fn)``; fn(address) -> normalised or raises."""


@hookspec
def register_background_tasks(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register long-running tasks for the daemon's nursery: ``register(name, async_fn)``; async_fn(daemon)."""


@hookspec
def daemon_started(daemon: Any) -> None:
    """Called once the daemon serves (after READY=1); ``daemon`` exposes config, ledger and services."""


@hookspec
def daemon_stopping(daemon: Any) -> None:
    """Called once when the graceful stop begins, before services drain."""


@hookspec
def order_filled(trade: dict[str, Any]) -> None:
    """Called after a fill is settled and committed, with the trade as ``dex.trades`` returns it."""


@hookspec
def topup_credited(topup: dict[str, Any]) -> None:
    """Called after an onramp topup is claimed and committed, with the claim result."""
