"""The DEX's shared state: the markets, the open-order index, the per-market and per-engine locks, the applied
sequence numbers, halts, failures and outages, with the small helpers every part of the service uses.

``DexService`` (service.py) is built in layers, each a module of its own: this state, then settlement
(settlement.py), engines and their recovery and feeds (recovery.py), the order pipeline (orders.py), and
the service's lifecycle, cancels and queries (service.py). Each layer uses only itself and the layers below.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import trio
from prometheus_client import Counter, Gauge

from ..engine import EngineOrder
from ..errors import EngineError, TachyonError, UnknownMarket, WalletLocked
from .batch import Request as _Request
from .market import Market
from .store import DEX_SCHEMA
from .watch import Watcher

log = logging.getLogger("tachyond.dex")


# test-only: "after_match" exits right after a submit, before settlement; "after_record" right after the orders
# are recorded and locked, before any is submitted. For an engine matching in the wallet's transaction (one
# commit records, matches and settles) both exit right after that commit, before the answers go out; there,
# "fail_in_tx:<client_order_id>" makes the operation of a batch holding that order fail after matching.
FAULT_ENV = "TACHYON_TEST_FAULT"
DEFAULT_DEPTH = 20
MAX_TRADES_LIMIT = 1000
EVENTS_PAGE = 1000
FEED_WAIT_S = 10          # a shared engine's long-poll: how long one feed request waits for an event
RETRY_MIN_S = 0.1         # reconnect backoff of a shared engine: from this, doubling, up to RETRY_MAX_S
RETRY_MAX_S = 5.0
ACK_EVERY = 256           # a shared engine hears what this wallet applied every this many seqs, and when idle
_NOTHING: dict = {"orders": {}, "trades": []}


class DexState:
    """The state every layer of the DEX service shares (see the module docstring)."""

    def __init__(self, wallet: Any, metrics: Any, config: Callable[[], Any], plugins: Any,
                 engine_factories: Mapping[str, tuple[str, Callable[..., Any]]]):
        """What the DEX uses, given explicitly: the wallet it writes through, the metrics, the configuration
        in force (a getter: a reload replaces the daemon's Config), the plugin manager (``order_filled``) and
        the engine factories the plugins registered."""
        self.wallet = wallet
        self.metrics = metrics
        self._config = config
        self.plugins = plugins
        self.engine_factories = engine_factories
        cfg = config()
        tokens = cfg.token_map()
        self.markets: dict[str, Market] = {c.symbol: Market.from_config(c, tokens) for c in cfg.markets}
        self.engine_names = sorted({m.engine for m in self.markets.values()})
        self.engines: dict[str, Any] = {}
        self.failures: dict[str, str] = {}        # engine -> why it cannot serve
        self._base_seq: dict[str, int] = {}       # engine -> offset making its seqs unique across restarts
        self._market_locks = {s: trio.Lock() for s in self.markets}
        self._engine_locks = {e: trio.Lock() for e in self.engine_names}
        self._open: dict[str, dict] = {}          # open orders by id (the ledger's view)
        self._open_coids: dict[tuple[str, str], str] = {}
        self._owners: dict[str, str] = {}
        self._opened = False
        self._opening = trio.Lock()
        self._engines_locked: set[str] = set()  # engines that dropped their keys (on_lock) until on_unlock
        self._queues: dict[str, list[_Request]] = {s: [] for s in self.markets}
        self._leading = {s: False for s in self.markets}
        self._nursery: trio.Nursery | None = None
        self._wake = {s: trio.Event() for s in self.markets}
        self._settle_tail: dict[str, trio.Event] = {}
        for name in self.engine_names:
            self._settle_tail[name] = trio.Event()
            self._settle_tail[name].set()
        self.watchers: dict[str, Watcher] = {}
        self._applied: dict[str, int] = {}        # engine -> last engine seq applied (in its current epoch)
        self._epochs: dict[str, str] = {}         # shared engine -> feed epoch the applied seq belongs to
        self.halts: dict[str, str] = {}           # engine -> why its settlement stopped (an invalid event ...)
        self.halted_markets: dict[str, str] = {}  # market -> the same reason, for dex.markets and /healthz
        self.offline: dict[str, str] = {}         # shared engine -> why it is unreachable now (reconnecting)
        self._unsent: dict[str, set[str]] = {}    # shared engine -> order ids whose submit got no answer
        self._followers: set[str] = set()
        self._acked: dict[str, int] = {}          # engine -> the applied seq it was last told (compact)
        self._shared: set[str] = set()            # engines with a feed to follow (or offline before opening)
        self._in_tx: set[str] = set()             # engines matching inside the wallet's write transaction
        self._reseed_due: set[str] = set()        # in-tx engines whose last transaction did not commit
        r = metrics.registry
        self.metric_halted = Gauge("tachyon_dex_market_halted", "1 while a market's settlement is halted",
                                   ["market"], registry=r)
        self.metric_invalid = Counter("tachyon_dex_invalid_engine_events",
                                      "Engine events refused by the checks against this wallet's orders",
                                      ["engine"], registry=r)
        self.metric_offline = Gauge("tachyon_dex_engine_offline", "1 while a shared engine is unreachable",
                                    ["engine"], registry=r)
        # How many commits an order costs is the DEX's business (one for an in-tx engine, two otherwise): the
        # wallet's count of committed write transactions (group commits, one fsync each) since start.
        self.metric_commits = Gauge("tachyon_dex_wallet_commits", "Wallet write transactions committed since "
                                    "start (each a group commit with one fsync)", registry=r)
        self.metric_commits.set_function(lambda: self.wallet.stats["transactions"])
        wallet.add_schema("dex", DEX_SCHEMA)
        wallet.add_rekey("dex_orders", sealed=("value",), lookups=("oid_hash", "coid_hash"))
        wallet.add_rekey("dex_trades", sealed=("value",))
        for name in self.engine_names:  # tables an in-tx engine keeps in the wallet file (TransactionalEngine)
            factory = engine_factories.get(name, (None, None))[1]
            tx_tables = getattr(factory, "tx_tables", None)
            if tx_tables is not None:
                schema, sealed = tx_tables(dict(cfg.engines.get(name, {})))
                if schema:
                    wallet.add_schema(f"engine:{name}", list(schema))
                for table, columns in sealed.items():
                    wallet.add_rekey(table, sealed=tuple(columns))
        wallet.add_rotate_listener(self.on_rotated)

    def _set_offline(self, name: str, exc: BaseException) -> None:
        why = exc.message if isinstance(exc, TachyonError) else f"{type(exc).__name__}"
        if name not in self.offline:
            log.warning("engine %s is unreachable: %s; new orders and cancels are refused until it is back", name, why)
        self.offline[name] = why
        self.metric_offline.labels(name).set(1)

    def _halt(self, name: str, why: str) -> None:
        """Stop settling everything of this engine (its events apply in one sequence); say why everywhere."""
        if name in self.halts:
            return
        self.halts[name] = why
        for m in self.markets.values():
            if m.engine == name:
                self.halted_markets[m.symbol] = why
                self.metric_halted.labels(m.symbol).set(1)
        log.error("settlement of engine %s halted (markets: %s): %s. Nothing of the refused event moved. Fix the "
                  "engine (or its server) and restart the daemon: it replays the feed from the last applied seq",
                  name, ", ".join(sorted(m.symbol for m in self.markets.values() if m.engine == name)), why)

    def _no_progress(self, name: str, after: int) -> None:
        self.metric_invalid.labels(name).inc()
        self._halt(name, f"invalid event refused: engine {name} answered events after seq {after} that do not "
                         "go past it")

    def _engine_order(self, order: dict) -> EngineOrder:
        return EngineOrder(order["id"], order["market"], self._owner(order["account"]), order["side"],
                           order["price_ticks"], order["qty_lots"] - order["filled_lots"], order["time_in_force"],
                           order["post_only"])

    def _owner(self, account: str) -> str:
        """An opaque owner id for self-trade prevention (engines never see account names)."""
        owner = self._owners.get(account)
        if owner is None:
            owner = self._owners[account] = self.wallet.keys.lookup("dex-owner", account).hex()[:32]
        return owner

    def _remember(self, order: dict) -> None:
        if order["status"] == "open":
            self._open[order["id"]] = order
            if order["client_order_id"] is not None:
                self._open_coids[(order["account"], order["client_order_id"])] = order["id"]
        else:
            self._open.pop(order["id"], None)
            if order["client_order_id"] is not None:
                self._open_coids.pop((order["account"], order["client_order_id"]), None)

    def market(self, symbol: object) -> Market:
        m = self.markets.get(symbol) if isinstance(symbol, str) else None
        if m is None:
            raise UnknownMarket(f"unknown market {symbol!r}; known: {', '.join(sorted(self.markets))}")
        return m

    def _ready(self, m: Market) -> Any:
        if self.wallet.state != "unlocked" or m.engine in self._engines_locked:
            raise WalletLocked()
        if m.engine in self.failures:
            raise EngineError(f"engine {m.engine} is not serving: {self.failures[m.engine]}")
        if m.symbol in self.halted_markets:
            raise EngineError(f"market {m.symbol} is halted: {self.halted_markets[m.symbol]}")
        if m.engine in self.offline:
            raise EngineError(f"engine {m.engine} is unreachable ({self.offline[m.engine]}); orders and cancels "
                              f"of {m.symbol} are refused until it is back (nothing was recorded or locked)")
        engine = self.engines.get(m.engine)
        if engine is None:
            raise EngineError(f"engine {m.engine} is not open yet")
        return engine

    def _reserve_settlement(self, engine_name: str) -> tuple[trio.Event, trio.Event]:
        """Take the next place in the engine's settlement order (call right after the submit, under its lock)."""
        prev = self._settle_tail[engine_name]
        mine = self._settle_tail[engine_name] = trio.Event()
        return prev, mine

    def refresh_gauges(self) -> None:
        self.metrics.orders_open.set(len(self._open))

    async def on_rotated(self, cipher: Any, previous: Any) -> bool:
        """The data key was rotated: engines with a ``rekey`` hook re-encrypt their files from ``previous`` to
        ``cipher``. False ("not yet") when the engines are not open: on_unlocked opens them and finishes."""
        if not self._opened and self.engine_names:
            return False
        for name, engine in list(self.engines.items()):
            hook = getattr(engine, "rekey", None)
            if hook is None:
                continue
            async with self._engine_locks[name]:
                await hook(cipher, previous)
        return True
