"""The DEX service: validates orders, locks holds, hands orders to engines and settles their events exactly once.

Engines match (``tachyond.engine``); this core owns balances. Per market a lock serialises
check -> record+lock -> submit -> settle, so post-only checks and market-order bounds see the book the
order meets. Per engine a second lock keeps settlement in the engine's sequence order, which is what makes
"store the last applied seq with the settlement" enough for exactly-once after a crash.

The class is built in layers (state, settlement, recovery, orders: see ``tachyond.dex.state``); this module
adds the lifecycle hooks, cancels and the read-only queries.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from ..engine import DONE_CANCELED, EngineUnavailable, Event
from ..errors import EngineError, InvalidParams, NotFound, OrderNotOpen, WalletLocked
from .fused import EngineEventRefused, cancel_op
from .market import Market
from .orders import Orders
from .state import (  # noqa: F401  (FAULT_ENV and the limits: part of this module's names)
    _NOTHING,
    ACK_EVERY,
    DEFAULT_DEPTH,
    EVENTS_PAGE,
    FAULT_ENV,
    FEED_WAIT_S,
    MAX_TRADES_LIMIT,
    RETRY_MAX_S,
    RETRY_MIN_S,
)
from .store import order_read, orders_read, trade_public, trades_read

log = logging.getLogger("tachyond.dex")


class DexService(Orders):
    """Markets, orders and settlement; registered RPC methods ``dex.*``."""

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Host the per-market order workers (engines open at the first unlock). Runs until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for name in sorted(self._shared):   # engines opened before serve() ran (unlocked at start)
                self._start_follower(name)
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def on_locked(self) -> None:
        """The wallet was locked: each engine with an ``on_lock`` hook drops its key material, after the
        submit or cancel it is running (under the engine's lock); until ``on_unlock`` its market refuses orders."""
        for name, engine in list(self.engines.items()):
            hook = getattr(engine, "on_lock", None)
            if hook is None:
                continue
            async with self._engine_locks[name]:
                if self.wallet.state == "unlocked":
                    return  # unlocked again meanwhile
                self._engines_locked.add(name)
                try:
                    await hook()
                except Exception as exc:
                    log.exception("engine %s failed to drop its keys at lock", name)
                    self.failures[name] = f"failed to drop its keys at lock: {type(exc).__name__}: {exc}"

    async def aclose(self) -> None:
        """Close every engine (the sqlite engine writes a snapshot)."""
        for name, engine in list(self.engines.items()):
            try:
                await engine.aclose()
            except Exception:
                log.exception("engine %s failed to close", name)
        self.engines.clear()

    def prepare_config(self, new_cfg: Any, changed: list[str]) -> Any:
        """Reload: an open engine whose [engines.<name>] keys changed (only its token may) prepares the change
        through its own ``prepare_config(table) -> apply``; an engine not open yet reads the new table when
        it opens. An engine without the hook refuses the reload by name."""
        from ..config import ConfigError

        applies = []
        for name in sorted({k.split(".")[1] for k in changed if k.startswith("engines.")}):
            engine = self.engines.get(name)
            if engine is None:
                continue
            prepare = getattr(engine, "prepare_config", None)
            if prepare is None:
                raise ConfigError(f"engines.{name}", "this engine cannot change its settings while running; restart")
            applies.append(prepare(dict(new_cfg.engines.get(name, {}))))
        if not applies:
            return None
        return lambda: [apply() for apply in applies if apply is not None] and None

    async def health(self) -> dict[str, str]:
        problems = {f"engine:{name}": why for name, why in self.failures.items()}
        for name, why in self.offline.items():
            problems[f"engine:{name}"] = f"unreachable, reconnecting: {why}"
        for symbol, why in self.halted_markets.items():
            problems[f"market:{symbol}"] = f"settlement halted: {why}"
        for name, engine in self.engines.items():
            if name not in self.failures and name not in self.offline:
                try:
                    await engine.last_seq()
                except Exception as exc:
                    problems[f"engine:{name}"] = f"{type(exc).__name__}: {exc}"
        return problems

    async def cancel_order(self, order_id: str | None = None, client_order_id: str | None = None,
                           account: str | None = None) -> dict:
        """Take an open order off the book and release the rest of its hold."""
        if (order_id is None) == (client_order_id is None):
            raise InvalidParams("give order_id, or client_order_id (with account when not default)")
        if self.wallet.state != "unlocked":
            raise WalletLocked()
        if not self._opened or self._engines_locked:
            await self.on_unlocked()
        if order_id is None:
            account = account or "default"
            order_id = self._open_coids.get((account, client_order_id))  # type: ignore[arg-type]  # client_order_id is given when order_id is not
            if order_id is None:
                stored = await self.wallet.read(order_read, None, account, client_order_id)
                if stored is None:
                    raise NotFound(f"no order with client_order_id {client_order_id!r} in account {account!r}")
                order_id = stored["id"]
        order = self._open.get(order_id)
        if order is None:
            await self._raise_not_open(order_id)
        m = self.markets[order["market"]]  # type: ignore[index]  # None answered NotFound above
        engine = await self._ensure_open(m)
        async with self._market_locks[m.symbol]:
            if order_id not in self._open:
                await self._raise_not_open(order_id)
            with trio.CancelScope(shield=True):
                if m.engine in self._in_tx:
                    current = self._open[order_id]
                    await self._cancel_in_tx(m, order_id, current["qty_lots"] - current["filled_lots"])
                    return await self._canceled(order_id, m)
                async with self._engine_locks[m.engine]:
                    engine = self._ready(m)
                    try:
                        events = await engine.cancel(m.symbol, order_id)
                    except EngineUnavailable as exc:
                        if hasattr(engine, "follow"):
                            self._set_offline(m.engine, exc)
                        raise EngineError(f"engine {m.engine} did not answer the cancel ({exc.message}); "
                                          f"order {order_id} stays open: cancel again when it is back") from None
                    slot = self._reserve_settlement(m.engine)
                if events:
                    await self._settle_in_order(m.engine, events, slot)
                else:  # not on the book: filled by a batch still settling, or lost by the engine
                    if hasattr(engine, "follow"):
                        # Not on a shared book: another wallet's order may have taken it; the feed says so first.
                        await self._settle_in_order(m.engine, [], slot)
                        await self._catch_up(m.engine)
                        slot = self._reserve_settlement(m.engine)
                    left = order["qty_lots"] - order["filled_lots"]  # type: ignore[index]  # None answered NotFound above
                    done = Event(0, m.symbol, "done", order_id, left, reason=DONE_CANCELED)
                    await self._settle_in_order(m.engine, [done], slot, store_seq=False)
        return await self._canceled(order_id, m)

    async def _canceled(self, order_id: str, m: Market) -> dict:
        public = await self._public({"id": order_id, "market": m.symbol})
        if public["status"] != "canceled":
            raise OrderNotOpen(f"order {order_id} is {public['status']}, not open")
        return public

    async def _cancel_in_tx(self, m: Market, order_id: str, left_lots: int) -> None:
        """Cancel on an in-tx engine and release the hold in one writer operation (engine lock held)."""
        name = m.engine
        async with self._engine_locks[name]:
            engine = self._ready(m)
            await self._reseed(name, engine)
            try:
                events, result = await self.wallet.write(cancel_op, engine, name, self._base_seq[name], m.symbol,
                                                         order_id, left_lots, self._open, self.markets,
                                                         self._applied[name])
            except EngineEventRefused as exc:
                self._refused(name, exc)
                self._reseed_due.add(name)
                raise EngineError(f"{exc.message}; settlement of engine {name} is halted") from None
            except BaseException:
                await self._reseed_after_failure(name, engine)
                raise
            self._after_settle(name, events, result, store_seq=bool(events))
            await self._acknowledge(name, 1)

    async def _raise_not_open(self, order_id: str) -> None:
        stored = await self.wallet.read(order_read, order_id)
        if stored is None:
            raise NotFound(f"no order {order_id!r}")
        raise OrderNotOpen(f"order {order_id} is {stored['status']}, not open")

    async def orders(self, account: str | None, market: str | None, status: str | None,
                     limit: int | None = None, after: str | None = None) -> list[dict]:
        if market is not None:
            self.market(market)
        if limit is not None and not 1 <= limit <= MAX_TRADES_LIMIT:
            raise InvalidParams(f"limit must be from 1 to {MAX_TRADES_LIMIT}")
        rows = await self.wallet.read(orders_read, account, market, status, limit, after)
        return [self._public_with(r) for r in rows]

    async def order_book(self, market: str, depth: int = DEFAULT_DEPTH) -> dict:
        m = self.market(market)
        engine = await self._ensure_open(m)
        d = await self._depth(engine, m, depth)
        return {"market": m.symbol, "seq": self._base_seq.get(m.engine, 0) + d.seq,
                "bids": [[m.fmt_price(p), m.fmt_qty(q)] for p, q in d.bids],
                "asks": [[m.fmt_price(p), m.fmt_qty(q)] for p, q in d.asks]}

    async def trades(
        self, market: str | None, account: str | None, limit: int, before: int | None = None
    ) -> list[dict]:
        if market is not None:
            self.market(market)
        if not 1 <= limit <= MAX_TRADES_LIMIT:
            raise InvalidParams(f"limit must be from 1 to {MAX_TRADES_LIMIT}")
        rows = await self.wallet.read(trades_read, market, account, limit, before)
        return [trade_public(t, self.markets[t["market"]]) for t in rows]
