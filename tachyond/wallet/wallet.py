"""The wallet file: one SQLite DB with envelope encryption, its lifecycle and readers; writes go through its Writer."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import secrets
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from ..errors import (
    Conflict,
    IntegrityError,
    InvalidParams,
    ShuttingDown,
    WalletAbsent,
    WalletExists,
    WalletLocked,
    WrongPassword,
)
from ..runtime.hardening import make_private_dir, private_sqlite_file
from . import crypto
from .crypto import Cipher, WalletKeys
from .writer import ReadTx, Tx, Writer, aad, dumps

WALLET_FILE = "wallet.db"
KDF_VERSION = 2
INSECURE_TEST_SCRYPT_ENV = "TACHYOND_INSECURE_TEST_SCRYPT_N"  # the test suite's override; never in production
SCHEMA_VERSION = 1
MAX_UNLOCK_TIMEOUT_S = 10**8
WRONG_PASSWORD_BASE_DELAY_S = 0.25
WRONG_PASSWORD_MAX_DELAY_S = 8.0

CORE_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS schema_modules (name TEXT PRIMARY KEY, applied INTEGER NOT NULL)",
]


def wrong_password_delay_s(failures: int) -> float:
    """Delay before answering the n-th consecutive wrong password: 0.25 s doubling per failure, capped at 8 s."""
    if failures <= 0:
        return 0.0
    return min(WRONG_PASSWORD_MAX_DELAY_S, WRONG_PASSWORD_BASE_DELAY_S * 2 ** (failures - 1))


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


def _probe(rtx: ReadTx) -> None:
    rtx.conn.execute("SELECT count(*) FROM meta").fetchone()


class Wallet:
    """The encrypted wallet file: lifecycle (create, unlock, lock, change password, backup) and the one writer."""

    def __init__(self, data_dir: Path, *, scrypt_n: int = crypto.DEFAULT_SCRYPT_N):
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / WALLET_FILE
        self.scrypt_n = scrypt_n
        self.writer = Writer()
        self.timer = UnlockTimer()
        self.failed_unlocks = 0
        self._schemas: dict[str, list[str]] = {}
        self._create_hooks: list[Callable[[Tx], object]] = []
        self._lock_listeners: list[Callable[[], Awaitable[object]]] = []
        self._rekey_specs: dict[str, dict[str, tuple[str, ...]]] = {}
        self._rekey_hooks: list[Callable[[Tx, WalletKeys, WalletKeys], object]] = []
        self._rotate_listeners: list[Callable[[Cipher, Cipher], Awaitable[object]]] = []
        self._keys_dropped = trio.Event()
        self._meta: dict[str, bytes] = {}
        self._keys: WalletKeys | None = None
        self._unlocked_until: float | None = None
        self._readers: list[sqlite3.Connection] = []
        self._unlock_lock = trio.Lock()
        self._closed = False  # stopped after a start: a late caller (a service task at a stop) is ShuttingDown
        self.migration_backup: Path | None = None  # the copy taken before the last migration, if one ran

    # ----- extension points (call before start) -----
    def add_schema(self, name: str, statements: list[str]) -> None:
        """Register a module's DDL; applied at start, append-only: later statements are migrations."""
        if self.writer.running:
            raise RuntimeError("add_schema must be called before the wallet store starts")
        known = self._schemas.get(name)
        if known is not None and known != list(statements):
            raise ValueError(f"schema {name!r} registered twice with different statements")
        self._schemas[name] = list(statements)

    def add_lock_listener(self, fn: Callable[[], Awaitable[object]]) -> None:
        """``await fn()`` after every lock (wallet.lock, the unlock timeout): holders of key material drop it."""
        self._lock_listeners.append(fn)

    def add_rekey(self, table: str, *, sealed: tuple[str, ...] = (), lookups: tuple[str, ...] = (),
                  to_wallet: tuple[str, ...] = ()) -> None:
        """Declare what a data-key rotation re-encrypts in ``table`` (rows keyed by ``id``): ``sealed`` columns
        (sealed with aad(table, column, id)), ``lookups`` (HMAC lookup columns) and ``to_wallet`` columns
        (seal_to_wallet blobs). A module that stores anything under the data key must declare it."""
        self._rekey_specs[table] = {"sealed": tuple(sealed), "lookups": tuple(lookups), "to_wallet": tuple(to_wallet)}

    def add_rekey_hook(self, fn: Callable[[Tx, WalletKeys, WalletKeys], object]) -> None:
        """fn(tx, old_keys, new_keys) runs in the rotation's transaction after the declared tables (e.g. to
        recompute MACs made with a key derived from the data key)."""
        self._rekey_hooks.append(fn)

    def add_rotate_listener(self, fn: Callable[[Cipher, Cipher], Awaitable[object]]) -> None:
        """``await fn(new_cipher, previous_cipher)`` after a rotation committed: holders of files under the
        previous key re-encrypt them (the SQLite engine); False means "not yet" (its files are not open: it
        will be called again at the next unlock). The previous key is forgotten once none says False."""
        self._rotate_listeners.append(fn)

    def add_create_hook(self, fn: Callable[[Tx], object]) -> None:
        """fn(tx) runs inside the transaction that creates the wallet (e.g. the ledger's `default` account)."""
        self._create_hooks.append(fn)

    # ----- state -----
    @property
    def state(self) -> str:
        if not self.writer.running:
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
        if not self.writer.running or self.writer.closing:
            # Closing or closed after a start: the daemon is stopping, and a service task that meets it ends
            # quietly; never started: a programming error.
            raise ShuttingDown() if self.writer.closing or self._closed else RuntimeError("wallet store is not started")

    def _current_keys(self) -> WalletKeys | None:
        """The keys, dropping them first if the unlock timeout passed (even when no timer task runs)."""
        if self._unlocked_until is not None and time.time() >= self._unlocked_until:
            self._drop_keys()
        return self._keys

    def _drop_keys(self) -> None:
        had_keys = self._keys is not None
        self._keys = None
        self._unlocked_until = None
        self.timer.disarm()
        if had_keys:
            self._keys_dropped.set()  # serve() then tells the other holders (the writer's cache, engines)

    async def _after_drop(self) -> None:
        """Make every other holder drop the key: the writer's cache and last batch, then the lock listeners."""
        if self._keys is not None:
            return  # unlocked again meanwhile: the holders keep serving
        try:
            # A no-op with no keys: the writer flushes and clears its decrypted cache and forgets the
            # previous keys (Tx, the last batch's ops), exactly as it does when keys change between ops.
            await self._submit(_forget_keys_op, (), None)
        except ShuttingDown:
            pass
        for listener in self._lock_listeners:
            if self._keys is not None:
                return
            await listener()

    async def _serve_lock_listeners(self) -> None:
        while True:
            await self._keys_dropped.wait()
            self._keys_dropped = trio.Event()
            await self._after_drop()

    # ----- open / close -----
    async def start(self) -> None:
        """Open (creating if needed) data_dir/wallet.db, apply schemas, start the writer thread."""
        if self.writer.running:
            raise RuntimeError("wallet store already started")
        conn = await trio.to_thread.run_sync(self._open_sync)
        self._closed = False
        self.writer.start(conn)

    async def aclose(self) -> None:
        """Finish queued writes, stop the writer, close every connection, drop the keys."""
        if not self.writer.running or self.writer.closing:
            return
        await self.writer.stop()
        while self._readers:
            self._readers.pop().close()
        self._drop_keys()
        self._closed = True

    async def __aenter__(self) -> Wallet:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        with trio.CancelScope(shield=True):
            await self.aclose()

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run the store for the daemon: start, relock on timeout until cancelled, then close."""
        await self.start()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._serve_lock_listeners)
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
        make_private_dir(self.data_dir)
        existed = self.path.exists() and self.path.stat().st_size > 0
        private_sqlite_file(self.path)
        conn = self._connect()
        if existed:
            self.migration_backup = self._backup_before_migration(conn)
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

    def pending_migrations(self, conn: sqlite3.Connection) -> dict[str, tuple[int, int]]:
        """{module: (statements applied, statements known)} for every module this file is behind on."""
        try:
            applied = dict(conn.execute("SELECT name, applied FROM schema_modules"))
        except sqlite3.OperationalError:  # no schema yet: a file this code never opened
            return {}
        return {name: (applied.get(name, 0), len(st)) for name, st in self._schemas.items()
                if applied.get(name, 0) < len(st)}

    def _backup_before_migration(self, conn: sqlite3.Connection) -> Path | None:
        """Before a migration changes an existing wallet file, copy it (still encrypted) beside it:
        ``wallet.db.pre-migration-<UTC time>.bak``, 0600, one self-contained file. None when none is due."""
        pending = self.pending_migrations(conn)
        try:
            has_modules = conn.execute("SELECT count(*) FROM schema_modules WHERE applied > 0").fetchone()[0] > 0
        except sqlite3.OperationalError:
            has_modules = False
        if not pending or not has_modules:  # nothing a module wrote yet (a bare wallet): nothing to migrate
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        # Like wallet.backup: the name is claimed by O_EXCL|O_NOFOLLOW (a name taken by anything, a dangling
        # symlink included, is skipped, never followed or overwritten) and the copy is written only through
        # that descriptor, then synced before the migration may change the original.
        for n in range(1, 1000):
            dest = self.path.with_name(f"{self.path.name}.pre-migration-{stamp}{'' if n == 1 else f'-{n}'}.bak")
            try:
                fd = os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                break
            except FileExistsError:
                continue
        else:
            raise OSError(errno.EEXIST, "no free name for the pre-migration backup", str(dest))
        self._fill_backup(fd, dest)
        what = ", ".join(f"{name} {have}->{want}" for name, (have, want) in sorted(pending.items()))
        logging.getLogger("tachyond.wallet").warning("wallet schema migration (%s): the file as it was is "
                                                     "copied to %s", what, dest)
        return dest

    # ----- the writer -----
    async def write(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn(tx, *args) in the next group commit; returns (or raises) only after COMMIT is durable."""
        self._require_started()
        return await self._submit(fn, args, self._current_keys())

    async def _submit(self, fn: Callable[..., Any], args: tuple, keys: WalletKeys | None) -> Any:
        return await self.writer.submit(fn, args, keys, keys is None and "wrapped_key" not in self._meta)

    @property
    def tx_factory(self) -> Callable[..., Tx]:
        """What ops get as ``tx``: Tx, or a domain's subclass (the ledger sets LedgerTx)."""
        return self.writer.tx_factory

    @tx_factory.setter
    def tx_factory(self, factory: Callable[..., Tx]) -> None:
        self.writer.tx_factory = factory

    @property
    def stats(self) -> dict[str, int]:
        """The writer's counters: transactions (group commits), ops, max_batch."""
        return self.writer.stats

    async def health(self) -> dict[str, str]:
        """``{}`` when the database answers: its file is in place, the writer thread runs and a read succeeds."""
        if not self.path.exists():
            return {"db": f"{self.path} is missing"}
        if not self.writer.alive():
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
        kdf = dumps({"alg": "scrypt", "v": KDF_VERSION, "salt": salt.hex(), "n": self.scrypt_n, "r": crypto.SCRYPT_R,
                     "p": crypto.SCRYPT_P})
        kek = crypto.derive_password_key(password, salt, self.scrypt_n)
        return kdf, crypto.wrap_key(kek, data_key, _key_aad(wallet_id, kdf))

    def _unwrap_sync(self, password: str) -> WalletKeys | None:
        kdf_raw = self._meta["kdf"]
        kdf = _check_kdf(kdf_raw)
        kek = crypto.derive_password_key(password, bytes.fromhex(kdf["salt"]), kdf["n"], kdf["r"], kdf["p"])
        # v2 binds the exact stored parameters into the key wrap: a file whose cost was lowered by whoever
        # could write it no longer unwraps, so the weaker derivation is never trusted. v1 (older wallets)
        # bound only the wallet id; the next password change rewrites it as v2.
        wrap_aad = _key_aad(self.public_id, kdf_raw if kdf.get("v") == KDF_VERSION else None)
        data_key = crypto.unwrap_key(kek, self._meta["wrapped_key"], wrap_aad)
        if data_key is None:
            return None
        cipher = Cipher(data_key)
        private_raw = cipher.open(aad("meta", "value", "private_key"), self._meta["private_key"])
        chain: tuple[bytes, ...] = ()
        if "lookup_chain" in self._meta:
            chain = tuple(bytes.fromhex(k) for k in
                          json.loads(cipher.open(aad("meta", "value", "lookup_chain"), self._meta["lookup_chain"])))
        keys = WalletKeys(data_key, private_raw, chain)
        if "rotating_from" in self._meta:
            keys.rotating_from = cipher.open(aad("meta", "value", "rotating_from"), self._meta["rotating_from"])
        if crypto.public_from_private(private_raw) != self._meta.get("public_key"):
            # Webhooks are sealed to meta.public_key while locked: a swapped one would send them to someone else.
            raise IntegrityError("the wallet's stored public key does not match its private key: the wallet file "
                                 "was altered (inbox events sealed to it could not be opened by this wallet)")
        return keys

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
        """Drop the data key; returns once the writer's cache and every lock listener (engines) dropped theirs."""
        self._require_present()
        self._drop_keys()
        self._keys_dropped = trio.Event()  # handled here, not again by serve()
        await self._after_drop()
        return {"locked": True}

    async def change_password(self, old_password: str, new_password: str, rotate_data_key: bool = False) -> dict:
        """Rewrap the data key under a key derived from the new password; with rotate_data_key, first replace
        the data key (and the X25519 key) and re-encrypt everything under the new one."""
        self._require_present()
        _check_password(new_password)
        if not isinstance(rotate_data_key, bool):
            raise InvalidParams("rotate_data_key must be true or false", data={"param": "rotate_data_key"})
        async with self._unlock_lock:
            keys = await self._check_password(old_password)
            if rotate_data_key:
                await self._rotate(keys, new_password)
                return {"changed": True, "rotated": True}
            kdf, wrapped = await trio.to_thread.run_sync(self._wrap_sync, new_password, keys.data_key,  # type: ignore[arg-type]  # an open wallet has its public id
                                                         self.public_id)
            await self._submit(self._store_meta_op, ({"kdf": kdf, "wrapped_key": wrapped},), keys)
            self._meta.update(kdf=kdf, wrapped_key=wrapped)
        return {"changed": True}

    async def _rotate(self, old: WalletKeys, new_password: str) -> None:
        """A new data key and X25519 key; every declared table, the meta and the inbox re-encrypted in one
        transaction; then the rotate listeners (engine files); then the old key is forgotten.

        While the rotation transaction runs the wallet reads as locked: an operation queued behind it with
        the old keys would write old-key data into a re-encrypted file. Crash-safe: the old data key stays
        in meta (sealed under the new one) until every listener re-encrypted its files; an unlock before
        that hands it to them again (``rotation_pending``)."""
        data_key = secrets.token_bytes(crypto.KEY_BYTES)
        private_raw, public_raw = crypto.new_private_key()
        new = WalletKeys(data_key, private_raw, old.lookup_chain())
        kdf, wrapped = await trio.to_thread.run_sync(self._wrap_sync, new_password, data_key, self.public_id)  # type: ignore[arg-type]  # an open wallet has its public id
        seal = new.cipher.seal
        meta = {"kdf": kdf, "wrapped_key": wrapped, "public_key": public_raw,
                "private_key": seal(aad("meta", "value", "private_key"), private_raw),
                "lookup_chain": seal(aad("meta", "value", "lookup_chain"),
                                     dumps([k.hex() for k in new.previous_lookup_keys])),
                "rotating_from": seal(aad("meta", "value", "rotating_from"), old.data_key)}
        unlocked_until, was_unlocked = self._unlocked_until, self._keys is not None
        self._keys = None  # reads and writes answer WalletLocked until the re-encryption committed
        # Webhooks keep arriving: one sealed from here on is queued behind the rotation, so it must be sealed
        # to the new key (seal_to_wallet and the queueing of its write happen with no checkpoint between).
        old_public = self._meta["public_key"]
        self._meta["public_key"] = public_raw
        try:
            # Submitted with a copy of the old keys: the writer flushes and empties its cache when an op's
            # keys object changes, before the op's savepoint, so nothing cached is sealed with the old key
            # after the re-encryption, and a failed rotation rolls back only itself.
            barrier = WalletKeys(old.data_key, old.private_raw, old.previous_lookup_keys)
            await self._submit(self._rotate_op, (old, new, meta), barrier)
        except BaseException:
            self._keys = old if was_unlocked else None
            self._meta["public_key"] = old_public
            raise
        self._meta.update(meta)
        new.rotating_from = old.data_key
        if was_unlocked:  # a rotation does not unlock a locked wallet
            self._keys = new
            self._unlocked_until = unlocked_until
        await self._finish_rotation(new)

    @property
    def rotation_pending(self) -> bool:
        """A rotation committed but some holder (an engine file) may still be under the previous key."""
        return "rotating_from" in self._meta

    def previous_cipher(self) -> Cipher | None:
        """The cipher of the data key before a pending rotation (None when none is pending)."""
        keys = self._require_keys()
        previous = getattr(keys, "rotating_from", None)
        return Cipher(previous) if previous is not None else None

    async def finish_rotation(self) -> bool:
        """Finish a pending rotation with the unlocked keys (see _finish_rotation)."""
        return await self._finish_rotation(self._require_keys())

    async def _finish_rotation(self, keys: WalletKeys) -> bool:
        """Run the rotate listeners (new cipher, previous cipher); when none answers False ("not yet": its
        files are not open), forget the previous key. -> whether the rotation is finished."""
        if not self.rotation_pending or keys.rotating_from is None:
            return not self.rotation_pending
        previous = Cipher(keys.rotating_from)
        done = True
        for listener in self._rotate_listeners:
            if await listener(keys.cipher, previous) is False:
                done = False
        if done:
            await self._submit(_delete_meta_op, ("rotating_from",), keys)
            self._meta.pop("rotating_from", None)
            keys.rotating_from = None
        return done

    def _rotate_op(self, tx: Tx, old: WalletKeys, new: WalletKeys, meta: dict) -> None:
        conn = tx.conn
        for table, spec in self._rekey_specs.items():
            columns = [*spec["sealed"], *spec["lookups"], *spec["to_wallet"]]
            if not columns:
                continue
            for row in conn.execute(f"SELECT id, {', '.join(columns)} FROM {table}").fetchall():
                rowid, values = row[0], list(row[1:])
                for i, column in enumerate(columns):
                    value = values[i]
                    if value is None or len(value) == 0:
                        continue  # a nullable lookup, or a row whose value its own op has not written yet
                    value = bytes(value)
                    if column in spec["sealed"]:
                        where = aad(table, column, rowid)
                        values[i] = new.cipher.seal(where, old.cipher.open(where, value))
                    elif column in spec["lookups"]:
                        values[i] = new.rehash_lookup(value)
                    else:
                        values[i] = crypto.seal_to_public(meta["public_key"],
                                                          crypto.open_sealed_with(old.private_raw, value))  # type: ignore[arg-type]  # keys of an open wallet have the private key
                assignments = ", ".join(f"{c} = ?" for c in columns)
                conn.execute(f"UPDATE {table} SET {assignments} WHERE id = ?", (*values, rowid))
        for hook in self._rekey_hooks:
            hook(tx, old, new)
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())

    @staticmethod
    def _store_meta_op(tx: Tx, items: dict) -> None:
        tx.conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", items.items())

    async def backup(self, path: str | os.PathLike) -> dict:
        """Copy the (still encrypted) wallet with SQLite's online backup while running -> {path, bytes}."""
        self._require_present()
        dest = Path(path)
        return await trio.to_thread.run_sync(self._backup_sync, dest)

    def _backup_sync(self, dest: Path) -> dict:
        # The destination is created here (O_EXCL: never an existing file; O_NOFOLLOW: never through a link)
        # and written only through this descriptor: reopening it by path would let whoever controls its
        # directory swap in a symlink between the two opens and have the daemon write where it points.
        try:
            fd = os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise Conflict(f"backup destination {dest} already exists") from None
        except OSError as exc:
            raise InvalidParams(f"cannot create backup file {dest}: {exc.strerror}") from None
        return {"path": str(dest), "bytes": self._fill_backup(fd, dest)}

    def _fill_backup(self, fd: int, dest: Path) -> int:
        """Copy the wallet into ``fd`` (the descriptor its creator opened: never reopened by path), mode 0600,
        fsynced; closes ``fd``, and on any failure removes ``dest``. Returns the bytes written."""
        try:
            os.fchmod(fd, 0o600)
            written = self._backup_into(fd)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(dest)
            except OSError:
                pass
            raise
        os.close(fd)
        return written

    def _backup_into(self, fd: int) -> int:
        """SQLite's online backup into a private scratch file in data_dir, then copied into fd; -> bytes."""
        scratch = self.data_dir / f".backup-{secrets.token_hex(8)}.db"
        private_sqlite_file(scratch)
        try:
            src = self._connect()
            dst = sqlite3.connect(scratch, isolation_level=None)
            try:
                src.backup(dst)
                dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            finally:
                dst.close()
                src.close()
            written = 0
            with open(scratch, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    view = memoryview(chunk)
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
                        written += n
            return written
        finally:
            for suffix in ("", "-journal"):
                try:
                    os.unlink(f"{scratch}{suffix}")
                except FileNotFoundError:
                    pass

    # ----- sealing to the wallet -----
    def seal_to_wallet(self, plaintext: bytes) -> bytes:
        """Encrypt to this wallet's X25519 public key; needs no password, so it works while locked."""
        self._require_present()
        return crypto.seal_to_public(self._meta["public_key"], plaintext)

    def open_sealed(self, blob: bytes) -> bytes:
        """Open a blob from seal_to_wallet (needs the wallet unlocked)."""
        return crypto.open_sealed_with(self._require_keys().private_raw, blob)  # type: ignore[arg-type]  # keys of an open wallet have the private key


def _delete_meta_op(tx: Tx, key: str) -> None:
    tx.conn.execute("DELETE FROM meta WHERE key = ?", (key,))


def _forget_keys_op(tx: Tx) -> None:
    """Nothing to write: queued with no keys so the writer drops the ones it held."""


def _key_aad(wallet_id: str | None, kdf: bytes | None = None) -> bytes:
    """Associated data of the key wrap: the wallet id, and (v2) the exact stored KDF parameters."""
    if kdf is None:
        return b"tachyon data key v1|" + (wallet_id or "").encode()
    return b"tachyon data key v2|" + (wallet_id or "").encode() + b"|" + kdf


def _check_kdf(raw: bytes) -> dict:
    """Stored KDF parameters, refused (IntegrityError) when they are not a sane scrypt set."""
    try:
        kdf = json.loads(raw)
        n, r, p = kdf["n"], kdf["r"], kdf["p"]
        bytes.fromhex(kdf["salt"])
        ok = (kdf["alg"] == "scrypt" and all(type(x) is int for x in (n, r, p))
              and crypto.MIN_SCRYPT_N <= n <= crypto.MAX_SCRYPT_N and n & (n - 1) == 0
              and 1 <= r <= 32 and 1 <= p <= 16)
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise IntegrityError("the wallet's stored key-derivation parameters are damaged or out of range")
    return kdf


def scrypt_n_from_env(data_dir: Path) -> int:
    """DEFAULT_SCRYPT_N, unless TACHYOND_INSECURE_TEST_SCRYPT_N (tests only: a power of two) lowers it.

    The override weakens every wallet created, and every password changed, while it is set, so it is
    honoured only for a ``data_dir`` inside the temporary directory (``tempfile.gettempdir()``: where test
    suites put their throw-away wallets, and where no real wallet lives: systemd's PrivateTmp and tmpfs
    cleaners wipe it). Set anywhere else (an environment file copied from a test setup), it stops the start
    (ValueError naming the variable) instead of quietly weakening a real wallet."""
    value = os.environ.get(INSECURE_TEST_SCRYPT_ENV)
    if not value:
        return crypto.DEFAULT_SCRYPT_N
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < crypto.MIN_SCRYPT_N or n & (n - 1):
        raise ValueError(f"{INSECURE_TEST_SCRYPT_ENV} must be a power of two >= {crypto.MIN_SCRYPT_N}")
    tmp = Path(tempfile.gettempdir()).resolve()
    if not Path(data_dir).resolve().is_relative_to(tmp):
        raise ValueError(f"{INSECURE_TEST_SCRYPT_ENV} is set, and it weakens the wallet's password hashing for tests "
                         f"only: it is honoured only for a data_dir under {tmp}, not {data_dir}; unset it")
    return n


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
