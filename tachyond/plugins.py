"""The plugin manager: loads the ``tachyon`` entry points (built-ins and third-party alike) with pluggy."""

from __future__ import annotations

import importlib.metadata as md
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import PROJECT, hookspecs

log = logging.getLogger("tachyond.plugins")

BUILTIN_DIST = "tachyond"


class PluginLoadError(Exception):
    """A plugin could not be loaded or registered; the message names it."""


@dataclass
class PluginInfo:
    name: str
    version: str
    builtin: bool
    dist: str | None
    hooks: list[str] = field(default_factory=list)


class Plugins:
    """Wraps pluggy's manager: loading, per-plugin registration calls and contained event hooks."""

    def __init__(self, disabled: tuple[str, ...] | list[str] = ()):
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.disabled = tuple(disabled)
        self.info: dict[str, PluginInfo] = {}

    def load_entry_points(self) -> None:
        """Load every ``tachyon`` entry point not blocked; then ``check_pending`` so a misspelled hook fails."""
        for name in self.disabled:
            self.pm.set_blocked(name)
        for ep in sorted(md.entry_points(group=PROJECT), key=lambda e: e.name):
            if self.pm.is_blocked(ep.name):
                log.info("plugin %s is disabled by configuration; not loaded", ep.name)
                continue
            if self.pm.get_plugin(ep.name) is not None:
                continue
            try:
                obj = ep.load()
            except Exception as exc:
                raise PluginLoadError(
                    f"plugin {ep.name!r} ({ep.value}) failed to import: {type(exc).__name__}: {exc}"
                ) from exc
            self.register(obj, ep.name, ep.dist)
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = self.pm.get_name(exc.plugin) or repr(exc.plugin)  # pluggy's error carries the plugin object
            raise PluginLoadError(f"plugin {name!r} implements an unknown hook: {exc}") from exc

    def register(self, obj: Any, name: str, dist: Any = None) -> None:
        try:
            self.pm.register(obj, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginLoadError(f"plugin {name!r} cannot be registered: {exc}") from exc
        dist_name = dist.metadata["Name"] if dist is not None else None
        version = dist.version if dist is not None else getattr(obj, "__version__", "0")
        hooks = sorted(h.name for h in self.pm.get_hookcallers(obj) or [])
        self.info[name] = PluginInfo(name=name, version=version, builtin=dist_name == BUILTIN_DIST,
                                     dist=dist_name, hooks=hooks)

    def collect(self, hook_name: str) -> list[tuple[str, Any, tuple[Any, ...], dict[str, Any]]]:
        """Call a ``register_*`` hook plugin by plugin: ``[(plugin, registered, args, kwargs), ...]``.

        Each plugin's call is separate, so what it registers is attributed to it and an exception
        names it (a start-up error).
        """
        out: list[tuple[str, Any, tuple[Any, ...], dict[str, Any]]] = []
        caller = getattr(self.pm.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):
            plugin = impl.plugin_name

            def register(*args: Any, _plugin: str = plugin, **kwargs: Any) -> None:
                out.append((_plugin, args[0] if args else kwargs.get("name"), args, kwargs))

            try:
                impl.function(*[register for _ in impl.argnames])
            except Exception as exc:
                raise PluginLoadError(f"plugin {plugin!r} failed in {hook_name}: {type(exc).__name__}: {exc}") from exc
        return out

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call an event hook on every plugin; one plugin's exception is logged with its name and contained."""
        caller = getattr(self.pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            try:
                impl.function(*[kwargs[a] for a in impl.argnames])
            except Exception:
                log.exception("plugin %s raised in %s; ignored", impl.plugin_name, hook_name)

    def listing(self) -> list[dict[str, Any]]:
        return [{"name": i.name, "version": i.version, "hooks": i.hooks, "builtin": i.builtin}
                for i in sorted(self.info.values(), key=lambda i: i.name)]


RegisterFn = Callable[..., None]
