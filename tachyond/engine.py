"""The matching-engine protocol: engines match orders in integer ticks and lots; the core settles.

An engine knows nothing of balances. Every order it accepts, every fill and every order that leaves the
book is an :class:`Event` with a sequence number, strictly increasing per engine instance, from 1. The core
applies each event exactly once and stores the last applied sequence in the same ledger transaction; at
start it asks the engine for ``events_after(last_seq)``. An engine whose ``durable`` is False (the memory
engine) forgets everything on exit: the core instead re-submits the ledger's open orders to it in their
original time order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

from .errors import EngineError

Side = Literal["buy", "sell"]
TimeInForce = Literal["gtc", "ioc", "fok"]

# Reasons carried by a "done" event.
DONE_FILLED = "filled"          # nothing remains
DONE_CANCELED = "canceled"      # cancel() took it off the book
DONE_EXPIRED = "expired"        # IOC remainder, or FOK that could not fill entirely (then nothing filled)
DONE_POST_ONLY = "post_only"    # a post-only order that would have taken: nothing filled, never rested
DONE_SELF_TRADE = "self_trade"  # the taker met a resting order of the same owner: taker's remainder canceled
DONE_REASONS = (DONE_FILLED, DONE_CANCELED, DONE_EXPIRED, DONE_POST_ONLY, DONE_SELF_TRADE)


@dataclass(frozen=True)
class MarketSpec:
    """A market as the engine sees it. ``tick``/``lot`` are decimal strings, for protocol comparison only."""

    symbol: str        # "ZEC/USDC"
    base: str
    quote: str
    tick: str
    lot: str


@dataclass(frozen=True)
class EngineOrder:
    """An order handed to an engine. Market orders arrive as IOC/FOK limits at the protection price."""

    order_id: str
    market: str
    owner: str                 # opaque owner id, used only for self-trade prevention
    side: Side
    price_ticks: int           # > 0
    qty_lots: int              # > 0; when re-seeding or listing open orders: the remaining lots
    tif: TimeInForce = "gtc"
    post_only: bool = False


class Event(NamedTuple):
    """One engine event (an immutable named tuple: cheap to build, which the matching hot path needs). Kinds:

    - ``fill``: ``order_id`` is the taker, ``maker_order_id`` the resting order; at the maker's price.
    - ``rested``: the taker's remainder (``qty_lots``) now rests on the book (GTC only).
    - ``done``: ``order_id`` left (or never joined) the book with ``qty_lots`` unfilled, for ``reason``.

    Each ``submit`` yields its fills in match order, a ``done(filled)`` for every maker it exhausted right
    after that maker's last fill, and ends with exactly one ``rested`` or ``done`` for the taker.
    """

    seq: int
    market: str
    kind: Literal["fill", "rested", "done"]
    order_id: str
    qty_lots: int
    price_ticks: int = 0               # fill: the maker's price
    maker_order_id: str | None = None  # fill only
    taker_side: Side | None = None     # fill only
    reason: str | None = None          # done only: one of DONE_REASONS

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        return cls(**d)


@dataclass(frozen=True)
class Depth:
    """Aggregated book levels, best first: ``[(price_ticks, qty_lots), ...]``; ``seq`` the engine's last seq."""

    seq: int
    bids: list[tuple[int, int]]
    asks: list[tuple[int, int]]


class Cipher(Protocol):
    """Authenticated encryption bound to associated data (AES-GCM under the wallet's data key)."""

    def seal(self, aad: bytes, plaintext: bytes) -> bytes: ...
    def open(self, aad: bytes, blob: bytes) -> bytes: ...


class EngineUnavailable(EngineError):
    """The engine could not be reached (connection refused or lost, timeout, 5xx): worth retrying later.

    A shared engine (one with ``follow``) raising it is marked offline: new orders and cancels are refused
    at once, and the core reconnects with backoff. Any other EngineError from a feed halts settlement.
    """


@dataclass(frozen=True)
class EngineContext:
    """What the core gives an engine factory."""

    name: str                      # the engine name as configured ("memory", "sqlite", ...)
    data_dir: Path                 # engine files live here, beside wallet.db
    cipher: Cipher | None          # encrypts what the engine stores; None for engines that store nothing
    config: dict[str, Any] = field(default_factory=dict)  # the [engines.<name>] table, if any
    client_id: str = ""            # an opaque id of this wallet for this engine (a shared engine's acks)


@runtime_checkable
class OrderBookEngine(Protocol):
    """What ``register_engines`` registers a factory for. All methods are async."""

    name: str
    durable: bool

    async def start(self, markets: Sequence[MarketSpec]) -> None:
        """Open files or connections and load the books for these markets."""

    async def submit(self, order: EngineOrder) -> list[Event]:
        """Match ``order`` with price-time priority; persist the events (if durable) and return them."""

    async def cancel(self, market: str, order_id: str) -> list[Event]:
        """Take a resting order off the book: ``[done(canceled)]``, or ``[]`` if it is not resting."""

    async def depth(self, market: str, levels: int) -> Depth:
        """Aggregated levels, best first."""

    async def open_orders(self, market: str) -> list[EngineOrder]:
        """Resting orders with their remaining lots, in time priority order."""

    async def events_after(self, seq: int, limit: int = 1000) -> list[Event]:
        """Events with a sequence number greater than ``seq``, in order, at most ``limit``."""

    async def last_seq(self) -> int:
        """The highest sequence number issued so far (0 when none)."""

    async def aclose(self) -> None:
        """Flush and close."""


