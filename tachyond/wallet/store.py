"""The wallet file: one SQLite DB with envelope encryption, its lifecycle, and one writer thread with group commit."""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable

import outcome
import trio

from ..errors import (Conflict, InvalidParams, ShuttingDown, WalletAbsent, WalletExists, WalletLocked, WriteFailed,
                      WrongPassword)
from . import crypto
from .crypto import Cipher, WalletKeys

log = logging.getLogger("tachyond.wallet")

WALLET_FILE = "wallet.db"
SCHEMA_VERSION = 1
MAX_UNLOCK_TIMEOUT_S = 10**8
WRONG_PASSWORD_BASE_DELAY_S = 0.25
WRONG_PASSWORD_MAX_DELAY_S = 8.0
_STOP = object()
_MISSING = object()
DIRTY = "dirty"  # writer-cache namespace of rows an op changed in the cache only; Tx.flush writes them

CORE_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS schema_modules (name TEXT PRIMARY KEY, applied INTEGER NOT NULL)",
]


def wrong_password_delay_s(failures: int) -> float:
    """Delay before answering the n-th consecutive wrong password: 0.25 s doubling per failure, capped at 8 s."""
    if failures <= 0:
        return 0.0
    return min(WRONG_PASSWORD_MAX_DELAY_S, WRONG_PASSWORD_BASE_DELAY_S * 2 ** (failures - 1))


def aad(table: str, column: str, rowid: object) -> bytes:
    """Associated data binding a ciphertext to its place: a value moved elsewhere fails to decrypt."""
    return f"{table}|{column}|{rowid}".encode()


def _make_compact_encoder() -> Callable[[object], str]:
    """One reusable C encoder (json.dumps builds a new encoder per call); same output as dumps(separators=",:")."""
    reference = json.JSONEncoder(separators=(",", ":"))
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return reference.encode
    try:  # markers=None: no circular check (our values are trees), so one encoder is safe in every thread
        c_encoder = make(None, reference.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False,
                         True)
        probe = {"a": [1, -2.5, None, True, "\u00e9\n\x00"], "b": {}}
        if "".join(c_encoder(probe, 0)) != reference.encode(probe):
            return reference.encode
    except TypeError:
        return reference.encode
    return lambda obj: "".join(c_encoder(obj, 0))


_encode_compact = _make_compact_encoder()


def dumps(obj: object) -> bytes:
    """Compact JSON bytes (the sealed form of every stored value)."""
    if isinstance(obj, str):  # the C encoder only takes containers and scalars nested in them
        return json.dumps(obj, separators=(",", ":")).encode()
    return _encode_compact(obj).encode()


class UnlockTimer:
    """Relocks after an unlock's timeout; pure trio (no threads) so tests drive it with a mock clock."""

    def __init__(self) -> None:
        self._deadline = math.inf
        self._changed = trio.Event()

    @property
    def deadline(self) -> float:
        """trio-clock time of the next expiry, inf when disarmed."""
        return self._deadline

    def arm(self, timeout_s: float) -> None:
        self._deadline = trio.current_time() + timeout_s
        self._changed.set()

    def disarm(self) -> None:
        self._deadline = math.inf
        self._changed.set()

    async def run(self, on_expire: Callable[[], object]) -> None:
        """Call on_expire each time an armed deadline passes without a re-arm; runs until cancelled."""
        while True:
            changed = self._changed
            with trio.move_on_at(self._deadline):
                await changed.wait()
            if changed.is_set():
                self._changed = trio.Event()
                continue
            self._deadline = math.inf
            on_expire()


def _probe(rtx: "ReadTx") -> None:
    rtx.conn.execute("SELECT count(*) FROM meta").fetchone()


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
        return json.loads(self.cipher.open(aad(table, column, rowid), blob))


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


