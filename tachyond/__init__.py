"""tachyond: a trio wallet daemon with an encrypted double-entry ledger, a DEX and a Stripe onramp.

Plugins import only this package's public modules: ``hookimpl`` from here, the engine protocol from
``tachyond.engine``, the onramp provider protocol from ``tachyond.providers``, money helpers from
``tachyond.amounts`` and error classes from ``tachyond.errors``.
"""

import pluggy

__version__ = "0.1.0"

PROJECT = "tachyon"
hookimpl = pluggy.HookimplMarker(PROJECT)
hookspec = pluggy.HookspecMarker(PROJECT)

__all__ = ["__version__", "hookimpl", "hookspec", "PROJECT"]
