"""The wallet: one SQLite file with envelope encryption; Wallet is the facade over the modules beside this one."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from ..errors import InvalidParams, ShuttingDown, WalletAbsent, WalletExists, WalletLocked, WrongPassword
from . import crypto
from .backup import online_backup
from .crypto import Cipher, WalletKeys
from .readers import Readers
from .rotation import Rotation
from .schema import open_file
from .unlock import (
    INSECURE_TEST_SCRYPT_ENV,
    MAX_UNLOCK_TIMEOUT_S,
    UnlockTimer,
    check_password,
    check_timeout,
    new_wallet,
    scrypt_n_from_env,
    unwrap_keys,
    wrap_data_key,
    wrong_password_delay_s,
)
from .writer import ReadTx, Tx, Writer

# Wallet is the facade: callers import these from here, wherever they live.
__all__ = ["INSECURE_TEST_SCRYPT_ENV", "MAX_UNLOCK_TIMEOUT_S", "WALLET_FILE", "UnlockTimer", "Wallet",
           "scrypt_n_from_env", "wrong_password_delay_s"]

WALLET_FILE = "wallet.db"


def _probe(rtx: ReadTx) -> None:
    rtx.conn.execute("SELECT count(*) FROM meta").fetchone()


class Wallet:
    """The encrypted wallet file, the one facade the domains use: its state and lifecycle (create, unlock, lock,
    change password), reads (readers.py), writes (writer.py's Writer), data-key rotation (rotation.py),
    backup (backup.py); the key wrap and the relock timer are in unlock.py, the tables in schema.py."""

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
        self.rotation = Rotation(self)
        self._keys_dropped = trio.Event()
        self._meta: dict[str, bytes] = {}
        self._keys: WalletKeys | None = None
        self._unlocked_until: float | None = None
        self.readers = Readers(self.path)
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
        """Declare what a data-key rotation re-encrypts in ``table`` (see Rotation.add_table)."""
        self.rotation.add_table(table, sealed=sealed, lookups=lookups, to_wallet=to_wallet)

    def add_rekey_hook(self, fn: Callable[[Tx, WalletKeys, WalletKeys], object]) -> None:
        """fn(tx, old_keys, new_keys) runs in the rotation's transaction (see Rotation.add_hook)."""
        self.rotation.add_hook(fn)

    def add_rotate_listener(self, fn: Callable[[Cipher, Cipher], Awaitable[object]]) -> None:
        """``await fn(new_cipher, previous_cipher)`` after a rotation committed (see Rotation.add_listener)."""
        self.rotation.add_listener(fn)

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
        conn, self._meta, copy = await trio.to_thread.run_sync(open_file, self.path, self._schemas)
        self.migration_backup = copy
        self._closed = False
        self.writer.start(conn)

    async def aclose(self) -> None:
        """Finish queued writes, stop the writer, close every connection, drop the keys."""
        if not self.writer.running or self.writer.closing:
            return
        await self.writer.stop()
        self.readers.close()
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
        return await trio.to_thread.run_sync(self.readers.run, fn, args, keys, absent)

    # ----- lifecycle -----
    async def create(self, password: str) -> dict:
        """Create the wallet's keys (wallet left unlocked, no timeout); WalletExists if one exists."""
        self._require_started()
        check_password(password)
        if "wrapped_key" in self._meta:
            raise WalletExists("a wallet already exists in this data_dir")
        keys, meta = await trio.to_thread.run_sync(new_wallet, password, self.scrypt_n)
        await self._submit(self._create_op, (meta,), keys)
        self._meta.update(meta)
        self._keys = keys
        self._unlocked_until = None
        self.failed_unlocks = 0
        return {"created": True, "public_id": self.public_id}

    def _create_op(self, tx: Tx, meta: dict) -> None:
        if tx.conn.execute("SELECT 1 FROM meta WHERE key = 'wrapped_key'").fetchone():
            raise WalletExists("a wallet already exists in this data_dir")
        tx.conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        for hook in self._create_hooks:
            hook(tx)

    def _wrap_sync(self, password: str, data_key: bytes, wallet_id: str) -> tuple[bytes, bytes]:
        return wrap_data_key(password, data_key, wallet_id, self.scrypt_n)

    async def _check_password(self, password: str) -> WalletKeys:
        """Derive and unwrap; on a wrong password wait longer each consecutive time, then raise WrongPassword."""
        check_password(password)
        keys = await trio.to_thread.run_sync(unwrap_keys, self._meta, password, self.public_id)
        if keys is None:
            self.failed_unlocks += 1
            await trio.sleep(wrong_password_delay_s(self.failed_unlocks))
            raise WrongPassword("wrong password")
        self.failed_unlocks = 0
        return keys

    async def unlock(self, password: str, timeout_s: float | None = None) -> dict:
        """Unlock for timeout_s seconds (0/None: until lock()); a new unlock replaces the previous timeout."""
        self._require_present()
        timeout_s = check_timeout(timeout_s)
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
        check_password(new_password)
        if not isinstance(rotate_data_key, bool):
            raise InvalidParams("rotate_data_key must be true or false", data={"param": "rotate_data_key"})
        async with self._unlock_lock:
            keys = await self._check_password(old_password)
            if rotate_data_key:
                await self.rotation.rotate(keys, new_password)
                return {"changed": True, "rotated": True}
            kdf, wrapped = await trio.to_thread.run_sync(self._wrap_sync, new_password, keys.data_key,  # type: ignore[arg-type]  # an open wallet has its public id
                                                         self.public_id)
            await self._submit(self._store_meta_op, ({"kdf": kdf, "wrapped_key": wrapped},), keys)
            self._meta.update(kdf=kdf, wrapped_key=wrapped)
        return {"changed": True}

    @property
    def rotation_pending(self) -> bool:
        """A rotation committed but some holder (an engine file) may still be under the previous key."""
        return self.rotation.pending

    def previous_cipher(self) -> Cipher | None:
        """The cipher of the data key before a pending rotation (None when none is pending)."""
        return self.rotation.previous_cipher(self._require_keys())

    async def finish_rotation(self) -> bool:
        """Finish a pending rotation with the unlocked keys (see Rotation.finish)."""
        return await self.rotation.finish(self._require_keys())

    @staticmethod
    def _store_meta_op(tx: Tx, items: dict) -> None:
        tx.conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", items.items())

    async def backup(self, path: str | os.PathLike) -> dict:
        """Copy the (still encrypted) wallet with SQLite's online backup while running -> {path, bytes}."""
        self._require_present()
        dest = Path(path)
        return await trio.to_thread.run_sync(online_backup, self.path, dest)

    # ----- sealing to the wallet -----
    def seal_to_wallet(self, plaintext: bytes) -> bytes:
        """Encrypt to this wallet's X25519 public key; needs no password, so it works while locked."""
        self._require_present()
        return crypto.seal_to_public(self._meta["public_key"], plaintext)

    def open_sealed(self, blob: bytes) -> bytes:
        """Open a blob from seal_to_wallet (needs the wallet unlocked)."""
        return crypto.open_sealed_with(self._require_keys().private_raw, blob)  # type: ignore[arg-type]  # keys of an open wallet have the private key


def _forget_keys_op(tx: Tx) -> None:
    """Nothing to write: queued with no keys so the writer drops the ones it held."""
