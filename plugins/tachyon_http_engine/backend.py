"""The reference server's matching state: tachyond.matching.Matcher plus an optional write-ahead input log.

``engine = "memory"``: books and the event feed live in memory only; a restart begins again at seq 1.
``engine = "sqlite"``: every submit and cancel is appended to ``data_dir/engine-server.db`` (plain SQLite,
not encrypted: the server holds no wallet key) and committed *before* it is matched. Matching is
deterministic, so replaying the inputs at start rebuilds the same books, the same events and the same
sequence numbers; a refused input replays as the same refusal. The log is never truncated (the floor
below which the feed no longer serves is stored, and only trims what the feed serves).

The feed has an epoch: a random id fixed for the life of the log (stored beside it for "sqlite", new at
every start for "memory", which says it is not durable). Compaction is the server's: each daemon
acknowledges what it applied (``compact``, with its client id); the feed keeps every event some registered
client has not acknowledged, unless it is older than ``retention_s``.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from tachyond.engine import Depth, EngineOrder, Event
from tachyond.errors import EngineError, UnknownMarket
from tachyond.matching import Matcher

DB_NAME = "engine-server.db"


class FeedGone(EngineError):
    """Events asked for were compacted away (answered 410)."""


class ServerBackend:
    """One Matcher for every configured market, its event feed, and (for "sqlite") its input log."""

    def __init__(self, markets: Sequence[str], *, data_dir: Path | None, retention_s: float = 7 * 86400):
        self.matcher = Matcher()
        for symbol in markets:
            self.matcher.add_market(symbol)
        self.durable = data_dir is not None
        self.epoch = secrets.token_hex(16)
        self.retention_s = retention_s
        self._events: list[Event] = []
        self._times: list[float] = []   # when each event in _events was made (monotonic, this run)
        self._floor = 0            # events with seq <= _floor are no longer served
        self._acks: dict[str, int] = {}   # client id -> the seq it acknowledged
        self._stored_acks: dict[str, int] = {}
        self._changed = trio.Event()      # set (and replaced) whenever the feed grows
        self._lock = trio.Lock()   # one input at a time: log, then match, in the same order
        self._failed: str | None = None
        self._db: sqlite3.Connection | None = None
        if data_dir is not None:
            self._open(Path(data_dir))

    # ----- the log ------------------------------------------------------------------------------------

    def _open(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(data_dir / DB_NAME, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS inputs (n INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        db.execute("CREATE TABLE IF NOT EXISTS feed (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("CREATE TABLE IF NOT EXISTS acks (client TEXT PRIMARY KEY, seq INTEGER NOT NULL)")
        db.execute("INSERT OR IGNORE INTO feed VALUES ('epoch', ?)", (self.epoch,))
        self.epoch = db.execute("SELECT value FROM feed WHERE key = 'epoch'").fetchone()[0]
        self._acks = dict(db.execute("SELECT client, seq FROM acks"))
        self._stored_acks = dict(self._acks)
        self._db = db
        for (body,) in db.execute("SELECT body FROM inputs ORDER BY n"):
            self._apply(json.loads(body), replay=True)
        row = db.execute("SELECT value FROM meta WHERE key = 'floor'").fetchone()
        if row:
            self._trim(row[0])

    def _append_sync(self, record: dict[str, Any]) -> None:
        assert self._db is not None
        self._db.execute("INSERT INTO inputs (body) VALUES (?)", (json.dumps(record, separators=(",", ":")),))

    async def _log(self, record: dict[str, Any]) -> None:
        """Commit one input before it is matched; shielded, so a dropped request cannot split log and book."""
        if self._db is None:
            return
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(self._append_sync, record)
            except sqlite3.Error as exc:
                self._failed = f"input log write failed ({exc}); restart the server"
                raise EngineError(self._failed) from None

    def _apply(self, record: dict[str, Any], *, replay: bool) -> list[Event]:
        try:
            if record["op"] == "submit":
                events = self.matcher.submit(EngineOrder(**record["order"]))
            else:
                events = self.matcher.cancel(record["market"], record["order_id"])
        except (EngineError, UnknownMarket):
            if replay:
                return []   # it was refused when first received, and is refused the same way now
            raise
        if events:
            self._events.extend(events)
            now = time.monotonic()
            self._times.extend(now for _ in events)
            if not replay:
                self._changed.set()
                self._changed = trio.Event()
        return events

    # ----- operations ---------------------------------------------------------------------------------

    def _check(self) -> None:
        if self._failed:
            raise EngineError(self._failed)

    async def submit(self, order: EngineOrder) -> list[Event]:
        self._check()
        self.matcher.book(order.market)  # UnknownMarket before anything is logged
        async with self._lock:
            await self._log({"op": "submit", "order": order.__dict__})
            return self._apply({"op": "submit", "order": order.__dict__}, replay=False)

    async def cancel(self, market: str, order_id: str) -> list[Event]:
        self._check()
        self.matcher.book(market)
        async with self._lock:
            if order_id not in self.matcher.book(market):
                return []   # nothing to log: a cancel of a non-resting order changes nothing
            record = {"op": "cancel", "market": market, "order_id": order_id}
            await self._log(record)
            return self._apply(record, replay=False)

    def depth(self, market: str, levels: int) -> Depth:
        return self.matcher.depth(market, levels)

    def open_orders(self, market: str) -> list[EngineOrder]:
        return self.matcher.open_orders(market)

    def last_seq(self) -> int:
        return self.matcher.last_seq

    def events_after(self, seq: int, limit: int) -> list[Event]:
        """The feed after ``seq``; EngineError when ``seq`` is below what is still served."""
        if seq < self._floor:
            raise FeedGone(f"events after seq {seq} are gone: the feed starts after seq {self._floor}")
        start = seq - self._floor
        return self._events[start:start + max(0, limit)]

    async def wait_events(self, seq: int, limit: int, wait_s: float) -> list[Event]:
        """``events_after``, waiting up to ``wait_s`` seconds for the first event when there is none yet."""
        with trio.move_on_after(wait_s):
            while self.matcher.last_seq <= seq:
                await self._changed.wait()
        return self.events_after(seq, limit)

    async def compact(self, applied_seq: int, client: str = "anonymous") -> None:
        """Record that ``client`` applied every event ``<= applied_seq``; trim what no registered client needs:
        events every client acknowledged, and events older than the retention window."""
        seq = min(applied_seq, self.matcher.last_seq)
        if seq <= self._acks.get(client, -1):
            return
        self._acks[client] = seq
        floor = min(self._acks.values())
        cutoff = time.monotonic() - self.retention_s
        n = 0
        while n < len(self._times) and self._times[n] < cutoff:
            n += 1
        floor = max(floor, self._floor + n)
        async with self._lock:   # the connection is used by one thread at a time
            if self._db is not None and (client not in self._stored_acks or seq - self._stored_acks[client] >= 1000):
                # A stored ack may lag the true one: after a restart the feed then keeps more, never less.
                db = self._db
                self._stored_acks[client] = seq
                await trio.to_thread.run_sync(
                    lambda: db.execute("INSERT INTO acks VALUES (?, ?) ON CONFLICT(client) DO UPDATE SET "
                                       "seq = excluded.seq", (client, seq)))
            if floor <= self._floor:
                return
            if self._db is not None:
                db = self._db
                await trio.to_thread.run_sync(
                    lambda: db.execute("INSERT INTO meta (key, value) VALUES ('floor', ?) "
                                       "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (floor,)))
            self._trim(floor)

    def _trim(self, floor: int) -> None:
        n = floor - self._floor
        if n > 0:
            del self._events[:n]
            del self._times[:n]
            self._floor = floor

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
