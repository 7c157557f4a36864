"""Data-key rotation (wallet.change_password with rotate_data_key): what each module declared to re-encrypt,
the new keys and meta rows, the rotation's transaction with its re-chained lookups, the holders of files under
the previous key, and finishing a rotation a crash interrupted."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from . import crypto
from .crypto import Cipher, WalletKeys
from .writer import Tx, aad, dumps

if TYPE_CHECKING:
    from .wallet import Wallet


class Rotation:
    """A wallet's data-key rotation: what it re-encrypts (declared by the modules before start), whom it tells
    once committed, and the rotation itself, which swaps the wallet's keys and meta (Wallet is the facade:
    wallet.add_rekey, wallet.change_password(..., rotate_data_key=True), wallet.finish_rotation)."""

    def __init__(self, wallet: Wallet) -> None:
        self._wallet = wallet
        self.specs: dict[str, dict[str, tuple[str, ...]]] = {}
        self.hooks: list[Callable[[Tx, WalletKeys, WalletKeys], object]] = []
        self.listeners: list[Callable[[Cipher, Cipher], Awaitable[object]]] = []

    def add_table(self, table: str, *, sealed: tuple[str, ...] = (), lookups: tuple[str, ...] = (),
                  to_wallet: tuple[str, ...] = ()) -> None:
        """Declare what a data-key rotation re-encrypts in ``table`` (rows keyed by ``id``): ``sealed`` columns
        (sealed with aad(table, column, id)), ``lookups`` (HMAC lookup columns) and ``to_wallet`` columns
        (seal_to_wallet blobs). A module that stores anything under the data key must declare it."""
        self.specs[table] = {"sealed": tuple(sealed), "lookups": tuple(lookups), "to_wallet": tuple(to_wallet)}

    def add_hook(self, fn: Callable[[Tx, WalletKeys, WalletKeys], object]) -> None:
        """fn(tx, old_keys, new_keys) runs in the rotation's transaction after the declared tables (e.g. to
        recompute MACs made with a key derived from the data key)."""
        self.hooks.append(fn)

    def add_listener(self, fn: Callable[[Cipher, Cipher], Awaitable[object]]) -> None:
        """``await fn(new_cipher, previous_cipher)`` after a rotation committed: holders of files under the
        previous key re-encrypt them (the SQLite engine); False means "not yet" (its files are not open: it
        will be called again at the next unlock). The previous key is forgotten once none says False."""
        self.listeners.append(fn)

    async def rotate(self, old: WalletKeys, new_password: str) -> None:
        """A new data key and X25519 key; every declared table, the meta and the inbox re-encrypted in one
        transaction; then the rotate listeners (engine files); then the old key is forgotten.

        While the rotation transaction runs the wallet reads as locked: an operation queued behind it with
        the old keys would write old-key data into a re-encrypted file. Crash-safe: the old data key stays
        in meta (sealed under the new one) until every listener re-encrypted its files; an unlock before
        that hands it to them again (``rotation_pending``)."""
        w = self._wallet
        new, public_raw = self.new_keys(old)
        kdf, wrapped = await trio.to_thread.run_sync(w._wrap_sync, new_password, new.data_key, w.public_id)  # type: ignore[arg-type]  # an open wallet has its public id
        meta = self.new_meta(old, new, public_raw, kdf, wrapped)
        unlocked_until, was_unlocked = w._unlocked_until, w._keys is not None
        w._keys = None  # reads and writes answer WalletLocked until the re-encryption committed
        # Webhooks keep arriving: one sealed from here on is queued behind the rotation, so it must be sealed
        # to the new key (seal_to_wallet and the queueing of its write happen with no checkpoint between).
        old_public = w._meta["public_key"]
        w._meta["public_key"] = public_raw
        try:
            # Submitted with a copy of the old keys: the writer flushes and empties its cache when an op's
            # keys object changes, before the op's savepoint, so nothing cached is sealed with the old key
            # after the re-encryption, and a failed rotation rolls back only itself.
            barrier = WalletKeys(old.data_key, old.private_raw, old.previous_lookup_keys)
            await w._submit(self.op, (old, new, meta), barrier)
        except BaseException:
            w._keys = old if was_unlocked else None
            w._meta["public_key"] = old_public
            raise
        w._meta.update(meta)
        new.rotating_from = old.data_key
        if was_unlocked:  # a rotation does not unlock a locked wallet
            w._keys = new
            w._unlocked_until = unlocked_until
        await self.finish(new)

    @property
    def pending(self) -> bool:
        """A rotation committed but some holder (an engine file) may still be under the previous key."""
        return "rotating_from" in self._wallet._meta

    @staticmethod
    def previous_cipher(keys: WalletKeys) -> Cipher | None:
        """The cipher of the data key before a pending rotation (None when none is pending)."""
        previous = getattr(keys, "rotating_from", None)
        return Cipher(previous) if previous is not None else None

    async def finish(self, keys: WalletKeys) -> bool:
        """Run the rotate listeners (new cipher, previous cipher); when none answers False ("not yet": its
        files are not open), forget the previous key. -> whether the rotation is finished."""
        if not self.pending or keys.rotating_from is None:
            return not self.pending
        done = await self.tell_listeners(keys)
        if done:
            await self._wallet._submit(_delete_meta_op, ("rotating_from",), keys)
            self._wallet._meta.pop("rotating_from", None)
            keys.rotating_from = None
        return done

    @staticmethod
    def new_keys(old: WalletKeys) -> tuple[WalletKeys, bytes]:
        """A new data key and X25519 key pair (the lookup chain carried over) -> (keys, public key)."""
        data_key = secrets.token_bytes(crypto.KEY_BYTES)
        private_raw, public_raw = crypto.new_private_key()
        return WalletKeys(data_key, private_raw, old.lookup_chain()), public_raw

    @staticmethod
    def new_meta(old: WalletKeys, new: WalletKeys, public_raw: bytes, kdf: bytes, wrapped: bytes) -> dict[str, bytes]:
        """The meta rows the rotation writes; the old data key stays, sealed under the new one, until every
        listener re-encrypted its files (``rotating_from``)."""
        seal = new.cipher.seal
        return {"kdf": kdf, "wrapped_key": wrapped, "public_key": public_raw,
                "private_key": seal(aad("meta", "value", "private_key"), new.private_raw),  # type: ignore[arg-type]  # new keys have their private key
                "lookup_chain": seal(aad("meta", "value", "lookup_chain"),
                                     dumps([k.hex() for k in new.previous_lookup_keys])),
                "rotating_from": seal(aad("meta", "value", "rotating_from"), old.data_key)}

    async def tell_listeners(self, keys: WalletKeys) -> bool:
        """Run the rotate listeners (new cipher, previous cipher) -> True when none answered False ("not yet":
        its files are not open)."""
        assert keys.rotating_from is not None
        previous = Cipher(keys.rotating_from)
        done = True
        for listener in self.listeners:
            if await listener(keys.cipher, previous) is False:
                done = False
        return done

    def op(self, tx: Tx, old: WalletKeys, new: WalletKeys, meta: dict) -> None:
        """The rotation's transaction: every declared table re-encrypted, the hooks, the new meta rows."""
        conn = tx.conn
        for table, spec in self.specs.items():
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
        for hook in self.hooks:
            hook(tx, old, new)
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())


def _delete_meta_op(tx: Tx, key: str) -> None:
    tx.conn.execute("DELETE FROM meta WHERE key = ?", (key,))
