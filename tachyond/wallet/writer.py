"""The one writer (group commit) and the transaction objects its ops get (Tx, ReadTx)."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import trio

from .. import jsonx
from ..errors import WalletAbsent, WalletLocked
from .crypto import Cipher, WalletKeys

_STOP = object()

_MISSING = object()

DIRTY = "dirty"  # writer-cache namespace of rows an op changed in the cache only; Tx.flush writes them

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