class Wallet:
    """The encrypted wallet file: lifecycle (create, unlock, lock, change password, backup) and the one writer."""

    def __init__(self, data_dir: Path, *, scrypt_n: int = crypto.DEFAULT_SCRYPT_N):
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / WALLET_FILE
        self.scrypt_n = scrypt_n
        self.tx_factory: Callable[..., Tx] = Tx
        self.timer = UnlockTimer()
        self.stats = {"transactions": 0, "ops": 0, "max_batch": 0}
        self.failed_unlocks = 0
        self._schemas: dict[str, list[str]] = {}
        self._create_hooks: list[Callable[[Tx], object]] = []
        self._meta: dict[str, bytes] = {}
        self._keys: WalletKeys | None = None
        self._unlocked_until: float | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._readers: list[sqlite3.Connection] = []
        self._unlock_lock = trio.Lock()
        self._cache: dict = {}
        self._cache_keys: WalletKeys | None = None
        self._closing = False
        self._submit_lock = threading.Lock()

    # ----- extension points (call before start) -----
    def add_schema(self, name: str, statements: list[str]) -> None:
        """Register a module's DDL; applied at start, append-only: later statements are migrations."""
        if self._thread is not None:
            raise RuntimeError("add_schema must be called before the wallet store starts")
        known = self._schemas.get(name)
        if known is not None and known != list(statements):
            raise ValueError(f"schema {name!r} registered twice with different statements")
        self._schemas[name] = list(statements)

    def add_create_hook(self, fn: Callable[[Tx], object]) -> None:
        """fn(tx) runs inside the transaction that creates the wallet (e.g. the ledger's `default` account)."""
        self._create_hooks.append(fn)

    # ----- state -----
    @property
    def state(self) -> str:
        if self._thread is None:
            return "locked" if self.path.exists() else "absent"
        if "wrapped_key" not in self._meta:
            return "absent"
        return "unlocked" if self._current_keys() is not None else "locked"

    @property
    def public_id(self) -> str | None:
        value = self._meta.get("wallet_id")
        return value.decode() if value else None

    @property
    def public_key(self) -> str | None:
        """The X25519 public key (hex) that seal_to_wallet encrypts to."""
        value = self._meta.get("public_key")
        return value.hex() if value else None

    @property
    def unlocked_until(self) -> float | None:
        self._current_keys()
        return self._unlocked_until

    @property
    def cipher(self) -> Cipher:
        return self._require_keys().cipher

    @property
    def keys(self) -> WalletKeys:
        return self._require_keys()

    def _require_keys(self) -> WalletKeys:
        self._require_present()
        keys = self._current_keys()
        if keys is None:
            raise WalletLocked()
        return keys

    def _require_present(self) -> None:
        self._require_started()
        if "wrapped_key" not in self._meta:
            raise WalletAbsent()

    def _require_started(self) -> None:
        if self._thread is None or self._closing:
            raise ShuttingDown() if self._closing else RuntimeError("wallet store is not started")

    def _current_keys(self) -> WalletKeys | None:
        """The keys, dropping them first if the unlock timeout passed (even when no timer task runs)."""
        if self._unlocked_until is not None and time.time() >= self._unlocked_until:
            self._drop_keys()
        return self._keys

    def _drop_keys(self) -> None:
        self._keys = None
        self._unlocked_until = None
        self.timer.disarm()

    # ----- open / close -----
    async def start(self) -> None:
        """Open (creating if needed) data_dir/wallet.db, apply schemas, start the writer thread."""
        if self._thread is not None:
            raise RuntimeError("wallet store already started")
        conn = await trio.to_thread.run_sync(self._open_sync)
        self._closing = False
        self._thread = threading.Thread(target=self._writer_main, args=(conn,), name="tachyond-wallet-writer",
                                        daemon=True)
        self._thread.start()

    async def aclose(self) -> None:
        """Finish queued writes, stop the writer, close every connection, drop the keys."""
        if self._thread is None or self._closing:
            return
        with self._submit_lock:
            self._closing = True
            self._queue.put(_STOP)
        await trio.to_thread.run_sync(self._thread.join)
        while self._readers:
            self._readers.pop().close()
        self._drop_keys()
        self._thread = None
        self._closing = False

    async def __aenter__(self) -> "Wallet":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        with trio.CancelScope(shield=True):
            await self.aclose()

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run the store for the daemon: start, relock on timeout until cancelled, then close."""
        await self.start()
        try:
            task_status.started()
            await self.timer.run(self._drop_keys)
        finally:
            with trio.CancelScope(shield=True):
                await self.aclose()

    async def run_relock_timer(self) -> None:
        """Drop the keys when an unlock timeout passes (runs until cancelled)."""
        await self.timer.run(self._drop_keys)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        return conn

    def _open_sync(self) -> sqlite3.Connection:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        conn = self._connect()
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in CORE_SCHEMA:
                conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION).encode(),))
            for name, statements in self._schemas.items():
                row = conn.execute("SELECT applied FROM schema_modules WHERE name = ?", (name,)).fetchone()
                applied = row[0] if row else 0
                for statement in statements[applied:]:
                    conn.execute(statement)
                conn.execute("INSERT OR REPLACE INTO schema_modules VALUES (?, ?)", (name, len(statements)))
            conn.execute("COMMIT")
            self._meta = {k: bytes(v) for k, v in conn.execute("SELECT key, value FROM meta")}
        except BaseException:
            conn.close()
            raise
        return conn

    # ----- the writer -----
    async def write(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn(tx, *args) in the next group commit; returns (or raises) only after COMMIT is durable."""
        self._require_started()
        return await self._submit(fn, args, self._current_keys())

    async def _submit(self, fn, args, keys) -> Any:
        op = _Op(fn, args, trio.lowlevel.current_task(), trio.lowlevel.current_trio_token(), keys,
                 keys is None and "wrapped_key" not in self._meta)
        # Checked and queued under one lock with aclose(), so no op can land behind the writer's stop
        # marker (it would wait forever: waiting for the answer is not cancellable).
        with self._submit_lock:
            if self._thread is None or self._closing:
                raise ShuttingDown()
            self._queue.put(op)
        # Once queued the op will run; like trio.to_thread.run_sync, waiting for its answer is not cancellable.
        return await trio.lowlevel.wait_task_rescheduled(lambda _raise_cancel: trio.lowlevel.Abort.FAILED)

    def _writer_main(self, conn: sqlite3.Connection) -> None:
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
        for op, result in zip(batch, results):
            by_token.setdefault(op.token, []).append((op.task, result))
        for token, pairs in by_token.items():
            try:
                token.run_sync_soon(_reschedule_all, pairs)
            except trio.RunFinishedError:
                pass  # the caller's trio run is gone; nobody is waiting for the answer

    async def health(self) -> dict[str, str]:
        """``{}`` when the database answers: its file is in place, the writer thread runs and a read succeeds."""
        if not self.path.exists():
            return {"db": f"{self.path} is missing"}
        if self._thread is None or not self._thread.is_alive():
            return {"db": "the wallet database writer is not running"}
        try:
            await self.read(_probe)
        except Exception as exc:
            return {"db": f"{self.path} does not answer a read: {type(exc).__name__}: {exc}"}
        return {}

    # ----- readers -----
    async def read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn(rtx, *args) on a reader connection in a worker thread, in one consistent snapshot."""
        self._require_started()
        keys = self._current_keys()
        absent = keys is None and "wrapped_key" not in self._meta
        return await trio.to_thread.run_sync(self._read_sync, fn, args, keys, absent)

    def _read_sync(self, fn, args, keys, absent):
        try:
            conn = self._readers.pop()
        except IndexError:
            conn = self._connect()
            conn.execute("PRAGMA query_only = ON")
        try:
            conn.execute("BEGIN")
            try:
                rtx = ReadTx(conn, keys)
                rtx.absent = absent
                return fn(rtx, *args)
            finally:
                conn.execute("ROLLBACK")
        finally:
            self._readers.append(conn)

    # ----- lifecycle -----
    async def create(self, password: str) -> dict:
        """Create the wallet's keys (wallet left unlocked, no timeout); WalletExists if one exists."""
        self._require_started()
        _check_password(password)
        if "wrapped_key" in self._meta:
            raise WalletExists("a wallet already exists in this data_dir")
        data_key = secrets.token_bytes(crypto.KEY_BYTES)
        private_raw, public_raw = crypto.new_private_key()
        wallet_id = "tw_" + secrets.token_hex(12)
        kdf, wrapped = await trio.to_thread.run_sync(self._wrap_sync, password, data_key, wallet_id)
        keys = WalletKeys(data_key, private_raw)
        meta = {
            "wallet_id": wallet_id.encode(), "public_key": public_raw, "kdf": kdf, "wrapped_key": wrapped,
            "private_key": keys.cipher.seal(aad("meta", "value", "private_key"), private_raw),
            "created_at": str(time.time()).encode(),
        }
        await self._submit(self._create_op, (meta,), keys)
        self._meta.update(meta)
        self._keys = keys
        self._unlocked_until = None
        self.failed_unlocks = 0
        return {"created": True, "public_id": wallet_id}

    def _create_op(self, tx: Tx, meta: dict) -> None:
        if tx.conn.execute("SELECT 1 FROM meta WHERE key = 'wrapped_key'").fetchone():
            raise WalletExists("a wallet already exists in this data_dir")
        tx.conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        for hook in self._create_hooks:
            hook(tx)

    def _wrap_sync(self, password: str, data_key: bytes, wallet_id: str) -> tuple[bytes, bytes]:
        salt = secrets.token_bytes(crypto.SALT_BYTES)
        kdf = {"alg": "scrypt", "salt": salt.hex(), "n": self.scrypt_n, "r": crypto.SCRYPT_R, "p": crypto.SCRYPT_P}
        kek = crypto.derive_password_key(password, salt, self.scrypt_n)
        return dumps(kdf), crypto.wrap_key(kek, data_key, _key_aad(wallet_id))

    def _unwrap_sync(self, password: str) -> WalletKeys | None:
        kdf = json.loads(self._meta["kdf"])
        kek = crypto.derive_password_key(password, bytes.fromhex(kdf["salt"]), kdf["n"], kdf["r"], kdf["p"])
        data_key = crypto.unwrap_key(kek, self._meta["wrapped_key"], _key_aad(self.public_id))
        if data_key is None:
            return None
        cipher = Cipher(data_key)
        private_raw = cipher.open(aad("meta", "value", "private_key"), self._meta["private_key"])
        return WalletKeys(data_key, private_raw)

    async def _check_password(self, password: str) -> WalletKeys:
        """Derive and unwrap; on a wrong password wait longer each consecutive time, then raise WrongPassword."""
        _check_password(password)
        keys = await trio.to_thread.run_sync(self._unwrap_sync, password)
        if keys is None:
            self.failed_unlocks += 1
            await trio.sleep(wrong_password_delay_s(self.failed_unlocks))
            raise WrongPassword("wrong password")
        self.failed_unlocks = 0
        return keys

    async def unlock(self, password: str, timeout_s: float | None = None) -> dict:
        """Unlock for timeout_s seconds (0/None: until lock()); a new unlock replaces the previous timeout."""
        self._require_present()
        timeout_s = _check_timeout(timeout_s)
        async with self._unlock_lock:  # attempts are serialised so the wrong-password delay cannot be bypassed
            keys = await self._check_password(password)
            self._keys = keys
            if timeout_s is None:
                self._unlocked_until = None
                self.timer.disarm()
            else:
                self._unlocked_until = time.time() + timeout_s
                self.timer.arm(timeout_s)
        result: dict = {"unlocked": True}
        if self._unlocked_until is not None:
            result["until"] = self._unlocked_until
        return result

    async def lock(self) -> dict:
        """Drop the data key (and, at the writer's next batch, its decrypted cache)."""
        self._require_present()
        self._drop_keys()
        return {"locked": True}

    async def change_password(self, old_password: str, new_password: str) -> dict:
        """Rewrap the data key under a key derived from the new password; nothing else changes."""
        self._require_present()
        _check_password(new_password)
        async with self._unlock_lock:
            keys = await self._check_password(old_password)
            kdf, wrapped = await trio.to_thread.run_sync(self._wrap_sync, new_password, keys.data_key,
                                                         self.public_id)
            await self._submit(self._store_meta_op, ({"kdf": kdf, "wrapped_key": wrapped},), keys)
            self._meta.update(kdf=kdf, wrapped_key=wrapped)
        return {"changed": True}

    @staticmethod
    def _store_meta_op(tx: Tx, items: dict) -> None:
        tx.conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", items.items())

    async def backup(self, path: str | os.PathLike) -> dict:
        """Copy the (still encrypted) wallet with SQLite's online backup while running -> {path, bytes}."""
        self._require_present()
        dest = Path(path)
        return await trio.to_thread.run_sync(self._backup_sync, dest)

    def _backup_sync(self, dest: Path) -> dict:
        try:
            fd = os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            raise Conflict(f"backup destination {dest} already exists") from None
        except OSError as exc:
            raise InvalidParams(f"cannot create backup file {dest}: {exc.strerror}") from None
        os.close(fd)
        src = self._connect()
        dst = sqlite3.connect(dest, isolation_level=None)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        finally:
            dst.close()
            src.close()
        return {"path": str(dest), "bytes": dest.stat().st_size}

    # ----- sealing to the wallet -----
    def seal_to_wallet(self, plaintext: bytes) -> bytes:
        """Encrypt to this wallet's X25519 public key; needs no password, so it works while locked."""
        self._require_present()
        return crypto.seal_to_public(self._meta["public_key"], plaintext)

    def open_sealed(self, blob: bytes) -> bytes:
        """Open a blob from seal_to_wallet (needs the wallet unlocked)."""
        return crypto.open_sealed_with(self._require_keys().private_raw, blob)


def _key_aad(wallet_id: str | None) -> bytes:
    return b"tachyon data key v1|" + (wallet_id or "").encode()


def _check_password(password: object) -> None:
    if not isinstance(password, str) or not password:
        raise InvalidParams("password must be a non-empty string")


def _check_timeout(timeout_s: object) -> float | None:
    if timeout_s is None:
        return None
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not math.isfinite(timeout_s) \
            or timeout_s < 0:
        raise InvalidParams("timeout_s must be a non-negative number of seconds")
    if timeout_s == 0:
        return None
    return float(min(timeout_s, MAX_UNLOCK_TIMEOUT_S))
