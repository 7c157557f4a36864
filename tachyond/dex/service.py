"""The DEX service: validates orders, locks holds, hands orders to engines and settles their events exactly once.

Engines match (``tachyond.engine``); this core owns balances. Per market a lock serialises
check -> record+lock -> submit -> settle, so post-only checks and market-order bounds see the book the
order meets. Per engine a second lock keeps settlement in the engine's sequence order, which is what makes
"store the last applied seq with the settlement" enough for exactly-once after a crash.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from typing import Any

import trio
from prometheus_client import Counter, Gauge

from ..engine import DONE_CANCELED, EngineContext, EngineOrder, EngineUnavailable, Event, MarketSpec, is_transactional
from ..errors import (
    Conflict,
    EngineError,
    IntegrityError,
    InvalidParams,
    NotFound,
    OrderNotOpen,
    OrderRejected,
    TachyonError,
    UnknownMarket,
    WalletLocked,
)
from ..ledger.journal import check_user_account
from ..rpc.dispatch import detach_call_context
from .batch import Request as _Request
from .batch import take_batch as _take_batch
from .checks import check_events
from .fused import EngineEventRefused, cancel_op, place_orders_op, reseed_op
from .market import Market
from .store import (
    DEX_SCHEMA,
    coid_repeat,
    engine_epochs_read,
    engine_seqs_read,
    known_order_ids_read,
    open_orders_read,
    order_public,
    order_read,
    orders_read,
    record_orders_op,
    set_engine_feed_op,
    set_engine_seq_op,
    settle_op,
    trade_public,
    trades_read,
)
from .watch import WATCH_BUFFER, Watcher

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


class DexService:
    """Markets, orders and settlement; registered RPC methods ``dex.*``."""

    def __init__(self, daemon: Any):
        self.daemon = daemon
        self.wallet = daemon.wallet
        self.metrics = daemon.metrics
        tokens = daemon.config.token_map()
        self.markets: dict[str, Market] = {c.symbol: Market.from_config(c, tokens) for c in daemon.config.markets}
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
        r = daemon.metrics.registry
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
        daemon.wallet.add_schema("dex", DEX_SCHEMA)
        daemon.wallet.add_rekey("dex_orders", sealed=("value",), lookups=("oid_hash", "coid_hash"))
        daemon.wallet.add_rekey("dex_trades", sealed=("value",))
        for name in self.engine_names:  # tables an in-tx engine keeps in the wallet file (TransactionalEngine)
            factory = daemon.engine_factories.get(name, (None, None))[1]
            tx_tables = getattr(factory, "tx_tables", None)
            if tx_tables is not None:
                schema, sealed = tx_tables(dict(daemon.config.engines.get(name, {})))
                if schema:
                    daemon.wallet.add_schema(f"engine:{name}", list(schema))
                for table, columns in sealed.items():
                    daemon.wallet.add_rekey(table, sealed=tuple(columns))
        daemon.wallet.add_rotate_listener(self.on_rotated)

    # ----- lifecycle -----
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

    async def on_unlocked(self) -> None:
        """Open every engine (they need the wallet's cipher), then recover each: replay or re-seed."""
        async with self._opening:
            if self._opened:
                await self._unlock_engines()
                return
            for order in await self.wallet.read(open_orders_read):
                self._remember(order)
            seqs = await self.wallet.read(engine_seqs_read)
            self._epochs = await self.wallet.read(engine_epochs_read)
            for name in self.engine_names:
                self._base_seq[name], self._applied[name] = seqs.get(name, (0, 0))
                try:
                    await self._open_engine(name)
                except EngineUnavailable as exc:   # a shared engine not reachable yet: its follower retries
                    self._set_offline(name, exc)
                    self._start_follower(name)
                except Exception as exc:  # one engine failing leaves the others serving; /healthz names it
                    log.exception("engine %s could not start or recover", name)
                    self.failures[name] = f"could not start or recover: {type(exc).__name__}: {exc}"
            self._opened = True
            if self.wallet.rotation_pending and not self.failures:
                await self.wallet.finish_rotation()

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

    async def _unlock_engines(self) -> None:
        """Give the wallet's cipher back to the engines that dropped it at the last lock (``on_unlock``)."""
        for name in sorted(self._engines_locked):
            engine = self.engines.get(name)
            async with self._engine_locks[name]:
                if self.wallet.state != "unlocked" or name not in self._engines_locked:
                    continue
                try:
                    await engine.on_unlock(self.wallet.cipher)  # type: ignore[union-attr]  # opened engines are in self.engines
                except Exception as exc:
                    log.exception("engine %s could not take the key back at unlock", name)
                    self.failures[name] = f"could not take the key back at unlock: {type(exc).__name__}: {exc}"
                self._engines_locked.discard(name)

    async def aclose(self) -> None:
        """Close every engine (the sqlite engine writes a snapshot)."""
        for name, engine in list(self.engines.items()):
            try:
                await engine.aclose()
            except Exception:
                log.exception("engine %s failed to close", name)
        self.engines.clear()

    def refresh_gauges(self) -> None:
        self.metrics.orders_open.set(len(self._open))

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

    # ----- engines and recovery -----
    async def _open_engine(self, name: str) -> None:
        _plugin, factory = self.daemon.engine_factories[name]
        cfg = self.daemon.config
        specs = [MarketSpec(m.symbol, m.base, m.quote, str(m.tick), str(m.lot))
                 for m in self.markets.values() if m.engine == name]
        client_id = self.wallet.keys.lookup("dex-engine-client", name).hex()[:32]
        # A data-key rotation cut short (crash) leaves engine files under the previous key: open with it, and
        # finish_rotation() (at the end of on_unlocked) re-encrypts them; one already re-encrypted opens with
        # the current key.
        previous = self.wallet.previous_cipher() if self.wallet.rotation_pending else None
        for cipher in ([previous] if previous is not None else []) + [self.wallet.cipher]:
            ctx = EngineContext(name, cfg.daemon.data_dir, cipher, config=dict(cfg.engines.get(name, {})),
                                client_id=client_id)
            engine = factory(ctx)
            try:
                await engine.start(specs)
                break
            except BaseException as exc:
                with trio.CancelScope(shield=True):
                    try:
                        await engine.aclose()
                    except Exception:
                        pass
                if not (isinstance(exc, IntegrityError) and cipher is previous):
                    raise
        async with self._engine_locks[name]:
            self.engines[name] = engine
            if is_transactional(engine):
                self._in_tx.add(name)
                if engine.durable and await engine.last_seq() > 0:
                    await self._recover(name, engine)   # a store of its own from before: replay it first
                self._reseed_due.add(name)
                await self._reseed(name, engine)
            else:
                self._in_tx.discard(name)
                await self._recover(name, engine)
        log.info("engine %s ready (%d open orders)", name, len(self._open))
        if hasattr(engine, "follow"):
            self._start_follower(name)

    async def _recover(self, name: str, engine: Any) -> None:
        """Catch up with the engine (caller holds its lock): replay its feed, or re-seed a book it forgot."""
        base_seq, applied_seq = self._base_seq[name], self._applied[name]
        epoch = getattr(engine, "epoch", None)
        last = await engine.last_seq()
        if epoch is not None:
            stored = self._epochs.get(name)
            mine = any(self.markets[o["market"]].engine == name for o in self._open.values())
            if stored is None and applied_seq == 0 and not mine:
                # First contact with this feed: none of this wallet's orders are in its history.
                applied_seq = last
                log.info("engine %s: following feed %s from its current seq %d", name, epoch, last)
            elif stored is not None and stored != epoch:
                if getattr(engine, "feed_durable", True):
                    self._halt(name, f"the engine server's feed epoch changed from {stored} to {epoch} although "
                                     "it says its log is durable: its log was replaced, so this wallet cannot tell "
                                     "which events it has applied; settlement stopped (docs/engines.md, feed epochs)")
                    return
                # A server that keeps its log in memory restarted: its seqs begin again and it forgot our
                # orders. Keys move past everything applied; open orders are submitted again below.
                log.warning("engine %s: feed epoch changed from %s to %s (the server keeps no log): fills not "
                            "applied before its restart are lost; re-submitting this wallet's open orders",
                            name, stored, epoch)
                base_seq, applied_seq = base_seq + applied_seq, last
            elif last < applied_seq:
                self._halt(name, f"the engine server's feed (epoch {epoch}) ends at seq {last}, before seq "
                                 f"{applied_seq} this wallet already applied; settlement stopped")
                return
            self._base_seq[name], self._applied[name] = base_seq, applied_seq
            await self.wallet.write(set_engine_feed_op, name, base_seq, applied_seq, epoch)
            self._epochs[name] = epoch
            await self._replay(name, engine, applied_seq)
        elif engine.durable and last >= applied_seq:
            await self._replay(name, engine, applied_seq)
        elif engine.durable and last > 0:
            # An older store (a restored copy): its book still rests orders since filled, cut or cancelled,
            # and it cannot be told to forget them. Trading on it would disagree with the ledger: refuse.
            raise EngineError(f"its store is older than the ledger (engine seq {last}, ledger applied "
                              f"{applied_seq}): move the engine's store aside and restart to re-seed it "
                              f"from the ledger")
        else:
            # The engine forgot (memory, or a lost file): its seqs restart at 1, so later ones are offset
            # past everything applied, and the ledger's open orders are re-seeded in their time order.
            self._base_seq[name], self._applied[name] = base_seq + applied_seq, 0
            await self.wallet.write(set_engine_seq_op, name, base_seq + applied_seq, 0)
        resting: set[str] = set()
        for m in self.markets.values():
            if m.engine == name:
                resting.update(o.order_id for o in await engine.open_orders(m.symbol))
        unsent = self._unsent.pop(name, set())
        for order in sorted(self._open.values(), key=lambda o: o["rowid"]):
            if self.markets[order["market"]].engine == name and order["id"] not in resting:
                try:
                    events = await engine.submit(self._engine_order(order))
                except EngineUnavailable:
                    raise
                except EngineError as exc:
                    # A shared engine refuses an id it has seen: its events came (or come) from the feed.
                    log.warning("engine %s: re-submitting order %s was refused (%s)%s", name, order["id"],
                                exc.message, "" if order["id"] in unsent else "; it stays open")
                    continue
                await self._settle_next(name, events)

    async def _replay(self, name: str, engine: Any, applied_seq: int) -> None:
        """Apply what the engine did after the last settled seq (a crash between match and settle, or a
        shared engine's feed while this wallet was away)."""
        while True:
            events = await engine.events_after(applied_seq, EVENTS_PAGE)
            if not events:
                return
            await self._settle_next(name, events)
            if name in self.halts:
                return
            if self._applied[name] <= applied_seq:
                self._no_progress(name, applied_seq)
                return
            applied_seq = self._applied[name]

    async def _reseed(self, name: str, engine: Any) -> None:
        """An in-tx engine's books back to the ledger's committed open orders (caller holds the engine's lock):
        at start, and after a transaction that matched on it did not commit. Until it succeeds, every order
        and cancel of the engine tries it first."""
        if name not in self._reseed_due:
            return
        orders = sorted((o for o in self._open.values() if self.markets[o["market"]].engine == name),
                        key=lambda o: o["rowid"])
        engine_orders = [self._engine_order(o) for o in orders]
        try:
            base, applied, events, result = await self.wallet.write(
                reseed_op, engine, name, self._base_seq[name], self._applied[name], engine_orders, self._open,
                self.markets)
        except EngineEventRefused as exc:
            self._refused(name, exc)
            raise EngineError(f"settlement of engine {name} is halted: {self.halts[name]}") from None
        self._reseed_due.discard(name)
        self._base_seq[name] = base
        self._after_settle(name, events, result, store_seq=False)
        self._applied[name] = applied
        log.info("engine %s: books re-seeded from the ledger's %d open orders (seq %d)", name, len(orders), applied)

    def _refused(self, name: str, exc: EngineEventRefused) -> None:
        """An in-tx engine's event did not fit: its operation rolled back; stop the engine (as for any engine)."""
        self.metric_invalid.labels(name).inc()
        self._halt(name, exc.message)

    def _no_progress(self, name: str, after: int) -> None:
        self.metric_invalid.labels(name).inc()
        self._halt(name, f"invalid event refused: engine {name} answered events after seq {after} that do not "
                         "go past it")

    async def _settle_next(self, name: str, events: list[Event], store_seq: bool = True) -> dict:
        """Settle in the engine's settlement order (after every settlement already reserved)."""
        return await self._settle_in_order(name, events, self._reserve_settlement(name), store_seq)

    # ----- shared engines: the live feed, halts and outages -----
    def _start_follower(self, name: str) -> None:
        self._shared.add(name)
        if self._nursery is not None and name not in self._followers:
            self._followers.add(name)
            self._nursery.start_soon(self._follow, name)

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

    async def _follow(self, name: str) -> None:
        """Follow a shared engine's feed while the daemon runs; reconnect with backoff when it goes away."""
        delay = RETRY_MIN_S
        try:
            while name not in self.halts and name not in self.failures:
                try:
                    if name in self.offline or name not in self.engines:
                        await self._reconnect(name)
                    engine = self.engines[name]
                    after = self._applied[name]
                    events = await engine.follow(after, FEED_WAIT_S)
                    if events and self.wallet.state != "unlocked":
                        raise WalletLocked()   # settled when it is unlocked again (from the applied seq)
                    if events:
                        await self._settle_next(name, events)
                        if self._applied[name] <= after and name not in self.halts:
                            self._no_progress(name, after)
                    else:
                        await self._acknowledge(name, 1)
                    delay = RETRY_MIN_S
                except EngineUnavailable as exc:
                    self._set_offline(name, exc)
                    await trio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                except WalletLocked:
                    await trio.sleep(RETRY_MAX_S)
                except EngineError as exc:
                    if name not in self.halts and name not in self.failures:
                        self._halt(name, f"the feed answer was refused: {exc.message}")
        except Exception as exc:
            log.exception("the feed follower of engine %s failed", name)
            self.failures.setdefault(name, f"feed follower failed ({type(exc).__name__}); restart the daemon")
        finally:
            self._followers.discard(name)

    async def _reconnect(self, name: str) -> None:
        """A fresh connection, then the same recovery as at start (epoch check, feed replay, re-submits)."""
        old = self.engines.pop(name, None)
        if old is not None:
            try:
                await old.aclose()
            except Exception:
                pass
        await self._open_engine(name)
        if self.offline.pop(name, None) is not None:
            self.metric_offline.labels(name).set(0)
            log.info("engine %s is reachable again; feed resumed after seq %d", name, self._applied[name])

    async def _catch_up(self, name: str) -> None:
        """Apply a shared engine's feed up to its current end (before deciding an order is not on its book)."""
        engine = self.engines.get(name)
        if engine is None or not hasattr(engine, "follow"):
            return
        while name not in self.halts:
            after = self._applied[name]
            events = await engine.events_after(after, EVENTS_PAGE)
            if not events:
                return
            await self._settle_next(name, events)
            if self._applied[name] <= after:
                if name not in self.halts:
                    self._no_progress(name, after)
                return

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
            self.daemon.plugins.notify("order_filled", trade=public)
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

    # ----- watching trades (dex.watch) -----
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

    # ----- orders -----
    def market(self, symbol: object) -> Market:
        m = self.markets.get(symbol) if isinstance(symbol, str) else None
        if m is None:
            raise UnknownMarket(f"unknown market {symbol!r}; known: {', '.join(sorted(self.markets))}")
        return m

    async def _ensure_open(self, m: Market) -> Any:
        """The market's engine; opens the engines first if the wallet was unlocked without telling us (create)."""
        if (not self._opened or self._engines_locked) and self.wallet.state == "unlocked":
            await self.on_unlocked()
        return self._ready(m)

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

    async def place_order(self, market: str, side: str, type_: str, qty: str, price: str | None = None,
                          time_in_force: str | None = None, post_only: bool = False,
                          client_order_id: str | None = None, account: str = "default") -> dict:
        """Check, record and lock, match, settle; every refusal happens before anything is recorded."""
        m = self.market(market)
        check_user_account(account)
        if side not in ("buy", "sell"):
            raise InvalidParams("side must be buy or sell")
        if type_ == "limit":
            if price is None:
                raise InvalidParams("a limit order needs a price")
            tif = time_in_force or "gtc"
        elif type_ == "market":
            if price is not None:
                raise InvalidParams("a market order takes no price (it fills within protection_bps of the best price)")
            if post_only:
                raise InvalidParams("post_only is for limit orders")
            tif = time_in_force or "ioc"
            if tif == "gtc":
                raise InvalidParams("a market order is ioc or fok, never gtc")
        else:
            raise InvalidParams("type must be limit or market")
        if tif not in ("gtc", "ioc", "fok"):
            raise InvalidParams("time_in_force must be gtc, ioc or fok")
        if client_order_id is not None and not (isinstance(client_order_id, str) and 0 < len(client_order_id) <= 64):
            raise InvalidParams("client_order_id must be a string of 1 to 64 characters")
        qty_lots = m.qty_lots(qty)
        price_ticks = 0
        if type_ == "limit":
            price_ticks = m.price_ticks(price)
            m.check_min_notional(price_ticks, qty_lots)
        new_order: dict[str, Any] = {
            "id": "o" + secrets.token_hex(8), "client_order_id": client_order_id, "account": account,
            "market": m.symbol, "side": side, "type": type_, "time_in_force": tif, "post_only": bool(post_only),
            "price_ticks": price_ticks, "qty_lots": qty_lots, "filled_lots": 0, "cost_minor": 0, "fee_minor": 0,
            "status": "open", "created_at": time.time(), "trades": []}
        try:
            engine = await self._ensure_open(m)
        except EngineError:
            # A repeat of an order recorded before (its answer lost to a crash) is answered with that order, not
            # with "nothing was recorded": it exists, and is submitted when the engine is back. The same
            # client_order_id for another order is a Conflict, as when the engine is up.
            repeat = None
            if client_order_id is not None:
                repeat = await self._find_by_coid(account, client_order_id, new_order)
            if repeat is None:
                raise
            return repeat
        req = _Request(new_order)
        queue = self._queues[m.symbol]
        queue.append(req)
        self._wake[m.symbol].set()
        if not self._leading[m.symbol]:
            self._leading[m.symbol] = True
            if self._nursery is not None:
                self._nursery.start_soon(self._lead_task, m, engine)
            else:  # serve() is not running (an embedding that drives the service directly): the caller leads
                await self._lead_task(m, engine)
        await req.done.wait()
        if req.error is not None:
            raise req.error
        return req.result  # type: ignore[return-value]  # result is set when error is None

    async def _lead_task(self, m: Market, engine: Any) -> None:
        """Process the market's queue until it is empty and everything has settled, then stand down."""
        detach_call_context()   # started from inside the first caller's call; it serves every caller
        try:
            while True:
                with trio.CancelScope(shield=True):  # a batch, once recorded, is submitted and settled
                    await self._lead(m, engine)
                if not self._queues[m.symbol]:  # no checkpoint between this check and standing down
                    return
        finally:
            self._leading[m.symbol] = False

    async def _lead(self, m: Market, engine: Any) -> None:
        """Group commit: each round takes every order queued meanwhile as one batch.

        Batches are pipelined: batch k+1 is checked, recorded and submitted while batch k settles (its
        record write and k's settlement share a wallet commit); settlements still apply in engine order.
        """
        queue = self._queues[m.symbol]
        settling: list[trio.Event] = []
        async with trio.open_nursery() as nursery:
            while True:
                if queue:
                    batch = _take_batch(queue)
                    async with self._market_locks[m.symbol]:
                        await self._contain(batch, self._run_batch(m, engine, batch, nursery, settling))
                    continue
                settling[:] = [e for e in settling if not e.is_set()]
                if not settling:
                    return
                # No checkpoint since the checks above: a new order or a finished settlement sets this event.
                self._wake[m.symbol] = wake = trio.Event()
                await wake.wait()

    @staticmethod
    async def _contain(batch: list[_Request], work: Any) -> None:
        """Run a batch step; any failure answers its requests instead of leaving them waiting."""
        try:
            await work
        except Exception as exc:
            log.exception("order batch failed")
            error = exc if isinstance(exc, TachyonError) else EngineError(f"order processing failed: {exc}")
            for req in batch:
                req.finish(error=error)

    async def _run_batch(self, m: Market, engine: Any, batch: list[_Request], nursery: trio.Nursery,
                         settling: list[trio.Event]) -> None:
        """Book checks (first order only), one write recording all, submits; settlement goes on in the nursery."""
        first = batch[0]
        if first.book_dependent:
            try:
                await self._check_book(engine, m, first.order)
            except TachyonError as book_error:
                error: TachyonError = book_error
                repeat = None
                if first.order["client_order_id"] is not None:
                    try:
                        repeat = await self._find_by_coid(first.order["account"], first.order["client_order_id"],
                                                          first.order)
                    except Conflict as conflict:  # the id names another order: that, not the book, is the error
                        error = conflict
                first.finish(result=repeat) if repeat is not None else first.finish(error=error)
                batch = batch[1:]
        if not batch:
            return
        try:
            self._ready(m)
        except EngineError as exc:
            for req in batch:   # refused before anything is recorded, except the repeats of recorded orders
                coid = req.order["client_order_id"]
                try:
                    repeat = await self._find_by_coid(req.order["account"], coid, req.order) if coid else None
                except Conflict as conflict:  # the id names another order: that is the error to report
                    req.finish(error=conflict)
                    continue
                req.finish(result=repeat) if repeat is not None else req.finish(error=exc)
            return
        items = [(r.order, *m.hold(r.order["side"], r.order["price_ticks"], r.order["qty_lots"],
                                   r.order["post_only"])) for r in batch]
        if m.engine in self._in_tx:
            await self._run_batch_in_tx(m, batch, items)
            return
        outcomes = await self.wallet.write(record_orders_op, items)
        if os.environ.get(FAULT_ENV) == "after_record":
            os._exit(1)  # test-only fault hook: recorded and locked, not submitted
        accepted: list[_Request] = []
        for req, (kind, value) in zip(batch, outcomes, strict=False):
            if kind == "refused":
                req.finish(error=value)
            elif kind == "repeat":
                req.finish(result=await self._public(value))
            else:
                req.order = value
                self._remember(value)
                self.metrics.orders_placed.labels(m.symbol).inc()
                accepted.append(req)
        if not accepted:
            return
        async with self._engine_locks[m.engine]:
            try:
                engine = self._ready(m)
            except EngineError as exc:
                # The engine went offline or halted while these were recorded: none was sent, so each is
                # canceled here at once and its hold released. The callers hear just that: their order exists
                # (canceled, nothing filled), so the refusal of an order never recorded would not be true.
                dones = [Event(0, m.symbol, "done", r.order["id"], r.order["qty_lots"], reason=DONE_CANCELED)
                         for r in accepted]
                await self._settle_next(m.engine, dones, store_seq=False)
                why = exc.message.split(" (nothing was recorded or locked)")[0]
                for req in accepted:
                    req.finish(error=EngineError(
                        f"order {req.order['id']} was recorded, then canceled before it was sent (nothing filled, "
                        f"its hold released): {why}"))
                return
            events, failed = await self._submit_all(m, engine, [r.order for r in accepted])
            if os.environ.get(FAULT_ENV) == "after_match":
                os._exit(1)  # test-only fault hook: the engine matched, the ledger has not settled
            slot = self._reserve_settlement(m.engine)
        for req in accepted:
            if req.order["id"] in failed:
                req.finish(error=failed[req.order["id"]])
        done = trio.Event()
        settling.append(done)
        nursery.start_soon(self._settle_batch, m, accepted, events, slot, done)

    async def _run_batch_in_tx(self, m: Market, batch: list[_Request], items: list) -> None:
        """One writer operation records, matches and settles the batch (an in-tx engine); answers after its commit.

        If the operation or its commit fails, nothing of the batch was kept, but the engine matched: its books
        are re-seeded from the ledger's committed open orders before it serves again, and the callers get
        the write's error.
        """
        name = m.engine
        engine_orders = [self._engine_order(r.order) for r in batch]
        fault = os.environ.get(FAULT_ENV)
        fail_coid = fault.removeprefix("fail_in_tx:") if fault and fault.startswith("fail_in_tx:") else None
        async with self._engine_locks[name]:
            engine = self._ready(m)
            await self._reseed(name, engine)
            try:
                outcomes, events, result = await self.wallet.write(
                    place_orders_op, engine, name, self._base_seq[name], items, engine_orders, self._open,
                    self.markets, fail_coid)
            except EngineEventRefused as exc:
                self._refused(name, exc)
                self._reseed_due.add(name)
                raise EngineError(f"{exc.message}; settlement of engine {name} is halted (nothing was recorded "
                                  "or locked)") from None
            except BaseException:
                self._reseed_due.add(name)
                with trio.CancelScope(shield=True):
                    try:
                        await self._reseed(name, engine)
                    except Exception:   # still failing (disk full): the next order or cancel tries again
                        log.exception("engine %s: re-seeding its books after a failed write failed", name)
                raise
            if fault in ("after_record", "after_match"):
                os._exit(1)  # test-only fault hook: committed (recorded, matched, settled), not answered
            for kind, value in outcomes:
                if kind == "new":
                    self._remember(value)
                    self.metrics.orders_placed.labels(m.symbol).inc()
            self._after_settle(name, events, result, store_seq=True)
            await self._acknowledge(name, 1)
        by_order: dict[str, list[dict]] = {}
        for t in result["trades"]:
            by_order.setdefault(t["taker_order_id"], []).append(t)
            if t["maker_order_id"] != t["taker_order_id"]:
                by_order.setdefault(t["maker_order_id"], []).append(t)
        for req, (kind, value) in zip(batch, outcomes, strict=False):
            if kind == "refused":
                req.finish(error=value)
            elif kind == "repeat":
                req.finish(result=await self._public(value))
            else:
                oid = value["id"]
                req.finish(result=order_public(result["orders"].get(oid, value), by_order.get(oid, []), m))

    async def _settle_batch(self, m: Market, accepted: list[_Request], events: list[Event],
                            slot: tuple[trio.Event, trio.Event], done: trio.Event) -> None:
        try:
            await self._contain(accepted, self._answer_batch(m, accepted, events, slot))
        finally:
            for req in accepted:
                req.finish(error=EngineError("order was not settled"))  # no-op for requests already answered
            done.set()
            self._wake[m.symbol].set()

    async def _answer_batch(self, m: Market, accepted: list[_Request], events: list[Event],
                            slot: tuple[trio.Event, trio.Event]) -> None:
        result = await self._settle_in_order(m.engine, events, slot)
        for req in accepted:
            oid = req.order["id"]
            if oid not in result["orders"] and oid not in self._open:
                # Settled already from the feed (a shared engine): the stored order says how.
                req.finish(result=await self._public(req.order))
                continue
            trades = [t for t in result["trades"] if oid in (t["taker_order_id"], t["maker_order_id"])]
            req.finish(result=order_public(result["orders"].get(oid, self._open.get(oid, req.order)), trades, m))

    def _reserve_settlement(self, engine_name: str) -> tuple[trio.Event, trio.Event]:
        """Take the next place in the engine's settlement order (call right after the submit, under its lock)."""
        prev = self._settle_tail[engine_name]
        mine = self._settle_tail[engine_name] = trio.Event()
        return prev, mine

    async def _settle_in_order(self, engine_name: str, events: list[Event], slot: tuple[trio.Event, trio.Event],
                               store_seq: bool = True) -> dict:
        """Settle after every earlier submit of this engine has settled, so seqs are applied in order."""
        prev, mine = slot
        try:
            await prev.wait()
            return await self._settle(engine_name, events, store_seq)
        finally:
            mine.set()

    async def _submit_all(self, m: Market, engine: Any, orders: list[dict]) -> tuple[list[Event], dict]:
        """Submit in time order; a durable engine gets the plain limits at once so it can group-commit them.

        Returns the events and, for a shared engine that did not answer, the errors of the orders concerned.
        """
        events: list[Event] = []
        errors: list[Exception] = []
        failed: dict[str, Exception] = {}
        shared = hasattr(engine, "follow")

        async def submit(order: dict) -> None:
            try:
                events.extend(await engine.submit(self._engine_order(order)))
            except EngineUnavailable as exc:
                if not shared:
                    errors.append(exc)
                    return
                # Unknown whether the server took it: it stays open (and locked); on reconnect the feed says
                # what became of it, or it is submitted again.
                self._set_offline(m.engine, exc)
                self._unsent.setdefault(m.engine, set()).add(order["id"])
                failed[order["id"]] = EngineError(
                    f"engine {m.engine} did not answer ({exc.message}): order {order['id']} stays open with its "
                    "hold until the engine is back; then its fills settle from the feed, or it is submitted again")
            except Exception as exc:  # the order stays open in the ledger; recovery resubmits it after restart
                errors.append(exc)

        if not engine.durable or len(orders) == 1:
            for order in orders:
                await submit(order)
        else:
            if orders[0]["type"] == "market" or orders[0]["post_only"]:
                await submit(orders.pop(0))  # its book check holds only if it matches first
            async with trio.open_nursery() as nursery:
                for order in orders:
                    nursery.start_soon(submit, order)
        if errors:
            self.failures[m.engine] = f"submit failed ({type(errors[0]).__name__}: {errors[0]}); restart the daemon"
            log.error("engine %s: %s", m.engine, self.failures[m.engine])
        events.sort(key=lambda ev: ev.seq if type(ev.seq) is int else -1)
        return events, failed

    async def _depth(self, engine: Any, m: Market, levels: int) -> Any:
        """The engine's depth; for an in-tx engine under its lock (its books change on the writer thread)."""
        if m.engine not in self._in_tx:
            return await engine.depth(m.symbol, levels)
        async with self._engine_locks[m.engine]:
            return await engine.depth(m.symbol, levels)

    async def _check_book(self, engine: Any, m: Market, order: dict) -> None:
        """A market order's protection price and min notional, or a post-only order's no-take check."""
        depth = await self._depth(engine, m, 1)
        side = order["side"]
        if order["type"] == "market":
            best = depth.asks if side == "buy" else depth.bids
            if not best:
                # Nothing to trade with: accepted, and it expires with nothing filled (the contract's
                # "a market order that leaves something unfilled ends expired"). The lowest tick as its
                # bound keeps its hold minimal; under the market's lock nothing can arrive to match it.
                order["price_ticks"] = 1
                return
            m.check_min_notional(best[0][0], order["qty_lots"])
            order["price_ticks"] = m.protection_ticks(side, best[0][0])
        else:
            await self._check_post_only(depth, m, side, order["price_ticks"])

    @staticmethod
    async def _check_post_only(depth: Any, m: Market, side: str, price_ticks: int) -> None:
        if side == "buy" and depth.asks and depth.asks[0][0] <= price_ticks:
            raise OrderRejected(f"post-only buy at {m.fmt_price(price_ticks)} would take the ask at "
                                f"{m.fmt_price(depth.asks[0][0])}")
        if side == "sell" and depth.bids and depth.bids[0][0] >= price_ticks:
            raise OrderRejected(f"post-only sell at {m.fmt_price(price_ticks)} would take the bid at "
                                f"{m.fmt_price(depth.bids[0][0])}")

    async def _find_by_coid(self, account: str, client_order_id: str, order: dict) -> dict | None:
        """The first order under this client_order_id when ``order`` is the same order; None when the id is
        unused; Conflict when it was used for another order."""
        oid = self._open_coids.get((account, client_order_id))
        if oid is not None:
            return await self._public(coid_repeat(self._open[oid], order))  # type: ignore[arg-type]  # the stored order dict
        stored = await self.wallet.read(order_read, None, account, client_order_id)
        return None if stored is None else self._public_with(coid_repeat(stored, order))  # type: ignore[arg-type]  # the stored order dict

    async def _public(self, order: dict) -> dict:
        stored = await self.wallet.read(order_read, order["id"])
        return self._public_with(stored if stored is not None else {**order, "trade_rows": []})

    def _public_with(self, stored: dict) -> dict:
        return order_public(stored, stored["trade_rows"], self.markets[stored["market"]])

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
                                                         order_id, left_lots, self._open, self.markets)
            except EngineEventRefused as exc:
                self._refused(name, exc)
                self._reseed_due.add(name)
                raise EngineError(f"{exc.message}; settlement of engine {name} is halted") from None
            except BaseException:
                self._reseed_due.add(name)
                try:
                    await self._reseed(name, engine)
                except Exception:
                    log.exception("engine %s: re-seeding its books after a failed write failed", name)
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
