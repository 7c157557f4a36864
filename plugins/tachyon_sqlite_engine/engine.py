"""SqliteEngine: the shared matching core, with every event durable in an encrypted SQLite log before it is returned.

Matching happens in memory (``tachyond.matching``); the events of concurrent submits are committed together
(group commit: whoever finds no write in progress writes everything pending, in a worker thread, while the
others wait for it). A write failure stops the engine: a new instance rebuilds from the file.

By default (``in_wallet = true``) the log is a table of the wallet file (``engine_sqlite_events``, rows sealed
with the wallet's data key), written inside the wallet's own write transaction (``submit_in_tx``): the core
records, matches and settles an order in one commit. Its books are then, by construction, the ledger's open
orders, which the core submits again at start (``reset_in_tx``). An ``engine-sqlite.db`` left by the file
mode is read once (the core replays what it logged after the ledger's applied seq), then renamed
``engine-sqlite.db.migrated`` and never read again. With ``in_wallet = false`` the engine keeps its own file
``engine-sqlite.db`` (the file mode above: two commits per order, the engine's and the ledger's).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from tachyond.engine import Cipher, Depth, EngineContext, EngineOrder, Event, MarketSpec
from tachyond.errors import EngineError, WalletLocked
from tachyond.matching import Matcher

from .store import BatchItem, EventStore

DB_NAME = "engine-sqlite.db"
DEFAULT_SNAPSHOT_EVERY = 10_000
DEFAULT_RETAIN_EVENTS = 10_000
DEFAULT_IN_WALLET = True            # the log in the wallet file, one commit per order; false: engine-sqlite.db
TX_TABLE = "engine_sqlite_events"   # the log in the wallet file (in_wallet mode): id = the event's seq
TX_SCHEMA = [f"CREATE TABLE IF NOT EXISTS {TX_TABLE} (id INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL,"
             " body BLOB NOT NULL)"]
MIGRATED_SUFFIX = ".migrated"


def _positive_int(config: dict, key: str, default: int, minimum: int) -> int:
    value = config.get(key, default)
    if type(value) is not int or value < minimum:
        raise EngineError(f"engines.sqlite.{key} must be an integer >= {minimum}")
    return value


def _in_wallet(config: dict) -> bool:
    return config.get("in_wallet", DEFAULT_IN_WALLET) is True


class SqliteEngine:
    """Durable matching engine. Config (``[engines.sqlite]``): ``snapshot_every`` events between snapshots,
    ``retain_events`` applied events kept in the log below the snapshot for ``events_after``, ``in_wallet``
    (default true) the log in the wallet file rather than in ``engine-sqlite.db``."""

    durable = True
    CONFIG_KEYS = ("snapshot_every", "retain_events", "in_wallet")

    @staticmethod
    def validate_config(config: dict) -> None:
        """Checked by the daemon at start, so a bad [engines.sqlite] stops it before anything runs."""
        for key in config:
            if key not in SqliteEngine.CONFIG_KEYS:
                raise EngineError(f"engines.sqlite.{key}: unknown key (known: {', '.join(SqliteEngine.CONFIG_KEYS)})")
        _positive_int(config, "snapshot_every", DEFAULT_SNAPSHOT_EVERY, 1)
        _positive_int(config, "retain_events", DEFAULT_RETAIN_EVENTS, 0)
        if type(config.get("in_wallet", DEFAULT_IN_WALLET)) is not bool:
            raise EngineError("engines.sqlite.in_wallet must be true or false")

    @staticmethod
    def tx_tables(config: dict) -> tuple[list[str], dict[str, tuple[str, ...]]]:
        """The wallet tables of the in_wallet mode (none otherwise) and their sealed columns, for the core to
        register before the wallet starts (schema, and the data-key rotation)."""
        if _in_wallet(config):
            return TX_SCHEMA, {TX_TABLE: ("body",)}
        return [], {}

    def __init__(self, ctx: EngineContext):
        if ctx.cipher is None:
            raise EngineError("the sqlite engine encrypts what it stores: it needs the wallet's cipher")
        self.name = ctx.name
        self.in_tx = _in_wallet(ctx.config)
        self._path: Path = ctx.data_dir / DB_NAME
        self._markets: list[str] = []
        self._tx_ready = False            # in_wallet: reset_in_tx ran (the legacy file, if any, is put away)
        self._store = EventStore(self._path, ctx.cipher)
        self._store_open = False          # the file (file mode, or the file mode's log before in_wallet took over)
        self._trimmed_at = 0              # in_wallet: the seq at which the table's log was last trimmed
        self._snapshot_every = _positive_int(ctx.config, "snapshot_every", DEFAULT_SNAPSHOT_EVERY, 1)
        self._retain_events = _positive_int(ctx.config, "retain_events", DEFAULT_RETAIN_EVENTS, 0)
        self._matcher: Matcher | None = None
        self._closed = False
        self._locked = False              # the wallet is locked: no cipher, no MAC key, nothing written
        self._failure: str | None = None
        # Group commit state.
        self._pending: list[BatchItem] = []
        self._durable_seq = 0
        self._writing = False
        self._write_done = trio.Event()
        self._db_lock = trio.Lock()       # one connection, used by one worker thread at a time
        # Compaction state.
        self._snapshot_seq = 0
        self._log_floor = 0
        self._applied_seq = 0
        self._compact_requested = 0
        self._compact_done = 0
        self._force_snapshot = False

    # --- protocol -----------------------------------------------------------------------------------------

    async def start(self, markets: Sequence[MarketSpec]) -> None:
        self._markets += [spec.symbol for spec in markets]
        if self.in_tx and self._matcher is None and not self._path.exists():
            self._matcher = Matcher()   # nothing to read: the core re-seeds the books from the ledger
            self._store.forget_keys()   # and nothing to seal here: the wallet's transaction does
            for spec in markets:
                self._matcher.add_market(spec.symbol)
            return
        if self._matcher is None:
            async with self._db_lock:
                loaded = await trio.to_thread.run_sync(self._store.load)
            self._store_open = True
            self._matcher = loaded.matcher
            self._durable_seq = loaded.matcher.last_seq
            self._snapshot_seq = loaded.snapshot_seq
            self._log_floor = loaded.log_floor
        for spec in markets:
            self._matcher.add_market(spec.symbol)

    # --- in_wallet mode: inside the wallet's write transaction, on its writer thread (core holds our lock) ----

    def reset_in_tx(self, tx: Any) -> int:
        """Empty books (the core submits the ledger's open orders next); the sequence goes on after the highest
        of the wallet table's log, the old file's log and this instance's own count. The file mode's log,
        replayed by the core before this call, is closed and renamed ``engine-sqlite.db.migrated``."""
        self._require_in_tx()
        if self._store_open:
            self._store.close()
            self._store_open = False
            self._store.forget_keys()
            for suffix in ("", "-wal", "-shm"):
                old = Path(f"{self._path}{suffix}")
                if old.exists():
                    old.rename(f"{self._path}{MIGRATED_SUFFIX}{suffix}")
            Path(f"{self._path}.lock").unlink(missing_ok=True)
        stored = tx.conn.execute(f"SELECT max(id) FROM {TX_TABLE}").fetchone()[0] or 0
        matcher = Matcher(last_seq=max(stored, self._matcher.last_seq if self._matcher is not None else 0))
        for symbol in self._markets:
            matcher.add_market(symbol)
        self._matcher = matcher
        self._durable_seq = matcher.last_seq
        self._tx_ready = True
        return matcher.last_seq

    def submit_in_tx(self, tx: Any, order: EngineOrder) -> list[Event]:
        matcher = self._tx_matcher()
        events = matcher.submit(order)
        last = events[-1]
        rest = [order.owner, order.side, order.price_ticks, order.post_only] if last.kind == "rested" else None
        self._log_in_tx(tx, events, rest)
        return events

    def cancel_in_tx(self, tx: Any, market: str, order_id: str) -> list[Event]:
        events = self._tx_matcher().cancel(market, order_id)
        if events:
            self._log_in_tx(tx, events, None)
        return events

    def _require_in_tx(self) -> None:
        if not self.in_tx:
            raise EngineError("the sqlite engine keeps its own file: in_wallet = false")
        if self._closed:
            raise EngineError("the sqlite engine is closed")

    def _tx_matcher(self) -> Matcher:
        self._require_in_tx()
        if not self._tx_ready or self._matcher is None:
            raise EngineError("the sqlite engine's books are not loaded from the wallet yet (reset_in_tx)")
        return self._matcher

    def _log_in_tx(self, tx: Any, events: list[Event], rest: list[Any] | None) -> None:
        """The events into the wallet table, sealed with the wallet's data key (same transaction as the ledger)."""
        ts_ms = time.time_ns() // 1_000_000
        last = len(events) - 1
        rows = []
        for i, ev in enumerate(events):
            row: list[Any] = [ev.market, ev.kind, ev.order_id, ev.qty_lots, ev.price_ticks, ev.maker_order_id,
                              ev.taker_side, ev.reason]
            if rest is not None and i == last:
                row.append(rest)
            rows.append((ev.seq, ts_ms, tx.seal_json(TX_TABLE, "body", ev.seq, row)))
        tx.conn.executemany(f"INSERT INTO {TX_TABLE} (id, ts_ms, body) VALUES (?, ?, ?)", rows)
        seq = events[-1].seq
        if seq - self._trimmed_at >= self._snapshot_every:   # keep the newest retain_events (and the last row)
            tx.conn.execute(f"DELETE FROM {TX_TABLE} WHERE id <= ?", (min(seq - 1, seq - self._retain_events),))
            self._trimmed_at = seq
        self._durable_seq = seq

    # --- the file mode ---------------------------------------------------------------------------------------

    async def submit(self, order: EngineOrder) -> list[Event]:
        matcher = self._ready()
        events = matcher.submit(order)
        last = events[-1]
        rest = (order.owner, order.side, order.price_ticks, order.post_only) if last.kind == "rested" else None
        self._pending.append((matcher.id_key(order.order_id), events, rest))
        await self._wait_durable(last.seq)
        return events

    async def cancel(self, market: str, order_id: str) -> list[Event]:
        matcher = self._ready()
        events = matcher.cancel(market, order_id)
        if events:
            self._pending.append((None, events, None))
            await self._wait_durable(events[-1].seq)
        return events

    async def depth(self, market: str, levels: int) -> Depth:
        return self._ready(locked_ok=True).depth(market, levels)

    async def open_orders(self, market: str) -> list[EngineOrder]:
        return self._ready(locked_ok=True).open_orders(market)

    async def events_after(self, seq: int, limit: int = 1000) -> list[Event]:
        self._ready()
        if self._tx_ready:
            raise EngineError("the sqlite engine keeps its log in the wallet (in_wallet): events are settled in the "
                              "transaction that makes them, so there is nothing to replay from the engine")
        if limit <= 0:
            return []
        async with self._db_lock:
            if seq < self._log_floor:
                raise EngineError(
                    f"sqlite engine events after seq {seq} were compacted away: its log starts after seq "
                    f"{self._log_floor}; the books are intact, but events below that cannot be replayed")
            return await trio.to_thread.run_sync(self._store.read_events, seq, limit)

    async def last_seq(self) -> int:
        self._ready(locked_ok=True)
        return self._durable_seq

    async def compact(self, applied_seq: int) -> None:
        """Record that the core applied every event <= applied_seq; snapshot and trim the log when due.

        Events the core has not applied are never dropped, nor any the latest snapshot does not cover;
        ``retain_events`` more are kept below that line.
        """
        matcher = self._ready(locked_ok=True)
        self._applied_seq = max(self._applied_seq, min(applied_seq, self._durable_seq))
        if self._locked or not self._store_open:   # in_wallet: the log is trimmed as it is written
            return  # a snapshot needs the cipher: the next compact() after the unlock catches up
        snapshot_due = matcher.last_seq - self._snapshot_seq >= self._snapshot_every
        if snapshot_due or self._cutoff(self._snapshot_seq) is not None:
            await self._run_compaction()

    async def on_lock(self) -> None:
        """The wallet was locked: finish the write in progress, then drop the cipher and the MAC key."""
        if self._locked or self._closed:
            return
        self._locked = True  # from here _ready() refuses; compaction waits for the unlock
        if not self._store_open:
            self._store.forget_keys()  # in_wallet: no key in use (the wallet's transaction seals); drop the copy
            return
        with trio.CancelScope(shield=True):
            # What was matched or requested before the lock is written with the key it was made under.
            await self._write_until(lambda: not self._writing and not self._pending
                                    and self._compact_done >= self._compact_requested)
            async with self._db_lock:  # no events_after mid-decrypt
                self._store.forget_keys()

    async def rekey(self, cipher: Cipher, previous: Cipher) -> None:
        """The wallet's data key was rotated: re-encrypt the file from ``previous`` to ``cipher`` (after the
        write in progress); works while locked (the engine stays locked)."""
        if not self._store_open:
            return  # in_wallet: the wallet's rotation re-seals the table (declared by tx_tables)
        with trio.CancelScope(shield=True):
            await self._write_until(lambda: not self._writing and not self._pending
                                    and self._compact_done >= self._compact_requested)
            async with self._db_lock:
                await trio.to_thread.run_sync(self._store.rekey, cipher, previous)

    async def on_unlock(self, cipher: Cipher) -> None:
        """The wallet was unlocked: take its cipher again (reopens the MAC key from the file)."""
        if not self._locked or self._closed:
            return
        if not self._store_open:
            self._locked = False
            return
        async with self._db_lock:
            await trio.to_thread.run_sync(self._store.set_cipher, cipher)
        self._locked = False

    async def aclose(self) -> None:
        """Commit what is pending, write a snapshot so the next start replays little, close the file."""
        if self._closed:
            return
        if not self._store_open:
            self._closed = True
            return
        try:
            if (self._matcher is not None and self._failure is None and not self._locked
                    and self._matcher.last_seq > self._snapshot_seq):
                self._force_snapshot = True
                await self._run_compaction()
        finally:
            self._closed = True
            with trio.CancelScope(shield=True):
                async with self._db_lock:
                    await trio.to_thread.run_sync(self._store.close)

    # --- group commit -------------------------------------------------------------------------------------

    def _ready(self, *, locked_ok: bool = False) -> Matcher:
        if self._failure is not None:
            raise EngineError(self._failure)
        if self._locked and not locked_ok:
            raise WalletLocked()
        if self._closed or self._matcher is None:
            raise EngineError("the sqlite engine is not running (start() it first; it was not closed?)")
        if not locked_ok and (self._tx_ready or (self.in_tx and not self._store_open)):
            raise EngineError("the sqlite engine matches in the wallet's transaction (in_wallet, its default): "
                              "submit_in_tx; [engines.sqlite] in_wallet = false gives it a file of its own")
        return self._matcher

    def _cutoff(self, snapshot_seq: int) -> int | None:
        """The highest seq that may be dropped from the log, if above what was already dropped."""
        cutoff = min(self._applied_seq, snapshot_seq) - self._retain_events
        return cutoff if cutoff > self._log_floor else None

    async def _wait_durable(self, seq: int) -> None:
        await self._write_until(lambda: self._durable_seq >= seq)

    async def _run_compaction(self) -> None:
        self._compact_requested += 1
        request = self._compact_requested
        await self._write_until(lambda: self._compact_done >= request)

    async def _write_until(self, done) -> None:
        """Join the running write or be the writer, until ``done()``."""
        # Shielded: the events are already in the in-memory book, so they must reach the disk even if the
        # caller is cancelled; the wait is one bounded write.
        with trio.CancelScope(shield=True):
            while not done():
                if self._failure is not None:
                    raise EngineError(self._failure)
                if self._writing:
                    await self._write_done.wait()
                else:
                    await self._write()

    async def _write(self) -> None:
        """Be the writer: commit every pending event, and a requested compaction, in one transaction."""
        matcher = self._matcher
        assert matcher is not None
        self._writing = True
        done = self._write_done
        committed = False
        try:
            batch, self._pending = self._pending, []
            upto_seq = matcher.last_seq  # no await since the batch was taken: the books are exactly at upto_seq
            request = self._compact_requested
            snapshot = None
            cutoff = None
            if request > self._compact_done:
                if self._force_snapshot or upto_seq - self._snapshot_seq >= self._snapshot_every:
                    if upto_seq > self._snapshot_seq:
                        snapshot = (upto_seq, matcher.dump())
                cutoff = self._cutoff(snapshot[0] if snapshot else self._snapshot_seq)
            async with self._db_lock:
                await trio.to_thread.run_sync(self._store.write, batch, snapshot, cutoff)
                committed = True
                self._durable_seq = upto_seq
                if snapshot is not None:
                    self._snapshot_seq = snapshot[0]
                    self._force_snapshot = False
                if cutoff is not None:
                    self._log_floor = cutoff
                self._compact_done = request
        except Exception as exc:
            self._failure = (f"the sqlite engine could not write {self._store.path.name} ({type(exc).__name__}: "
                             f"{exc}); it stopped: restart it to rebuild from the file")
            raise EngineError(self._failure) from exc
        finally:
            if not committed and self._failure is None:
                self._failure = "the sqlite engine stopped during a write: restart it to rebuild from the file"
            self._writing = False
            self._write_done = trio.Event()
            done.set()
