"""tachyond: a trio wallet daemon with an encrypted double-entry ledger, a DEX and a Stripe onramp.

Plugins import only this package's public modules (PUBLIC_MODULES, kept so by tests/test_layout.py):
``hookimpl`` from here, the hook specifications in ``tachyond.hookspecs``, the engine protocol from
``tachyond.engine`` and its reference matcher ``tachyond.matching``, the onramp provider protocol from
``tachyond.providers``, money helpers from ``tachyond.amounts``, error classes from ``tachyond.errors``
the shared config parsing (``ConfigError``, ``parse_tokens``, ...) from ``tachyond.config`` and ``Param``
from ``tachyond.rpc`` for plugins that register RPC methods.
Everything else is the daemon's own and may change without notice.
"""

import pluggy

__version__ = "0.1.0"

PROJECT = "tachyon"
hookimpl = pluggy.HookimplMarker(PROJECT)
hookspec = pluggy.HookspecMarker(PROJECT)

#: The modules a plugin may import; their names without a leading underscore are the plugin API.
PUBLIC_MODULES = (
    "tachyond",
    "tachyond.hookspecs",
    "tachyond.engine",
    "tachyond.matching",
    "tachyond.providers",
    "tachyond.amounts",
    "tachyond.errors",
    "tachyond.config",
    "tachyond.rpc",  # Param, for plugins that register methods
    "tachyond.jsonx",  # the wire encoding (msgspec with a stdlib fallback) the Stripe provider shares
)

__all__ = ["__version__", "hookimpl", "hookspec", "PROJECT", "PUBLIC_MODULES"]
