"""The SQLite engine's file: an encrypted event log, encrypted book snapshots, and keyed MACs of used order ids.

Only sequence numbers, timestamps and opaque MACs are stored in clear; every event and snapshot is sealed
with the wallet's cipher, its associated data binding it to ``table|column|row``. Every method blocks:
the engine calls them through ``trio.to_thread.run_sync``, one at a time.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tachyond.engine import Cipher, Event
from tachyond.errors import EngineError, IntegrityError, WalletLocked
from tachyond.matching import Matcher

SCHEMA_VERSION = b"1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (seq INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS order_ids (mac BLOB PRIMARY KEY) WITHOUT ROWID;
"""

RestInfo = tuple[str, str, int, bool]        # owner, side, price_ticks, post_only of an order that rested
BatchItem = tuple[bytes | None, list[Event], RestInfo | None]  # (order-id MAC for a submit, its events, rest)


@dataclass
class Loaded:
    """What ``EventStore.load`` rebuilt: the books at the last logged event, and the log's bounds."""

    matcher: Matcher
    snapshot_seq: int
    log_floor: int       # events_after(seq) is answerable for seq >= log_floor


def _event_aad(seq: int) -> bytes:
    return b"events|body|%d" % seq


def _snapshot_aad(seq: int) -> bytes:
    return b"snapshots|body|%d" % seq


def _encode_event(ev: Event, rest: RestInfo | None) -> bytes:
    row: list[Any] = [ev.market, ev.kind, ev.order_id, ev.qty_lots, ev.price_ticks, ev.maker_order_id,
                      ev.taker_side, ev.reason]
    if rest is not None:
        row.append(list(rest))
    return json.dumps(row, separators=(",", ":")).encode()


def _decode_event(seq: int, plain: bytes) -> tuple[Event, list[Any] | None]:
    row = json.loads(plain)
    rest = row[8] if len(row) > 8 else None
    return Event(seq, row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7]), rest


