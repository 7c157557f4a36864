"""The reconciler: backfills the complete sessions no webhook brought in, by listing each provider's recent ones.

A timer per provider (every ``reconcile_interval_s``) and ``onramp.reconcile`` list the provider's sessions of
the last ``reconcile_lookback_h`` hours and queue this wallet's complete ones in the inbox, where the worker
confirms them like any webhook.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from ..errors import OnrampError, TachyonError, WalletAbsent
from ..runtime.metrics import Metrics
from ..wallet.wallet import Wallet
from .inbox import COMPLETE

log = logging.getLogger("tachyond.onramp")

DEFAULT_LOOKBACK_H = 72   # a buyer may resume a session days after creating it

# enqueue(provider, event_id, session_id, status, extra) -> True when the event was new: Inbox.enqueue.
Enqueue = Callable[[str, str, str, str | None, dict], Awaitable[bool]]


def _takes_status(list_sessions: Any) -> bool:
    """Whether a provider's ``list_sessions`` accepts the ``status`` filter (added later to the protocol)."""
    import inspect

    try:
        params = inspect.signature(list_sessions).parameters
    except (TypeError, ValueError):
        return False
    return "status" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


class Reconciler:
    """Lists each provider's recent sessions and queues this wallet's complete ones through ``enqueue``.

    ``providers`` is the service's own table, not a copy: a reload may replace a provider there, and each
    timer round and each run use the one in force then.
    """

    def __init__(self, wallet: Wallet, providers: Mapping[str, Any], metrics: Metrics, enqueue: Enqueue):
        self.wallet = wallet
        self.providers = providers
        self.metrics = metrics
        self.enqueue = enqueue
        self.last: dict[str, dict] = {}          # provider -> {at, checked, enqueued} of its last run
        self._reconfigured = trio.Event()       # set (and replaced) by a reload: the timers re-read

    def reconfigured(self) -> None:
        """A reload applied new provider settings: every timer starts its interval again, with them."""
        woken, self._reconfigured = self._reconfigured, trio.Event()
        woken.set()

    async def run_timer(self, name: str) -> None:
        """Reconcile provider ``name`` every ``reconcile_interval_s`` until cancelled; a failed run is logged."""
        while True:
            provider = self.providers[name]  # re-read each round: a reload may have replaced it
            interval_s = float(getattr(provider, "reconcile_interval_s", 300))
            lookback_h = float(getattr(provider, "reconcile_lookback_h", DEFAULT_LOOKBACK_H))
            reconfigured = self._reconfigured
            with trio.move_on_after(interval_s):
                await reconfigured.wait()
            if reconfigured.is_set():
                continue  # new settings: start the interval again with them
            try:
                result = await self.reconcile_provider(name, lookback_h)
                if result["enqueued"]:
                    log.info("reconciler %s: %d session(s) backfilled", name, result["enqueued"])
            except TachyonError as exc:
                log.warning("reconciler %s: %s", name, exc.message)
            except Exception:
                log.exception("reconciler %s failed; it runs again in %.0f s", name, interval_s)

    async def reconcile(self, lookback_h: float | None = None) -> dict:
        """List recent sessions of every provider; queue tagged, complete ones no event brought in (default
        lookback: each provider's ``reconcile_lookback_h``)."""
        if self.wallet.state == "absent":
            raise WalletAbsent()
        total = {"checked": 0, "enqueued": 0}
        for name, provider in self.providers.items():
            hours = lookback_h if lookback_h is not None else float(getattr(provider, "reconcile_lookback_h",
                                                                            DEFAULT_LOOKBACK_H))
            result = await self.reconcile_provider(name, hours)
            total["checked"] += result["checked"]
            total["enqueued"] += result["enqueued"]
        return total

    async def reconcile_provider(self, name: str, lookback_h: float) -> dict:
        """List the provider's complete sessions of the last ``lookback_h`` hours (every page); queue this
        wallet's that no event brought in. ``checked`` counts this wallet's sessions listed."""
        provider = self.providers[name]
        wallet_id = self.wallet.public_id
        if wallet_id is None:
            return {"checked": 0, "enqueued": 0}
        try:
            since = int(time.time() - lookback_h * 3600)
            if _takes_status(provider.list_sessions):
                sessions = await provider.list_sessions(since, status=COMPLETE)
            else:   # a provider written before the status filter: it lists all, the loop below filters
                sessions = await provider.list_sessions(since)
        except OnrampError:
            self.metrics.provider_api_errors.labels(name).inc()
            raise
        checked = enqueued = 0
        for info in sessions:
            if info.wallet_tag != wallet_id:
                continue
            checked += 1
            if info.status != COMPLETE:
                continue
            if await self.enqueue(name, f"reconcile:{info.id}:{info.status}", info.id, info.status,
                                  {"source": "reconcile"}):
                enqueued += 1
        self.last[name] = {"at": time.time(), "checked": checked, "enqueued": enqueued}
        return {"checked": checked, "enqueued": enqueued}
