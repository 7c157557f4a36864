"""A storage-free limit order book with price-time priority, shared by every engine that matches in-process.

Everything is integer ticks and lots. ``OrderBook`` matches one market; ``Matcher`` holds the books of
several markets, the engine-wide sequence counter and the set of order ids already used. Engines wrap a
``Matcher`` and add what they need (an event log, persistence). The hot path is written for speed: plain
lists for resting orders, no per-level objects beyond what the book needs, and events (named tuples) built
with ``tuple.__new__``.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any, NamedTuple

from .engine import DONE_CANCELED, DONE_EXPIRED, DONE_FILLED, DONE_POST_ONLY, DONE_SELF_TRADE, Depth, EngineOrder, Event
from .errors import EngineError, UnknownMarket

_EVENT_FIELDS = ("seq", "market", "kind", "order_id", "qty_lots", "price_ticks", "maker_order_id",
                 "taker_side", "reason")
# The hot path builds events with tuple.__new__ in field order; a change to Event's fields must fail here.
assert Event._fields == _EVENT_FIELDS, "tachyond.engine.Event changed: update matching.py"

_tuple_new = tuple.__new__
_SIDES = ("buy", "sell")
_TIFS = ("gtc", "ioc", "fok")

# A resting order is a plain list (building one costs a quarter of a slotted object's __init__):
_ID, _OWNER, _SIDE, _PRICE, _QTY, _POST = range(6)


class RestingOrder(NamedTuple):
    """A resting order as :meth:`OrderBook.resting_orders` reports it; ``qty_lots`` is what remains."""

    order_id: str
    owner: str
    side: str
    price_ticks: int
    qty_lots: int
    post_only: bool


class _Level:
    """The FIFO queue of one price, its total remaining lots and how many of its entries are live.

    A cancel that is not at the head of the queue leaves a dead entry (remaining lots 0) in place instead
    of searching the deque; matching drops dead entries when they reach the head, and a queue with more
    dead entries than ``2 * live + 16`` is rebuilt without them, so the dead never outweigh the living.
    """

    __slots__ = ("orders", "qty_lots", "live")

    def __init__(self) -> None:
        self.orders: deque[list] = deque()
        self.qty_lots = 0
        self.live = 0


class OrderBook:
    """One market's book: a dict of price levels per side, a FIFO per level, an id index in time order.

    Each side keeps its prices in a plain sorted list (``bisect``, C speed) with the best price last: bid
    prices ascending, ask prices negated and ascending. Taking the best level is a ``pop()``; adding or
    dropping another level is a binary search and a short memmove. The best bid and ask are also cached
    (``None`` when a side is empty) so the common non-crossing submit never looks at the lists.
    """

    __slots__ = ("market", "_bids", "_asks", "_bid_keys", "_ask_keys", "_orders", "_best_bid", "_best_ask")

    def __init__(self, market: str):
        self.market = market
        self._bids: dict[int, _Level] = {}     # price_ticks -> level
        self._asks: dict[int, _Level] = {}
        self._bid_keys: list[int] = []         # bid prices ascending: best (highest) last
        self._ask_keys: list[int] = []         # negated ask prices ascending: best (lowest) last
        self._orders: dict[str, list] = {}     # insertion order is time priority
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
        orders = self._orders
        if order_id in orders:
            raise EngineError(f"order id {order_id} is already on the {self.market} book")
        if side == "buy":
            best = self._best_ask
            crosses = best is not None and best <= price
            levels = self._bids
        else:
            best = self._best_bid
            crosses = best is not None and best >= price
            levels = self._asks
        if not crosses:
            if tif != "gtc":
                return [_tuple_new(Event, (next_seq, self.market, "done", order_id, qty, 0, None, None, DONE_EXPIRED))]
            # Rest it (inlined: the commonest submit); a new price level is the rare case.
            level = levels.get(price)
            if level is None:
                level = self._new_level(side, price)
            resting = [order_id, order.owner, side, price, qty, order.post_only]
            level.orders.append(resting)
            level.qty_lots += qty
            level.live += 1
            orders[order_id] = resting
            return [_tuple_new(Event, (next_seq, self.market, "rested", order_id, qty, 0, None, None, None))]
        if order.post_only:
            return [_tuple_new(Event, (next_seq, self.market, "done", order_id, qty, 0, None, None, DONE_POST_ONLY))]
        if tif == "fok" and self._fillable_lots(side, price, order.owner, qty) < qty:
            return [_tuple_new(Event, (next_seq, self.market, "done", order_id, qty, 0, None, None, DONE_EXPIRED))]
        return self._take(order, next_seq, best)  # type: ignore[arg-type]  # best is not None: an empty book returned above

    def _take(self, order: EngineOrder, seq: int, best: int) -> list[Event]:
        """Fill a crossing order level by level from ``best``, then rest or end its remainder."""
        order_id = order.order_id
        owner = order.owner
        side = order.side
        price = order.price_ticks
        is_buy = side == "buy"
        opp = self._asks if is_buy else self._bids
        keys = self._ask_keys if is_buy else self._bid_keys
        orders_index = self._orders
        market = self.market
        events: list[Event] = []
        append = events.append
        remaining = order.qty_lots
        self_trade = False
        while True:
            level = opp[best]
            queue = level.orders
            while level.live:
                maker = queue[0]
                maker_qty = maker[_QTY]
                if not maker_qty:   # canceled while behind others: drop it now it is at the head
                    queue.popleft()
                    continue
                if maker[_OWNER] == owner:
                    self_trade = True
                    break
                maker_id = maker[_ID]
                fill = remaining if remaining < maker_qty else maker_qty
                append(_tuple_new(Event, (seq, market, "fill", order_id, fill, best, maker_id, side, None)))
                seq += 1
                remaining -= fill
                level.qty_lots -= fill
                if fill == maker_qty:
                    queue.popleft()
                    level.live -= 1
                    del orders_index[maker_id]
                    maker[_QTY] = 0
                    append(_tuple_new(Event, (seq, market, "done", maker_id, 0, 0, None, None, DONE_FILLED)))
                    seq += 1
                else:
                    maker[_QTY] = maker_qty - fill
                if not remaining:
                    break
            if not level.live:
                del opp[best]
                keys.pop()   # the level just emptied was the best, and the best is last
                if is_buy:
                    best = self._best_ask = -keys[-1] if keys else None  # type: ignore[assignment]  # None ends the loop (checked just below)
                else:
                    best = self._best_bid = keys[-1] if keys else None  # type: ignore[assignment]  # None ends the loop (checked just below)
            if self_trade or not remaining or best is None or (best > price if is_buy else best < price):
                break
        if not remaining:
            append(_tuple_new(Event, (seq, market, "done", order_id, 0, 0, None, None, DONE_FILLED)))
        elif self_trade:
            append(_tuple_new(Event, (seq, market, "done", order_id, remaining, 0, None, None, DONE_SELF_TRADE)))
        elif order.tif == "gtc":
            self._rest([order_id, owner, side, price, remaining, order.post_only])
            append(_tuple_new(Event, (seq, market, "rested", order_id, remaining, 0, None, None, None)))
        else:
            append(_tuple_new(Event, (seq, market, "done", order_id, remaining, 0, None, None, DONE_EXPIRED)))
        return events

    def _fillable_lots(self, side: str, price: int, owner: str, want_lots: int) -> int:
        """Lots a taker could fill now, in priority order, stopping at its own order (self-trade) or ``want_lots``."""
        if side == "buy":
            opp = self._asks
            keys = self._ask_keys
            limit = -price
        else:
            opp = self._bids
            keys = self._bid_keys
            limit = price
        total = 0
        for i in range(len(keys) - 1, -1, -1):   # best first; stop past the taker's limit
            key = keys[i]
            if key < limit:
                break
            for maker in opp[key if side == "sell" else -key].orders:
                if not maker[_QTY]:
                    continue
                if maker[_OWNER] == owner:
                    return total
                total += maker[_QTY]
                if total >= want_lots:
                    return total
        return total

    def _new_level(self, side: str, price: int) -> _Level:
        """Open an empty level at ``price`` on ``side``'s book, its key list and (if better) the best price."""
        level = _Level()
        if side == "buy":
            self._bids[price] = level
            insort(self._bid_keys, price)
            if self._best_bid is None or price > self._best_bid:
                self._best_bid = price
        else:
            self._asks[price] = level
            insort(self._ask_keys, -price)
            if self._best_ask is None or price < self._best_ask:
                self._best_ask = price
        return level

    def _rest(self, resting: list) -> None:
        price = resting[_PRICE]
        side = resting[_SIDE]
        level = (self._bids if side == "buy" else self._asks).get(price)
        if level is None:
            level = self._new_level(side, price)
        level.orders.append(resting)
        level.qty_lots += resting[_QTY]
        level.live += 1
        self._orders[resting[_ID]] = resting

    def cancel(self, order_id: str, next_seq: int) -> list[Event]:
        """Take a resting order off the book: ``[done(canceled, remaining)]``, or ``[]`` if it is not resting."""
        resting = self._orders.pop(order_id, None)
        if resting is None:
            return []
        qty = resting[_QTY]
        self._unlink(resting)
        return [_tuple_new(Event, (next_seq, self.market, "done", order_id, qty, 0, None, None, DONE_CANCELED))]

    def _unlink(self, resting: list) -> None:
        """Remove a resting order (already out of the id index) from its level, and an emptied level."""
        price = resting[_PRICE]
        book = self._bids if resting[_SIDE] == "buy" else self._asks
        level = book[price]
        queue = level.orders
        level.qty_lots -= resting[_QTY]
        resting[_QTY] = 0
        level.live -= 1
        if queue[0] is resting:
            queue.popleft()
        elif len(queue) > 2 * level.live + 16:
            level.orders = deque([o for o in queue if o[_QTY]])
        if not level.live:
            self._drop_level(book, price)

    def _drop_level(self, book: dict[int, _Level], price: int) -> None:
        """Forget an emptied level of ``book`` (bids or asks) and, if it was the best, find the next best."""
        del book[price]
        if book is self._bids:
            keys = self._bid_keys
            if price == self._best_bid:
                keys.pop()
                self._best_bid = keys[-1] if keys else None
            else:
                del keys[bisect_left(keys, price)]
        else:
            keys = self._ask_keys
            if price == self._best_ask:
                keys.pop()
                self._best_ask = -keys[-1] if keys else None
            else:
                del keys[bisect_left(keys, -price)]

    # Rebuilding a book from stored state (snapshot, then the log) without emitting events.

    def restore(self, order_id: str, owner: str, side: str, price_ticks: int, qty_lots: int,
                post_only: bool = False) -> None:
        """Put an order at the back of its level, as a ``rested`` event or a snapshot row says."""
        if order_id in self._orders:
            raise EngineError(f"stored book for {self.market} lists order {order_id} twice")
        if type(qty_lots) is not int or qty_lots <= 0 or type(price_ticks) is not int or price_ticks <= 0:
            raise EngineError(f"stored book for {self.market} lists order {order_id} with {qty_lots} lots "
                              f"at {price_ticks} ticks")
        self._rest([order_id, owner, side, price_ticks, qty_lots, post_only])

    def apply_fill(self, maker_order_id: str, qty_lots: int) -> None:
        """Reduce a resting maker by a logged fill; an exhausted maker leaves the book."""
        maker = self._orders.get(maker_order_id)
        if maker is None or maker[_QTY] < qty_lots or type(qty_lots) is not int or qty_lots <= 0:
            raise EngineError(f"stored log for {self.market} fills order {maker_order_id} beyond the book")
        book = self._bids if maker[_SIDE] == "buy" else self._asks
        book[maker[_PRICE]].qty_lots -= qty_lots
        maker[_QTY] -= qty_lots
        if not maker[_QTY]:
            del self._orders[maker_order_id]
            self._unlink(maker)

    def apply_done(self, order_id: str) -> None:
        """Drop an order a logged ``done`` names, if it rests (a taker's ``done`` never rested)."""
        resting = self._orders.pop(order_id, None)
        if resting is not None:
            self._unlink(resting)

    def resting_orders(self) -> list[RestingOrder]:
        """Resting orders in time priority (the order they joined the book)."""
        return [RestingOrder(*r) for r in self._orders.values()]

    def open_orders(self) -> list[EngineOrder]:
        return [EngineOrder(r[_ID], self.market, r[_OWNER], r[_SIDE], r[_PRICE], r[_QTY], "gtc", r[_POST])
                for r in self._orders.values()]

    def depth(self, levels: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Aggregated (price_ticks, qty_lots) per level, best first, at most ``levels`` per side."""
        n = max(0, levels)
        bids = [(p, self._bids[p].qty_lots) for p in reversed(self._bid_keys[-n:])] if n else []
        asks = [(-k, self._asks[-k].qty_lots) for k in reversed(self._ask_keys[-n:])] if n else []
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
        return {symbol: [list(r) for r in book._orders.values()]
                for symbol, book in self.books.items() if len(book)}

    def load(self, books: dict[str, list[list[Any]]]) -> None:
        """Restore books from ``dump()`` rows (into empty books)."""
        for symbol, rows in books.items():
            book = self.stored_book(symbol)
            for order_id, owner, side, price_ticks, qty_lots, post_only in rows:
                book.restore(order_id, owner, side, price_ticks, qty_lots, bool(post_only))