class SharedEngine(OrderBookEngine, Protocol):
    """Optional additions of an engine whose book several wallets share (the ``http`` engine).

    The core recognises one by its ``follow`` method. It then runs a follower task per engine that settles,
    from the feed, every event concerning this wallet's orders (fills of its resting orders taken by other
    wallets too); events of other wallets' orders only advance the applied sequence. ``epoch`` names the
    feed (a random id fixed for the life of the server's log) and ``feed_durable`` says whether the log
    survives a server restart; the core stores the epoch with the applied sequence (see docs/engines.md).
    """

    epoch: str | None
    feed_durable: bool

    async def follow(self, after: int, wait_s: float) -> list[Event]:
        """Events after ``after``, waiting up to ``wait_s`` for one; [] when none came. Raises
        EngineUnavailable when unreachable or when the feed's epoch is no longer ``epoch``."""


class EngineTx(Protocol):
    """What an in-transaction engine method gets: the wallet's write transaction, on the writer thread.

    ``conn`` is the wallet file's connection inside the current write transaction (the engine's own
    SAVEPOINT is the core's: whatever it writes commits or rolls back with the orders and their settlement).
    ``seal_json``/``open_json`` encrypt a value with the wallet's data key, bound to ``table|column|rowid``
    (the same associated data as the wallet's own tables); ``now`` is the transaction's time (epoch seconds).
    """

    conn: Any
    now: float

    def seal_json(self, table: str, column: str, rowid: object, obj: object) -> bytes: ...
    def open_json(self, table: str, column: str, rowid: object, blob: bytes) -> Any: ...


@runtime_checkable
class TransactionalEngine(Protocol):
    """Optional: an engine that matches inside the wallet's write transaction ("one durable commit per order").

    The core recognises one by ``submit_in_tx`` (``in_tx`` may say False to decline, e.g. a mode chosen by its
    config). It then records an order and its hold, calls ``submit_in_tx``, checks and settles every event and
    stores the engine's seq in ONE writer operation: the order is answered after that single commit. The
    ``*_in_tx`` methods are plain (not async): they run ON THE WALLET'S WRITER THREAD, inside its transaction.
    The core holds the engine's lock around every call it makes to the engine (these included), so no other
    method of the engine runs at the same time.

    If the transaction does not commit (the operation raised, or the commit failed: disk full), the engine
    has matched what the ledger did not keep: the core then runs, in a new transaction, ``reset_in_tx`` and a
    ``submit_in_tx`` of every committed open order of the engine's markets in time order (the same re-seed as
    at start), which puts the books back to exactly what the ledger holds. Whatever the engine wrote through
    ``tx`` rolled back with the ledger.

    ``tx_schema`` (optional class attribute): DDL for tables the engine keeps in the wallet file, registered
    by the core before the wallet starts (append-only, like every wallet schema). ``tx_sealed`` (optional
    class attribute): ``{table: (column, ...)}`` of sealed columns in rows keyed by ``id``, declared to the
    data-key rotation, which re-encrypts them in the rotation's own transaction.
    """

    in_tx: bool

    def reset_in_tx(self, tx: EngineTx) -> int:
        """Empty every book and forget the order ids seen (the core submits the ledger's open orders again,
        in time order, right after, in the same transaction); return the last seq issued. Later events
        continue after it; if it is lower than the seq the core applied, the core moves its fill keys past."""

    def submit_in_tx(self, tx: EngineTx, order: EngineOrder) -> list[Event]:
        """``submit`` inside the wallet's transaction: match and return the events (logged through ``tx``)."""

    def cancel_in_tx(self, tx: EngineTx, market: str, order_id: str) -> list[Event]:
        """``cancel`` inside the wallet's transaction: ``[done(canceled)]``, or ``[]`` if not resting."""


def _definer(cls: type, attr: str) -> type | None:
    return next((c for c in cls.__mro__ if attr in vars(c)), None)


def is_transactional(engine: object) -> bool:
    """True when the core should match on this engine inside the wallet's write transaction.

    It needs the three in-tx methods, ``in_tx`` not False, and no ``follow`` (a shared book never joins this
    wallet's transaction). A subclass that overrides ``submit`` or ``cancel`` but not its in-tx twin (say, a
    test's lying engine built on the memory engine) would have its override bypassed: it is not treated as
    transactional, and keeps the two-step path.
    """
    if not all(hasattr(engine, a) for a in ("submit_in_tx", "cancel_in_tx", "reset_in_tx")):
        return False
    if not getattr(engine, "in_tx", True) or hasattr(engine, "follow"):
        return False
    cls = type(engine)
    for plain, in_tx in (("submit", "submit_in_tx"), ("cancel", "cancel_in_tx")):
        a, b = _definer(cls, plain), _definer(cls, in_tx)
        if a is not None and b is not None and a is not b and issubclass(a, b):
            return False
    return True


EngineFactory = Callable[[EngineContext], OrderBookEngine]
