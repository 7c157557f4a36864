"""A storage-free limit order book with price-time priority, shared by every engine that matches in-process.

Everything is integer ticks and lots. ``OrderBook`` matches one market; ``Matcher`` holds the books of
several markets, the engine-wide sequence counter and the set of order ids already used. Engines wrap a
``Matcher`` and add what they need (an event log, persistence). The hot path is written for speed: slotted
records, no per-level objects beyond what the book needs, and events built without the frozen-dataclass
``__init__`` (see ``_event``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import fields
from typing import Any, Callable, Hashable, Iterable

from sortedcontainers import SortedDict

from .engine import (
    DONE_CANCELED, DONE_EXPIRED, DONE_FILLED, DONE_POST_ONLY, DONE_SELF_TRADE, Depth, EngineOrder, Event,
)
from .errors import EngineError, UnknownMarket

_EVENT_FIELDS = ("seq", "market", "kind", "order_id", "qty_lots", "price_ticks", "maker_order_id",
                 "taker_side", "reason")
# The builders below fill the instance dict directly; a change to Event's fields must fail here.
assert tuple(f.name for f in fields(Event)) == _EVENT_FIELDS, "tachyond.engine.Event changed: update matching.py"

_new = object.__new__
_SIDES = ("buy", "sell")
_TIFS = ("gtc", "ioc", "fok")

# Events are built without the frozen dataclass __init__ (nine object.__setattr__ calls, the largest cost
# of a submit): a fresh instance's __dict__ is filled in field order, which keeps Python's shared-key layout.


def _fill_event(seq: int, market: str, order_id: str, qty_lots: int, price_ticks: int, maker_order_id: str,
                taker_side: str) -> Event:
    ev = _new(Event)
    d = ev.__dict__
    d["seq"] = seq
    d["market"] = market
    d["kind"] = "fill"
    d["order_id"] = order_id
    d["qty_lots"] = qty_lots
    d["price_ticks"] = price_ticks
    d["maker_order_id"] = maker_order_id
    d["taker_side"] = taker_side
    d["reason"] = None
    return ev


def _final_event(seq: int, market: str, kind: str, order_id: str, qty_lots: int, reason: str | None) -> Event:
    """A ``rested`` (reason None) or ``done`` event."""
    ev = _new(Event)
    d = ev.__dict__
    d["seq"] = seq
    d["market"] = market
    d["kind"] = kind
    d["order_id"] = order_id
    d["qty_lots"] = qty_lots
    d["price_ticks"] = 0
    d["maker_order_id"] = None
    d["taker_side"] = None
    d["reason"] = reason
    return ev


class RestingOrder:
    """An order on the book; ``qty_lots`` is what remains."""

    __slots__ = ("order_id", "owner", "side", "price_ticks", "qty_lots", "post_only")

    def __init__(self, order_id: str, owner: str, side: str, price_ticks: int, qty_lots: int, post_only: bool):
        self.order_id = order_id
        self.owner = owner
        self.side = side
        self.price_ticks = price_ticks
        self.qty_lots = qty_lots
        self.post_only = post_only


class _Level:
    """The FIFO queue of one price and its total remaining lots."""

    __slots__ = ("orders", "qty_lots")

    def __init__(self) -> None:
        self.orders: deque[RestingOrder] = deque()
        self.qty_lots = 0


class OrderBook:
    """One market's book: price levels in SortedDicts, a FIFO per level, an id index in time order.

    The best bid and ask are cached (``None`` when a side is empty) so the common non-crossing submit
    never searches the sorted keys.
    """

    __slots__ = ("market", "_bids", "_asks", "_orders", "_best_bid", "_best_ask")

    def __init__(self, market: str):
        self.market = market
        self._bids: SortedDict = SortedDict()   # price_ticks -> _Level; best = highest = last key
        self._asks: SortedDict = SortedDict()   # best = lowest = first key
        self._orders: dict[str, RestingOrder] = {}  # insertion order is time priority
        self._best_bid: int | None = None
        self._best_ask: int | None = None

    def __len__(self) -> int:
        return len(self._orders)

    def __contains__(self, order_id: str) -> bool:
        return order_id in self._orders

    def best_bid(self) -> int | None:
        return self._best_bid

    def best_ask(self) -> int | None:
        return self._best_ask

    def submit(self, order: EngineOrder, next_seq: int) -> list[Event]:
        """Match ``order`` against the book; events are numbered from ``next_seq``. The order id must be new."""
        order_id = order.order_id
        side = order.side
        price = order.price_ticks
        qty = order.qty_lots
        tif = order.tif
        if type(price) is not int or type(qty) is not int or price <= 0 or qty <= 0:
            raise EngineError(f"order {order_id}: price_ticks and qty_lots must be positive integers")
        if side not in _SIDES or tif not in _TIFS:
            raise EngineError(f"order {order_id}: side must be buy|sell and tif gtc|ioc|fok")
        if order_id in self._orders:
            raise EngineError(f"order id {order_id} is already on the {self.market} book")
        if side == "buy":
            best = self._best_ask
            crosses = best is not None and best <= price
        else:
            best = self._best_bid
            crosses = best is not None and best >= price
        if not crosses:
            if tif == "gtc":
                self._rest(RestingOrder(order_id, order.owner, side, price, qty, order.post_only))
                return [_final_event(next_seq, self.market, "rested", order_id, qty, None)]
            return [_final_event(next_seq, self.market, "done", order_id, qty, DONE_EXPIRED)]
        if order.post_only:
            return [_final_event(next_seq, self.market, "done", order_id, qty, DONE_POST_ONLY)]
        if tif == "fok" and self._fillable_lots(side, price, order.owner, qty) < qty:
            return [_final_event(next_seq, self.market, "done", order_id, qty, DONE_EXPIRED)]
        return self._take(order, next_seq, best)

    def _take(self, order: EngineOrder, seq: int, best: int) -> list[Event]:
        """Fill a crossing order level by level from ``best``, then rest or end its remainder."""
        order_id = order.order_id
        owner = order.owner
        side = order.side
        price = order.price_ticks
        is_buy = side == "buy"
        opp = self._asks if is_buy else self._bids
        orders_index = self._orders
        market = self.market
        events: list[Event] = []
        append = events.append
        remaining = order.qty_lots
        self_trade = False
        while True:
            level = opp[best]
            queue = level.orders
            while queue:
                maker = queue[0]
                if maker.owner == owner:
                    self_trade = True
                    break
                maker_qty = maker.qty_lots
                fill = remaining if remaining < maker_qty else maker_qty
                append(_fill_event(seq, market, order_id, fill, best, maker.order_id, side))
                seq += 1
                remaining -= fill
                level.qty_lots -= fill
                if fill == maker_qty:
                    queue.popleft()
                    del orders_index[maker.order_id]
                    maker.qty_lots = 0
                    append(_final_event(seq, market, "done", maker.order_id, 0, DONE_FILLED))
                    seq += 1
                else:
                    maker.qty_lots = maker_qty - fill
                if not remaining:
                    break
            if not queue:
                del opp[best]
                if is_buy:
                    best = self._best_ask = opp.peekitem(0)[0] if opp else None
                else:
                    best = self._best_bid = opp.peekitem(-1)[0] if opp else None
            if self_trade or not remaining or best is None or (best > price if is_buy else best < price):
                break
        if not remaining:
            append(_final_event(seq, market, "done", order_id, 0, DONE_FILLED))
        elif self_trade:
            append(_final_event(seq, market, "done", order_id, remaining, DONE_SELF_TRADE))
        elif order.tif == "gtc":
            self._rest(RestingOrder(order_id, owner, side, price, remaining, order.post_only))
            append(_final_event(seq, market, "rested", order_id, remaining, None))
        else:
            append(_final_event(seq, market, "done", order_id, remaining, DONE_EXPIRED))
        return events

    def _fillable_lots(self, side: str, price: int, owner: str, want_lots: int) -> int:
        """Lots a taker could fill now, in priority order, stopping at its own order (self-trade) or ``want_lots``."""
        if side == "buy":
            opp = self._asks
            prices = opp.irange(maximum=price)
        else:
            opp = self._bids
            prices = opp.irange(minimum=price, reverse=True)
        total = 0
        for level_price in prices:
            for maker in opp[level_price].orders:
                if maker.owner == owner:
                    return total
                total += maker.qty_lots
                if total >= want_lots:
                    return total
        return total

    def _rest(self, resting: RestingOrder) -> None:
        price = resting.price_ticks
        if resting.side == "buy":
            level = self._bids.get(price)
            if level is None:
                level = self._bids[price] = _Level()
                if self._best_bid is None or price > self._best_bid:
                    self._best_bid = price
        else:
            level = self._asks.get(price)
            if level is None:
                level = self._asks[price] = _Level()
                if self._best_ask is None or price < self._best_ask:
                    self._best_ask = price
        level.orders.append(resting)
        level.qty_lots += resting.qty_lots
        self._orders[resting.order_id] = resting

    def cancel(self, order_id: str, next_seq: int) -> list[Event]:
        """Take a resting order off the book: ``[done(canceled, remaining)]``, or ``[]`` if it is not resting."""
        resting = self._orders.pop(order_id, None)
        if resting is None:
            return []
        self._unlink(resting)
        return [_final_event(next_seq, self.market, "done", order_id, resting.qty_lots, DONE_CANCELED)]

    def _unlink(self, resting: RestingOrder) -> None:
        """Remove a resting order (already out of the id index) from its level, and an emptied level."""
        price = resting.price_ticks
        book = self._bids if resting.side == "buy" else self._asks
        level = book[price]
        level.orders.remove(resting)
        level.qty_lots -= resting.qty_lots
        if not level.orders:
            del book[price]
            if resting.side == "buy":
                if price == self._best_bid:
                    self._best_bid = book.peekitem(-1)[0] if book else None
            elif price == self._best_ask:
                self._best_ask = book.peekitem(0)[0] if book else None

    # Rebuilding a book from stored state (snapshot, then the log) without emitting events.

    def restore(self, order_id: str, owner: str, side: str, price_ticks: int, qty_lots: int,
                post_only: bool = False) -> None:
        """Put an order at the back of its level, as a ``rested`` event or a snapshot row says."""
        if order_id in self._orders:
            raise EngineError(f"stored book for {self.market} lists order {order_id} twice")
        self._rest(RestingOrder(order_id, owner, side, price_ticks, qty_lots, post_only))

    def apply_fill(self, maker_order_id: str, qty_lots: int) -> None:
        """Reduce a resting maker by a logged fill; an exhausted maker leaves the book."""
        maker = self._orders.get(maker_order_id)
        if maker is None or maker.qty_lots < qty_lots:
            raise EngineError(f"stored log for {self.market} fills order {maker_order_id} beyond the book")
        book = self._bids if maker.side == "buy" else self._asks
        book[maker.price_ticks].qty_lots -= qty_lots
        maker.qty_lots -= qty_lots
        if not maker.qty_lots:
            del self._orders[maker_order_id]
            self._unlink(maker)

    def apply_done(self, order_id: str) -> None:
        """Drop an order a logged ``done`` names, if it rests (a taker's ``done`` never rested)."""
        resting = self._orders.pop(order_id, None)
        if resting is not None:
            self._unlink(resting)

    def resting_orders(self) -> list[RestingOrder]:
        """Resting orders in time priority (the order they joined the book)."""
        return list(self._orders.values())

    def open_orders(self) -> list[EngineOrder]:
        return [EngineOrder(r.order_id, self.market, r.owner, r.side, r.price_ticks, r.qty_lots, "gtc", r.post_only)
                for r in self._orders.values()]

    def depth(self, levels: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Aggregated (price_ticks, qty_lots) per level, best first, at most ``levels`` per side."""
        n = max(0, levels)
        bids = [(p, self._bids[p].qty_lots)
                for p in self._bids.islice(max(0, len(self._bids) - n), reverse=True)] if n else []
        asks = [(p, self._asks[p].qty_lots) for p in self._asks.islice(0, n)] if n else []
        return bids, asks


class Matcher:
    """The books of several markets, one sequence counter from 1, and every order id ever submitted.

    ``id_key`` maps an order id to what the used-id set stores (the SQLite engine stores a keyed MAC, so
    that its persisted set says nothing readable); by default the id itself.
    """

    def __init__(self, *, last_seq: int = 0, known_ids: Iterable[Hashable] = (),
                 id_key: Callable[[str], Hashable] | None = None):
        self.books: dict[str, OrderBook] = {}
        self.last_seq = last_seq
        self.known_ids: set[Hashable] = set(known_ids)
        self._id_key = id_key
        self._served: dict[str, OrderBook] = {}

    def add_market(self, symbol: str) -> OrderBook:
        """Serve ``symbol``; its book is kept if it was already loaded."""
        book = self._served[symbol] = self.stored_book(symbol)
        return book

    def book(self, market: str) -> OrderBook:
        """The book of a market this engine serves, else UnknownMarket."""
        book = self._served.get(market)
        if book is None:
            raise UnknownMarket(f"market {market} is not served by this engine")
        return book

    def stored_book(self, market: str) -> OrderBook:
        """The book of a market seen in stored state, created if new (it need not be served now)."""
        book = self.books.get(market)
        if book is None:
            book = self.books[market] = OrderBook(market)
        return book

    def id_key(self, order_id: str) -> Hashable:
        return order_id if self._id_key is None else self._id_key(order_id)

    def submit(self, order: EngineOrder) -> list[Event]:
        """Match an order with a new id; raises EngineError for a reused id or a malformed order."""
        book = self._served.get(order.market)
        if book is None:
            raise UnknownMarket(f"market {order.market} is not served by this engine")
        key = order.order_id if self._id_key is None else self._id_key(order.order_id)
        if key in self.known_ids:
            raise EngineError(f"order id {order.order_id} was already submitted to this engine")
        events = book.submit(order, self.last_seq + 1)
        self.known_ids.add(key)
        self.last_seq += len(events)
        return events

    def cancel(self, market: str, order_id: str) -> list[Event]:
        book = self._served.get(market)
        if book is None:
            raise UnknownMarket(f"market {market} is not served by this engine")
        events = book.cancel(order_id, self.last_seq + 1)
        if events:
            self.last_seq += 1
        return events

    def depth(self, market: str, levels: int) -> Depth:
        bids, asks = self.book(market).depth(levels)
        return Depth(self.last_seq, bids, asks)

    def open_orders(self, market: str) -> list[EngineOrder]:
        return self.book(market).open_orders()

    def dump(self) -> dict[str, list[list[Any]]]:
        """Every stored book as plain rows ``[order_id, owner, side, price_ticks, qty_lots, post_only]``."""
        return {symbol: [[r.order_id, r.owner, r.side, r.price_ticks, r.qty_lots, r.post_only]
                         for r in book.resting_orders()]
                for symbol, book in self.books.items() if len(book)}

    def load(self, books: dict[str, list[list[Any]]]) -> None:
        """Restore books from ``dump()`` rows (into empty books)."""
        for symbol, rows in books.items():
            book = self.stored_book(symbol)
            for order_id, owner, side, price_ticks, qty_lots, post_only in rows:
                book.restore(order_id, owner, side, price_ticks, qty_lots, bool(post_only))