class EventStore:
    """One SQLite connection to ``engine-sqlite.db`` (WAL, synchronous=FULL); not for concurrent use."""

    def __init__(self, path: Path, cipher: Cipher):
        self.path = path
        self._cipher: Cipher | None = cipher
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._mac_key = b""

    @property
    def cipher(self) -> Cipher:
        if self._cipher is None:
            raise WalletLocked()
        return self._cipher

    def forget_keys(self) -> None:
        """Drop the wallet cipher and the order-id MAC key (the wallet was locked)."""
        self._cipher = None
        self._mac_key = b""

    def set_cipher(self, cipher: Cipher) -> None:
        """Take the wallet cipher again (unlocked) and reopen the MAC key with it."""
        row = self._require().execute("SELECT value FROM meta WHERE key = 'mac_key'").fetchone()
        self._mac_key = cipher.open(b"meta|value|mac_key", row[0])
        self._cipher = cipher

    def rekey(self, new: Cipher, old: Cipher) -> None:
        """Re-seal every event, snapshot and the MAC key from ``old`` to ``new`` in one transaction (a data-key
        rotation); nothing to do when the file is under ``new`` already (a rotation finished after a crash).
        A locked store (no cipher) stays locked."""
        conn = self._require()
        sealed_mac_key = conn.execute("SELECT value FROM meta WHERE key = 'mac_key'").fetchone()[0]
        try:
            new.open(b"meta|value|mac_key", sealed_mac_key)
        except IntegrityError:
            pass
        else:
            if self._cipher is not None:
                self._cipher = new
            return
        with self._transaction():
            conn.execute("UPDATE meta SET value = ? WHERE key = 'mac_key'",
                         (new.seal(b"meta|value|mac_key", old.open(b"meta|value|mac_key", sealed_mac_key)),))
            for table, where in (("events", _event_aad), ("snapshots", _snapshot_aad)):
                rows = conn.execute(f"SELECT seq, body FROM {table}").fetchall()
                conn.executemany(f"UPDATE {table} SET body = ? WHERE seq = ?",
                                 [(new.seal(where(seq), old.open(where(seq), body)), seq) for seq, body in rows])
        if self._cipher is not None:
            self._cipher = new

    def mac(self, order_id: str) -> bytes:
        """A keyed MAC of an order id: lets the file remember used ids without revealing them."""
        return hashlib.blake2b(order_id.encode(), key=self._mac_key, digest_size=16).digest()

    def load(self) -> Loaded:
        """Open (creating if new) the file and rebuild the books: the latest snapshot, then the log after it."""
        try:
            return self._load()
        except BaseException:
            self.close()
            raise

    def _load(self) -> Loaded:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock()
        _private_file(self.path)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn = conn
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        if "schema" not in meta:
            self._mac_key = os.urandom(32)
            with self._transaction():
                conn.execute("INSERT INTO meta(key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
                conn.execute("INSERT INTO meta(key, value) VALUES ('mac_key', ?)",
                             (self.cipher.seal(b"meta|value|mac_key", self._mac_key),))
                conn.execute("INSERT INTO meta(key, value) VALUES ('log_floor', '0')")
            meta = dict(conn.execute("SELECT key, value FROM meta"))
        elif bytes(meta["schema"]) != SCHEMA_VERSION:
            raise EngineError(f"{self.path.name} has schema {meta['schema']!r}; this engine reads {SCHEMA_VERSION!r}")
        else:
            self._mac_key = self.cipher.open(b"meta|value|mac_key", meta["mac_key"])
        log_floor = int(meta["log_floor"])

        matcher = Matcher(known_ids=(bytes(r[0]) for r in conn.execute("SELECT mac FROM order_ids")),
                          id_key=self.mac)
        snapshot_seq = 0
        row = conn.execute("SELECT seq, body FROM snapshots ORDER BY seq DESC LIMIT 1").fetchone()
        if row is not None:
            snapshot_seq = row[0]
            matcher.load(json.loads(self.cipher.open(_snapshot_aad(snapshot_seq), row[1]))["books"])
        last_seq = max(snapshot_seq, log_floor)
        for seq, body in conn.execute("SELECT seq, body FROM events WHERE seq > ? ORDER BY seq", (last_seq,)):
            if seq != last_seq + 1:
                raise EngineError(f"{self.path.name}: the event log jumps from seq {last_seq} to {seq}")
            event, rest = _decode_event(seq, self.cipher.open(_event_aad(seq), body))
            _replay(matcher, event, rest)
            last_seq = seq
        matcher.last_seq = last_seq
        return Loaded(matcher, snapshot_seq, log_floor)

    def write(self, batch: Iterable[BatchItem], snapshot: tuple[int, dict] | None, cutoff_seq: int | None) -> None:
        """In one durable transaction: log the batch's events, store a snapshot, drop events <= cutoff_seq."""
        conn = self._require()
        ts_ms = time.time_ns() // 1_000_000
        seal = self.cipher.seal
        macs: list[tuple[bytes]] = []
        rows: list[tuple[int, int, bytes]] = []
        for mac, events, rest in batch:
            if mac is not None:
                macs.append((mac,))
            last = len(events) - 1
            for i, ev in enumerate(events):
                rows.append((ev.seq, ts_ms, seal(_event_aad(ev.seq), _encode_event(ev, rest if i == last else None))))
        snapshot_row = None
        if snapshot is not None:
            seq, books = snapshot
            plain = json.dumps({"books": books}, separators=(",", ":")).encode()
            snapshot_row = (seq, ts_ms, seal(_snapshot_aad(seq), plain))
        with self._transaction():
            conn.executemany("INSERT INTO order_ids(mac) VALUES (?)", macs)
            conn.executemany("INSERT INTO events(seq, ts_ms, body) VALUES (?, ?, ?)", rows)
            if snapshot_row is not None:
                conn.execute("INSERT INTO snapshots(seq, ts_ms, body) VALUES (?, ?, ?)", snapshot_row)
                conn.execute("DELETE FROM snapshots WHERE seq < ?", (snapshot_row[0],))
            if cutoff_seq is not None:
                conn.execute("DELETE FROM events WHERE seq <= ?", (cutoff_seq,))
                conn.execute("UPDATE meta SET value = ? WHERE key = 'log_floor'", (str(cutoff_seq),))

    def read_events(self, after_seq: int, limit: int) -> list[Event]:
        """Logged events with seq > after_seq, in order, at most ``limit``."""
        conn = self._require()
        cur = conn.execute("SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit))
        return [_decode_event(seq, self.cipher.open(_event_aad(seq), body))[0] for seq, body in cur]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _lock(self) -> None:
        """Hold an exclusive lock beside the file: two live instances would issue the same sequence numbers."""
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EngineError(f"{self.path.name} is in use by another engine instance (another daemon?)") from None
        self._lock_fd = fd

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise EngineError("the sqlite engine's file is not open")
        return self._conn

    def _transaction(self) -> _Transaction:
        return _Transaction(self._require())


def _private_file(path: Path) -> None:
    """The file and its -wal/-shm 0600 whatever the umask (SQLite gives the WAL and SHM the file's own mode)."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        if side.exists() and not side.is_symlink():
            os.chmod(side, 0o600)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK if the block raised."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        self._conn.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _replay(matcher: Matcher, event: Event, rest: list[Any] | None) -> None:
    """Apply one logged event to the books being rebuilt."""
    book = matcher.stored_book(event.market)
    if event.kind == "fill":
        book.apply_fill(event.maker_order_id, event.qty_lots)
    elif event.kind == "done":
        book.apply_done(event.order_id)
    elif event.kind == "rested" and rest is not None:
        owner, side, price_ticks, post_only = rest
        book.restore(event.order_id, owner, side, price_ticks, event.qty_lots, post_only)
    else:
        raise EngineError(f"stored event {event.seq} has kind {event.kind!r} without its order details")
