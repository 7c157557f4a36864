"""The one writer (group commit) and the transaction objects its ops get (Tx, ReadTx)."""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import outcome
import trio

from .. import jsonx
from ..errors import ShuttingDown, WalletAbsent, WalletLocked, WriteFailed
from .crypto import Cipher, WalletKeys

log = logging.getLogger("tachyond.wallet")

_STOP = object()

_MISSING = object()

DIRTY = "dirty"  # writer-cache namespace of rows an op changed in the cache only; Tx.flush writes them

def connect(path: Path) -> sqlite3.Connection:
    """A connection to the wallet file as every user of it opens one (autocommit, a 10 s busy timeout)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


def aad(table: str, column: str, rowid: object) -> bytes:
    """Associated data binding a ciphertext to its place: a value moved elsewhere fails to decrypt."""
    return f"{table}|{column}|{rowid}".encode()

def dumps(obj: object) -> bytes:
    """Compact JSON bytes (the sealed form of every stored value)."""
    return jsonx.dumps(obj)

class _Access:
    """What reads and writes share: the connection, the keys (or WalletLocked) and sealed JSON values."""

    absent = False  # set by the wallet when no wallet exists yet, so key use says WalletAbsent, not WalletLocked

    def __init__(self, conn: sqlite3.Connection, keys: WalletKeys | None):
        self.conn = conn
        self._keys = keys

    @property
    def keys(self) -> WalletKeys:
        if self._keys is None:
            raise WalletAbsent() if self.absent else WalletLocked()
        return self._keys

    @property
    def cipher(self) -> Cipher:
        return self.keys.cipher

    def lookup(self, domain: str, value: str) -> bytes:
        """HMAC of a name for a UNIQUE lookup column (the name itself is never stored in clear)."""
        return self.keys.lookup(domain, value)

    def seal_json(self, table: str, column: str, rowid: object, obj: object) -> bytes:
        return self.cipher.seal(aad(table, column, rowid), dumps(obj))

    def open_json(self, table: str, column: str, rowid: object, blob: bytes) -> Any:
        return jsonx.loads(self.cipher.open(aad(table, column, rowid), blob))

class ReadTx(_Access):
    """A read snapshot on a reader connection (one deferred transaction per read call)."""

class Tx(_Access):
    """One operation inside the writer's transaction (its own SAVEPOINT), with an undo log for the writer's cache."""

    def __init__(self, conn: sqlite3.Connection, keys: WalletKeys | None, cache: dict):
        super().__init__(conn, keys)
        self.cache = cache
        self.now = time.time()
        self._undo: list[tuple[dict, object, object]] = []

    def cache_get(self, namespace: str, key: object, default: object = None) -> Any:
        space = self.cache.get(namespace)
        return default if space is None else space.get(key, default)

    def cache_put(self, namespace: str, key: object, value: object) -> None:
        """Set a writer-cache entry; undone if this operation's savepoint rolls back."""
        space = self.cache.get(namespace)
        if space is None:
            space = self.cache[namespace] = {}
        self._undo.append((space, key, space.get(key, _MISSING)))
        space[key] = value

    def flush(self) -> None:
        """Write what ops of this batch left in the cache for the batch's end (called before COMMIT)."""

    def rollback_cache(self) -> None:
        for space, key, old in reversed(self._undo):
            if old is _MISSING:
                space.pop(key, None)
            else:
                space[key] = old
        self._undo.clear()

class _Op:
    __slots__ = ("fn", "args", "task", "token", "keys", "absent")

    def __init__(self, fn, args, task, token, keys, absent):
        self.fn, self.args, self.task, self.token, self.keys, self.absent = fn, args, task, token, keys, absent

def _reschedule_all(pairs: list) -> None:
    for task, result in pairs:
        trio.lowlevel.reschedule(task, result)


