"""MemoryEngine: the shared matching core plus a bounded in-memory event log; nothing survives a restart."""

from __future__ import annotations

from collections.abc import Sequence

from tachyond.engine import Depth, EngineContext, EngineOrder, Event, MarketSpec
from tachyond.errors import EngineError
from tachyond.matching import Matcher

# Small on purpose: every retained event is a live object the garbage collector walks (a 10,000-event log
# halves throughput in bench/bench_engines.py); the core takes events from submit's return value.
DEFAULT_LOG_LIMIT = 1_024


class MemoryEngine:
    """Matches in process memory. Methods never block, so they never yield to the trio scheduler.

    It offers the optional in-transaction methods (``tachyond.engine.TransactionalEngine``): the core then
    matches inside the wallet's write transaction, one durable commit per order, and restores the books from
    the ledger's open orders (``reset_in_tx``, then each submitted again) whenever that transaction does not
    commit.

    ``events_after`` serves a log of at most ``log_limit`` events (``[engines.memory] log_limit``); older
    events, and those ``compact`` was told the core applied, are dropped.
    """

    durable = False
    in_tx = True

    @staticmethod
    def validate_config(config: dict) -> None:
        """Checked by the daemon at start, so a bad [engines.memory] stops it before anything runs."""
        for key in config:
            if key != "log_limit":
                raise EngineError(f"engines.memory.{key}: unknown key (known: log_limit)")
        limit = config.get("log_limit", DEFAULT_LOG_LIMIT)
        if type(limit) is not int or limit < 1:
            raise EngineError("engines.memory.log_limit must be a positive integer")

    def __init__(self, ctx: EngineContext):
        self.name = ctx.name
        self._matcher = Matcher()
        self._log: list[Event] = []
        self._log_floor = 0  # events_after(seq) is answerable for seq >= _log_floor; _log[0].seq == floor + 1
        limit = ctx.config.get("log_limit", DEFAULT_LOG_LIMIT)
        if type(limit) is not int or limit < 1:
            raise EngineError("engines.memory.log_limit must be a positive integer")
        self._log_limit = limit
        self._trim_above = limit + (limit >> 2) + 16   # trim in chunks: del log[:n] amortised over many events
        self._closed = False
        self._markets: list[str] = []
        self._submit = self._matcher.submit   # bound once: submit is the hot path

    async def start(self, markets: Sequence[MarketSpec]) -> None:
        for spec in markets:
            self._matcher.add_market(spec.symbol)
            self._markets.append(spec.symbol)

    # --- in the wallet's write transaction (on its writer thread; the core holds the engine's lock) ---------

    def reset_in_tx(self, tx: object) -> int:
        """Empty books, no order id remembered (the core re-submits the ledger's open orders next); the
        sequence goes on from where it was."""
        if self._closed:
            raise EngineError("memory engine is closed")
        matcher = Matcher(last_seq=self._matcher.last_seq)
        for symbol in self._markets:
            matcher.add_market(symbol)
        self._matcher = matcher
        self._submit = matcher.submit
        self._log.clear()
        self._log_floor = matcher.last_seq
        return matcher.last_seq

    def submit_in_tx(self, tx: object, order: EngineOrder) -> list[Event]:
        if self._closed:
            raise EngineError("memory engine is closed")
        events = self._submit(order)
        self._record(events)
        return events

    def cancel_in_tx(self, tx: object, market: str, order_id: str) -> list[Event]:
        if self._closed:
            raise EngineError("memory engine is closed")
        events = self._matcher.cancel(market, order_id)
        if events:
            self._record(events)
        return events

    async def submit(self, order: EngineOrder) -> list[Event]:
        if self._closed:
            raise EngineError("memory engine is closed")
        events = self._submit(order)
        log = self._log
        log += events
        if len(log) > self._trim_above:
            self._drop_through(log[-1].seq - self._log_limit)
        return events

    async def cancel(self, market: str, order_id: str) -> list[Event]:
        return self.cancel_in_tx(None, market, order_id)   # the same: the memory engine writes nothing

    def _record(self, events: list[Event]) -> None:
        log = self._log
        log.extend(events)
        if len(log) > self._trim_above:
            self._drop_through(log[-1].seq - self._log_limit)

    def _drop_through(self, seq: int) -> None:
        """Forget events with a sequence number <= ``seq``."""
        n = seq - self._log_floor
        if n > 0:
            del self._log[:n]
            self._log_floor = seq

    async def depth(self, market: str, levels: int) -> Depth:
        return self._matcher.depth(market, levels)

    async def open_orders(self, market: str) -> list[EngineOrder]:
        return self._matcher.open_orders(market)

    async def events_after(self, seq: int, limit: int = 1000) -> list[Event]:
        if seq < self._log_floor:
            raise EngineError(
                f"memory engine events after seq {seq} are gone: its log starts after seq {self._log_floor}")
        start = seq - self._log_floor
        return self._log[start:start + max(0, limit)]

    async def last_seq(self) -> int:
        return self._matcher.last_seq

    async def compact(self, applied_seq: int) -> None:
        """Drop logged events the core has applied (the memory engine keeps no retention window)."""
        self._drop_through(min(applied_seq, self._matcher.last_seq))

    async def aclose(self) -> None:
        self._closed = True
