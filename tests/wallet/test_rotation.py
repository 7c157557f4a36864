"""Data-key rotation (wallet.change_password rotate_data_key / --rotate-data-key): after it, an old backup and
the old password open nothing in the wallet file or the SQLite engine's file; everything still reads with the
new password; the inbox is resealed to the new X25519 key; a rotation cut short is finished at the next unlock."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
import trio
from conftest import DaemonProc, run_ctl, write_config
from test_dex_helpers import dex_document

from tachyond import errors
from tachyond.config import load
from tachyond.daemon import Daemon
from tachyond.wallet import crypto
from tachyond.wallet.crypto import Cipher
from tachyond.wallet.wallet import Wallet
from tachyond.wallet.writer import aad

OLD_PW, NEW_PW = "old password words", "new password words"
SEALED = {"ledger_accounts": "value", "ledger_balances": "value", "ledger_holds": "value", "ledger_journal": "body",
          "dex_orders": "value", "dex_trades": "value"}


def rows(path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


async def keys_of(data_dir, password: str) -> crypto.WalletKeys:
    async with Wallet(data_dir, scrypt_n=2**10) as wallet:
        await wallet.unlock(password)
        return wallet.keys


def test_after_rotation_an_old_backup_and_password_open_nothing_new(sockdir):
    doc = dex_document(sockdir, "sqlite")
    doc["engines"] = {"sqlite": {"in_wallet": False}}   # the engine's own file, re-encrypted by the rotation
    doc.pop("wallet")  # no password_file: the password changes in this test
    d = DaemonProc(sockdir, doc).start()
    try:
        d.call("wallet.create", {"password": OLD_PW})
        d.call("accounts.create", {"name": "alice"})
        d.call("ledger.deposit", {"account": "alice", "token": "USDC", "amount": "100", "reference": "before"})
        d.call("dex.place_order", {"account": "alice", "market": "ZEC/USDC", "side": "buy", "type": "limit",
                                   "qty": "1", "price": "10.00"})
        d.call("wallet.backup", {"path": str(sockdir / "old-backup.db")})
        for suffix in ("", "-wal"):
            shutil.copy(sockdir / "data" / f"engine-sqlite.db{suffix}", sockdir / f"old-engine.db{suffix}")
        r = run_ctl("wallet", "change-password", "--rotate-data-key", "--password-stdin", socket_path=d.socket,
                    input_text=f"{OLD_PW}\n{NEW_PW}\n")
        assert r.returncode == 0, r.stderr
        assert json.loads(run_ctl("--json", "status", socket_path=d.socket).stdout)["wallet"] == "unlocked"
        d.call("ledger.deposit", {"account": "alice", "token": "USDC", "amount": "5", "reference": "after"})
        d.call("dex.place_order", {"account": "alice", "market": "ZEC/USDC", "side": "buy", "type": "limit",
                                   "qty": "1", "price": "11.00"})
        assert d.call("ledger.verify")["ok"] is True
    finally:
        assert d.stop() == 0

    old_dir = sockdir / "old"
    old_dir.mkdir()
    shutil.copy(sockdir / "old-backup.db", old_dir / "wallet.db")
    old = trio.run(keys_of, old_dir, OLD_PW)
    new_db, engine_db = sockdir / "data" / "wallet.db", sockdir / "data" / "engine-sqlite.db"
    with pytest.raises(errors.WrongPassword):
        trio.run(keys_of, sockdir / "data", OLD_PW)
    # Every sealed value of the new files fails under the old key (the data written before the rotation too).
    count = 0
    for table, column in SEALED.items():
        for rowid, blob in rows(new_db, f"SELECT id, {column} FROM {table}"):
            with pytest.raises(errors.IntegrityError):
                old.cipher.open(aad(table, column, rowid), blob)
            count += 1
    for seq, body in rows(engine_db, "SELECT seq, body FROM events"):
        with pytest.raises(errors.IntegrityError):
            old.cipher.open(b"events|body|%d" % seq, body)
        count += 1
    with pytest.raises(errors.IntegrityError):
        old.cipher.open(b"meta|value|mac_key", rows(engine_db, "SELECT value FROM meta WHERE key = 'mac_key'")[0][0])
    assert count >= 12
    # The old lookup key finds no name in the new file.
    names = {bytes(h) for (h,) in rows(new_db, "SELECT name_hash FROM ledger_accounts")}
    assert old.lookup("account", "alice") not in names and old.lookup("account", "default") not in names
    # The old engine file opened the old key; the new key opens everything new.
    assert old.cipher.open(b"meta|value|mac_key",
                           rows(sockdir / "old-engine.db", "SELECT value FROM meta WHERE key = 'mac_key'")[0][0])

    d2 = DaemonProc(sockdir, doc).start()
    try:
        d2.call("wallet.unlock", {"password": NEW_PW})
        assert d2.call("ledger.verify")["ok"] is True
        balances = {(b["account"], b["token"]): b for b in d2.call("ledger.balances", {"account": "alice"})}
        usdc = balances[("alice", "USDC")]
        assert usdc["available_minor"] + usdc["locked_minor"] == 105_000_000 and usdc["locked_minor"] > 21_000_000
        keys = [e["key"] for e in d2.call("ledger.history", {"account": "alice"})]
        assert "deposit:before" in keys and "deposit:after" in keys
        assert d2.call("ledger.deposit", {"account": "alice", "token": "USDC", "amount": "100",
                                          "reference": "before"})["repeated"] is True  # old keys still found
        book = d2.call("dex.order_book", {"market": "ZEC/USDC"})
        assert [level[0] for level in book["bids"]] == ["11.00", "10.00"]
        assert {a["name"] for a in d2.call("accounts.list")} == {"alice", "default"}
    finally:
        d2.stop()


async def test_the_inbox_is_resealed_and_a_rotation_cut_short_finishes_at_the_next_unlock(tmp_path):
    with trio.fail_after(30):
        wallet = Wallet(tmp_path, scrypt_n=2**10)
        wallet.add_schema("t", ["CREATE TABLE t_inbox (id INTEGER PRIMARY KEY, sealed BLOB NOT NULL)"])
        wallet.add_rekey("t_inbox", to_wallet=("sealed",))
        calls = []

        async def not_yet(cipher: Cipher, previous: Cipher) -> bool:
            calls.append((cipher, previous))
            return False

        wallet.add_rotate_listener(not_yet)
        async with wallet:
            await wallet.create(OLD_PW)
            old_private = wallet.keys.private_raw
            blob = wallet.seal_to_wallet(b"webhook event")
            await wallet.write(lambda tx: tx.conn.execute("INSERT INTO t_inbox (sealed) VALUES (?)", (blob,)))
            await wallet.lock()
            assert (await wallet.change_password(OLD_PW, NEW_PW, rotate_data_key=True)) == \
                {"changed": True, "rotated": True}
            assert wallet.state == "locked" and wallet.rotation_pending  # still locked; the listener said not yet
        (resealed,) = rows(tmp_path / "wallet.db", "SELECT sealed FROM t_inbox")[0]
        with pytest.raises(errors.IntegrityError):
            crypto.open_sealed_with(old_private, resealed)

        wallet = Wallet(tmp_path, scrypt_n=2**10)
        wallet.add_schema("t", ["CREATE TABLE t_inbox (id INTEGER PRIMARY KEY, sealed BLOB NOT NULL)"])
        done = []

        async def now(cipher: Cipher, previous: Cipher) -> bool:
            done.append(previous.open(b"x", previous.seal(b"x", b"ok")))
            return True

        wallet.add_rotate_listener(now)
        async with wallet:
            await wallet.unlock(NEW_PW)
            assert wallet.open_sealed(resealed) == b"webhook event"
            assert wallet.rotation_pending and wallet.previous_cipher() is not None
            assert await wallet.finish_rotation() is True
            assert not wallet.rotation_pending and wallet.previous_cipher() is None and done == [b"ok"]
        assert not rows(tmp_path / "wallet.db", "SELECT 1 FROM meta WHERE key = 'rotating_from'")
        assert len(calls) == 1


async def test_a_daemon_stopped_before_the_engine_file_was_rekeyed_finishes_at_the_next_unlock(sockdir):
    """The wallet rotated, the engine file did not (the daemon stopped in between): the next unlock opens the
    engine with the previous key, re-encrypts its file and forgets the previous key."""
    doc = dex_document(sockdir, "sqlite")
    doc["engines"] = {"sqlite": {"in_wallet": False}}   # the engine's own file (in_wallet's log: a wallet table)
    doc.pop("wallet")
    with trio.fail_after(90):
        d = DaemonProc(sockdir, doc)
        await trio.to_thread.run_sync(d.start)
        try:
            await trio.to_thread.run_sync(d.call, "wallet.create", {"password": OLD_PW})
            await trio.to_thread.run_sync(d.call, "ledger.deposit", {"token": "USDC", "amount": "100",
                                                                     "reference": "r"})
            await trio.to_thread.run_sync(d.call, "dex.place_order", {"market": "ZEC/USDC", "side": "buy",
                                                                      "type": "limit", "qty": "1", "price": "10.00"})
        finally:
            assert await trio.to_thread.run_sync(d.stop) == 0
        engine_db = sockdir / "data" / "engine-sqlite.db"
        old_sealed_mac_key = rows(engine_db, "SELECT value FROM meta WHERE key = 'mac_key'")[0][0]

        # The wallet's half of a rotation, by the daemon's own wallet (every module's tables declared), with
        # the engines never opened: their listener answers "not yet", as when the daemon stops right here.
        daemon = Daemon(load(write_config(sockdir, doc)))
        daemon.load_plugins()
        daemon.wallet.scrypt_n = 2**10
        async with daemon.wallet:
            await daemon.wallet.change_password(OLD_PW, NEW_PW, rotate_data_key=True)
            assert daemon.wallet.rotation_pending
        assert rows(engine_db, "SELECT value FROM meta WHERE key = 'mac_key'")[0][0] == old_sealed_mac_key

        d = DaemonProc(sockdir, doc)
        await trio.to_thread.run_sync(d.start)
        try:
            await trio.to_thread.run_sync(d.call, "wallet.unlock", {"password": NEW_PW})
            book = await trio.to_thread.run_sync(d.call, "dex.order_book", {"market": "ZEC/USDC"})
            assert [level[0] for level in book["bids"]] == ["10.00"]
            assert (await trio.to_thread.run_sync(d.call, "ledger.verify"))["ok"] is True
            placed = await trio.to_thread.run_sync(d.call, "dex.place_order", {
                "market": "ZEC/USDC", "side": "buy", "type": "limit", "qty": "1", "price": "9.00"})
            assert placed["status"] == "open"
        finally:
            assert await trio.to_thread.run_sync(d.stop) == 0
        assert not rows(sockdir / "data" / "wallet.db", "SELECT 1 FROM meta WHERE key = 'rotating_from'")
        assert rows(engine_db, "SELECT value FROM meta WHERE key = 'mac_key'")[0][0] != old_sealed_mac_key
        new = await keys_of(sockdir / "data", NEW_PW)
        for seq, body in rows(engine_db, "SELECT seq, body FROM events"):
            new.cipher.open(b"events|body|%d" % seq, body)  # all under the new key now