class Writer:
    """The one writer: a thread that owns the write connection and runs queued ops in group commits.

    ``submit`` queues op(tx, *args) from a trio task; the thread takes every queued op, runs them in one
    ``BEGIN IMMEDIATE … COMMIT``, each in its own SAVEPOINT so one failing op rolls back alone, and wakes each
    caller only after COMMIT returned (one fsync per batch)."""

    def __init__(self) -> None:
        self.tx_factory: Callable[..., Tx] = Tx  # what ops get as ``tx``: Tx, or a domain's subclass (LedgerTx)
        self.stats = {"transactions": 0, "ops": 0, "max_batch": 0}
        self.closing = False
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._cache: dict = {}
        self._cache_keys: WalletKeys | None = None
        self._submit_lock = threading.Lock()

    @property
    def running(self) -> bool:
        """Started and not yet stopped (it may be closing)."""
        return self._thread is not None

    def alive(self) -> bool:
        """The writer thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, conn: sqlite3.Connection) -> None:
        """Run the writer thread on ``conn`` (the thread owns it and closes it when it ends)."""
        if self._thread is not None:
            raise RuntimeError("the wallet writer already runs")
        self.closing = False
        self._thread = threading.Thread(target=self._main, args=(conn,), name="tachyond-wallet-writer", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Finish the queued ops, then end the thread; ops submitted from the start of ``stop`` raise
        ShuttingDown. Once it returns the writer is stopped and may be started again."""
        if self._thread is None or self.closing:
            return
        with self._submit_lock:
            self.closing = True
            self._queue.put(_STOP)
        await trio.to_thread.run_sync(self._thread.join)
        self._thread = None
        self.closing = False

    async def submit(self, fn: Callable[..., Any], args: tuple, keys: WalletKeys | None, absent: bool) -> Any:
        """Queue fn(tx, *args) for the next group commit; returns (or raises) only after COMMIT is durable."""
        op = _Op(fn, args, trio.lowlevel.current_task(), trio.lowlevel.current_trio_token(), keys, absent)
        # Checked and queued under one lock with stop(), so no op can land behind the writer's stop
        # marker (it would wait forever: waiting for the answer is not cancellable).
        with self._submit_lock:
            if self._thread is None or self.closing:
                raise ShuttingDown()
            self._queue.put(op)
        # Once queued the op will run; like trio.to_thread.run_sync, waiting for its answer is not cancellable.
        return await trio.lowlevel.wait_task_rescheduled(lambda _raise_cancel: trio.lowlevel.Abort.FAILED)

    def _main(self, conn: sqlite3.Connection) -> None:
        try:
            stop = False
            while not stop:
                batch = [self._queue.get()]
                if batch[0] is _STOP:
                    break
                while True:
                    try:
                        op = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if op is _STOP:
                        stop = True
                        break
                    batch.append(op)
                self._deliver(batch, self._run_batch(conn, batch))
        finally:
            self._cache.clear()
            conn.close()
            leftover = []
            while True:  # defence in depth: nothing queued is ever left waiting
                try:
                    op = self._queue.get_nowait()
                except queue.Empty:
                    break
                if op is not _STOP:
                    leftover.append(op)
            self._deliver(leftover, [outcome.Error(ShuttingDown()) for _ in leftover])

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Op]) -> list[outcome.Outcome]:
        """One transaction for the whole batch; if SQLite itself fails, every op fails and nothing is written."""
        try:
            return self._run_batch_ops(conn, batch)
        except BaseException as exc:  # the writer thread must survive to answer everyone
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the connection is beyond use for this batch; the next BEGIN reports it
            self._cache.clear()
            log.error("write failed, nothing was written (%d operations refused): %s", len(batch), exc)
            return [outcome.Error(WriteFailed(f"write failed, nothing was written: {exc}")) for _ in batch]

    def _run_batch_ops(self, conn: sqlite3.Connection, batch: list[_Op]) -> list[outcome.Outcome]:
        execute, cache, factory = conn.cursor().execute, self._cache, self.tx_factory  # one cursor for the batch
        execute("BEGIN IMMEDIATE")
        results: list[outcome.Outcome] = []
        append = results.append
        for op in batch:
            if op.keys is not self._cache_keys:
                self._flush(conn)
                cache.clear()
                self._cache_keys = op.keys
            tx = factory(conn, op.keys, cache)
            tx.absent = op.absent
            execute("SAVEPOINT op")
            try:
                value = op.fn(tx, *op.args)
            except BaseException as exc:  # the op's own failure goes to its caller; the batch goes on
                execute("ROLLBACK TO op")
                execute("RELEASE op")
                tx.rollback_cache()
                append(outcome.Error(exc))
            else:
                execute("RELEASE op")
                append(outcome.Value(value))
        self._flush(conn)
        execute("COMMIT")
        self.stats["transactions"] += 1
        self.stats["ops"] += len(batch)
        self.stats["max_batch"] = max(self.stats["max_batch"], len(batch))
        return results

    def _flush(self, conn: sqlite3.Connection) -> None:
        """Deferred writes of the ops so far (e.g. balance rows touched many times), in the batch's transaction."""
        if self._cache.get(DIRTY):
            self.tx_factory(conn, self._cache_keys, self._cache).flush()

    @staticmethod
    def _deliver(batch: list[_Op], results: list[outcome.Outcome]) -> None:
        by_token: dict = {}
        for op, result in zip(batch, results, strict=False):
            by_token.setdefault(op.token, []).append((op.task, result))
        for token, pairs in by_token.items():
            try:
                token.run_sync_soon(_reschedule_all, pairs)
            except trio.RunFinishedError:
                pass  # the caller's trio run is gone; nobody is waiting for the answer

