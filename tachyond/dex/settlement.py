"""Settlement: engine events checked against this wallet's orders, then applied exactly once in the engine's
sequence order, one wallet write per batch; trades published to ``dex.watch`` subscribers.
"""

from __future__ import annotations

import logging
import secrets

import trio

from ..engine import Event
from ..errors import EngineError
from .checks import check_events
from .state import _NOTHING, ACK_EVERY, EVENTS_PAGE, DexState
from .store import known_order_ids_read, settle_op, trade_public
from .watch import WATCH_BUFFER, Watcher

log = logging.getLogger("tachyond.dex")


class Settlement(DexState):
    """Settles engine events in order (the layer above the shared state)."""

    async def _settle_next(self, name: str, events: list[Event], store_seq: bool = True) -> dict:
        """Settle in the engine's settlement order (after every settlement already reserved)."""
        return await self._settle_in_order(name, events, self._reserve_settlement(name), store_seq)

    async def _settle_in_order(self, engine_name: str, events: list[Event], slot: tuple[trio.Event, trio.Event],
                               store_seq: bool = True) -> dict:
        """Settle after every earlier submit of this engine has settled, so seqs are applied in order."""
        prev, mine = slot
        try:
            await prev.wait()
            return await self._settle(engine_name, events, store_seq)
        finally:
            mine.set()

    async def _settle(self, engine_name: str, events: list[Event], store_seq: bool = True) -> dict:
        """Check, then apply one batch of events in one wallet write (caller holds the settlement order).

        Events already applied are passed over (a shared engine's submit answer and its feed carry the same
        events); a gap before the first is filled from the engine's feed. Every event is checked against this
        wallet's own orders first: the first that does not fit halts the engine's settlement, and moves nothing.
        """
        if not events:
            return _NOTHING
        if engine_name in self.failures:  # never apply later events over a gap
            raise EngineError(f"engine {engine_name} is not serving: {self.failures[engine_name]}")
        if engine_name in self.halts:
            raise EngineError(f"settlement of engine {engine_name} is halted: {self.halts[engine_name]}")
        if store_seq:
            events = await self._in_sequence(engine_name, events)
            if not events:
                return _NOTHING
        ids = {ev.order_id for ev in events if isinstance(ev.order_id, str)}
        ids |= {ev.maker_order_id for ev in events if isinstance(ev.maker_order_id, str)}
        orders = {i: {**self._open[i], "trades": list(self._open[i]["trades"])} for i in ids if i in self._open}
        unknown = ids - set(orders)
        closed = await self.wallet.read(known_order_ids_read, unknown) if unknown else set()
        bad = check_events(events, engine_name, self._open, closed, self.markets)
        good = events if bad is None else events[:bad[0]]
        result = _NOTHING
        if good:
            result = await self._apply(engine_name, good, orders, store_seq)
        if bad is not None:
            self.metric_invalid.labels(engine_name).inc()
            self._halt(engine_name, f"invalid event refused: {bad[1]}")
            raise EngineError(f"settlement of engine {engine_name} is halted: {self.halts[engine_name]}")
        return result

    async def _in_sequence(self, engine_name: str, events: list[Event]) -> list[Event]:
        """The events after the applied seq, in order, with any gap before them filled from the feed."""
        for ev in events:
            if type(ev.seq) is not int or ev.seq <= 0:
                self.metric_invalid.labels(engine_name).inc()
                self._halt(engine_name, f"invalid event refused: engine {engine_name} sent an event whose seq "
                                        f"{str(ev.seq)[:20]!r} is not a positive integer")
                raise EngineError(f"settlement of engine {engine_name} is halted: {self.halts[engine_name]}")
        applied = self._applied.get(engine_name, 0)
        events = [ev for ev in events if ev.seq > applied]
        if not events or events[0].seq == applied + 1:
            return events
        engine = self.engines.get(engine_name)
        gap: list[Event] = []
        after = applied
        while engine is not None and after < events[0].seq - 1:
            page = [ev for ev in await engine.events_after(after, EVENTS_PAGE)
                    if type(ev.seq) is int and after < ev.seq < events[0].seq]
            if not page:
                break
            gap += page
            after = page[-1].seq
        if after < events[0].seq - 1:
            self._halt(engine_name, f"engine {engine_name} sent seq {events[0].seq} but its feed has no events "
                                    f"between seq {after} and it: this wallet would miss events")
            raise EngineError(f"settlement of engine {engine_name} is halted: {self.halts[engine_name]}")
        return gap + events

    async def _apply(self, engine_name: str, events: list[Event], orders: dict, store_seq: bool) -> dict:
        try:
            result = await self.wallet.write(settle_op, engine_name, self._base_seq[engine_name], events, orders,
                                             self.markets, store_seq)
        except Exception as exc:
            # The engine moved on but the ledger did not: stop using the engine; a restart replays or re-seeds.
            self.failures[engine_name] = f"settlement failed ({type(exc).__name__}: {exc}); restart the daemon"
            log.exception("settlement of %s events failed", engine_name)
            raise EngineError(self.failures[engine_name]) from exc
        self._after_settle(engine_name, events, result, store_seq)
        if store_seq:
            await self._acknowledge(engine_name, ACK_EVERY if engine_name in self._shared else 1)
        return result

    def _after_settle(self, engine_name: str, events: list[Event], result: dict, store_seq: bool) -> None:
        """What follows a committed settlement: the applied seq, the open orders, metrics, hooks, watchers."""
        if store_seq and events:
            self._applied[engine_name] = events[-1].seq
        for order in result["orders"].values():
            self._remember(order)
            if order["status"] == "canceled":
                self.metrics.orders_canceled.labels(order["market"]).inc()
            elif order["status"] == "closed":
                self.metrics.orders_filled.labels(order["market"]).inc()
        for trade in result["trades"]:
            self.metrics.trades.labels(trade["market"]).inc()
            public = trade_public(trade, self.markets[trade["market"]])
            self.plugins.notify("order_filled", trade=public)
            if self.watchers:
                self._publish(public)

    async def _acknowledge(self, engine_name: str, every: int) -> None:
        """Tell the engine what is applied (``compact``): a shared engine every ``every`` seqs and when idle."""
        engine = self.engines.get(engine_name)
        seq = self._applied.get(engine_name, 0)
        if not hasattr(engine, "compact") or seq - self._acked.get(engine_name, 0) < every:
            return
        self._acked[engine_name] = seq
        try:
            await engine.compact(seq)  # type: ignore[union-attr]  # opened engines are in self.engines
        except EngineError as exc:   # settled all the same; a later settlement acknowledges again
            log.debug("engine %s: acknowledging seq %d failed: %s", engine_name, seq, exc.message)

    def watch(self, market: str | None, owner: object = None) -> Watcher:
        """A new subscription to settled trades (of ``market``, or all); its channel holds WATCH_BUFFER trades."""
        send, receive = trio.open_memory_channel(WATCH_BUFFER)
        watcher = Watcher(secrets.token_hex(8), market, send, receive, owner)
        self.watchers[watcher.id] = watcher
        self.metrics.dex_watchers.set(len(self.watchers))
        return watcher

    def unwatch(self, watch_id: str, reason: str | None = None) -> bool:
        """End a subscription (its stream sends what is queued, then stops); False if there is none."""
        watcher = self.watchers.pop(watch_id, None)
        if watcher is None:
            return False
        watcher.ended = reason
        watcher.send.close()
        self.metrics.dex_watchers.set(len(self.watchers))
        return True

    def _publish(self, trade: dict) -> None:
        for watcher in list(self.watchers.values()):
            if watcher.market is None or watcher.market == trade["market"]:
                try:
                    watcher.send.send_nowait(trade)
                except trio.WouldBlock:
                    # Settlement never waits for a reader: a subscriber that fell this far behind is dropped.
                    self.unwatch(watcher.id, f"the client fell {WATCH_BUFFER} trades behind; watch again")
