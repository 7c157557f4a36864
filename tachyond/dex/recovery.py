"""Engines and their recovery: opening each engine at unlock, replaying what it did after the last applied seq
or re-seeding a forgetful one from the ledger's open orders, and a shared engine's live feed (follow,
reconnect with backoff, catch up).
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from ..engine import EngineContext, EngineUnavailable, MarketSpec, is_transactional
from ..errors import EngineError, IntegrityError, WalletLocked, WriteFailed
from .fused import EngineEventRefused, reseed_op
from .market import Market
from .settlement import Settlement
from .state import EVENTS_PAGE, FEED_WAIT_S, RETRY_MAX_S, RETRY_MIN_S
from .store import engine_epochs_read, engine_seqs_read, open_orders_read, set_engine_feed_op, set_engine_seq_op

log = logging.getLogger("tachyond.dex")


class Recovery(Settlement):
    """Opens, recovers and follows the engines (the layer above settlement)."""

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

    async def _open_engine(self, name: str) -> None:
        _plugin, factory = self.engine_factories[name]
        cfg = self._config()
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

    async def _reseed_after_failure(self, name: str, engine: Any) -> None:
        """A transaction that matched on an in-tx engine did not commit: put its books back to the ledger's now
        (shielded: the caller is leaving with the write's error). Still no room: the next order or cancel tries
        again first; that is said as a warning, an unexpected failure with its traceback."""
        self._reseed_due.add(name)
        with trio.CancelScope(shield=True):
            try:
                await self._reseed(name, engine)
            except WriteFailed as again:
                log.warning("engine %s: re-seeding its books waits for the wallet to take writes again: %s",
                            name, again.message)
            except Exception:
                log.exception("engine %s: re-seeding its books after a failed write failed", name)

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

    def _start_follower(self, name: str) -> None:
        self._shared.add(name)
        if self._nursery is not None and name not in self._followers:
            self._followers.add(name)
            self._nursery.start_soon(self._follow, name)

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

    async def _ensure_open(self, m: Market) -> Any:
        """The market's engine; opens the engines first if the wallet was unlocked without telling us (create)."""
        if (not self._opened or self._engines_locked) and self.wallet.state == "unlocked":
            await self.on_unlocked()
        return self._ready(m)
