"""The wallet store: lifecycle, envelope encryption, sealing, the unlock timer and the one writer's group commit."""

from __future__ import annotations

import sqlite3
import stat
import threading

import pytest
import trio
import trio.testing

from tachyond import errors
from tachyond.amounts import Token
from tachyond.ledger.journal import Posting
from tachyond.ledger.service import Ledger
from tachyond.wallet.wallet import MAX_UNLOCK_TIMEOUT_S, UnlockTimer, Wallet, wrong_password_delay_s

TOKENS = {"USDC": Token("USDC", 6), "ZEC": Token("ZEC", 8)}
TEST_N = 2**10
PW = "correct horse battery staple"


def open_wallet(path) -> tuple[Wallet, Ledger]:
    wallet = Wallet(path, scrypt_n=TEST_N)
    return wallet, Ledger(wallet, TOKENS)


async def test_lifecycle_states_and_reopen(tmp_path):
    with trio.fail_after(20):
        wallet, ledger = open_wallet(tmp_path)
        async with wallet:
            assert wallet.state == "absent"
            with pytest.raises(errors.WalletAbsent):
                await wallet.unlock(PW)
            with pytest.raises(errors.WalletAbsent):
                await ledger.deposit("default", "USDC", 1, "too-early")
            with pytest.raises(errors.WalletAbsent):
                await ledger.balances()
            await wallet.create(PW)
            assert wallet.state == "unlocked" and wallet.unlocked_until is None
            assert wallet.public_id.startswith("tw_") and len(wallet.public_id) == 27
            assert len(bytes.fromhex(wallet.public_key)) == 32
            public_id = wallet.public_id
            with pytest.raises(errors.WalletExists):
                await wallet.create(PW)
            await ledger.deposit("default", "USDC", 5_000_000, "r1")
            assert (await wallet.lock()) == {"locked": True}
            assert wallet.state == "locked"
            with pytest.raises(errors.WalletLocked):
                _ = wallet.cipher
            with pytest.raises(errors.WalletLocked):
                await ledger.balances()
            with pytest.raises(errors.WalletLocked):
                await ledger.deposit("default", "USDC", 1, "r2")
        assert stat.S_IMODE((tmp_path / "wallet.db").stat().st_mode) == 0o600
        wallet, ledger = open_wallet(tmp_path)
        async with wallet:
            assert wallet.state == "locked" and wallet.public_id == public_id
            with pytest.raises(errors.WalletExists):
                await wallet.create("another password")
            assert (await wallet.unlock(PW)) == {"unlocked": True}
            [usdc, _] = await ledger.balances("default")
            assert usdc["available_minor"] == 5_000_000


async def test_wrong_password_delay_grows_and_resets(tmp_path):
    assert [wrong_password_delay_s(n) for n in range(7)] == [0, 0.25, 0.5, 1, 2, 4, 8]
    assert wrong_password_delay_s(50) == 8
    with trio.fail_after(20):
        wallet, _ = open_wallet(tmp_path)
        async with wallet:
            await wallet.create(PW)
            await wallet.lock()
            waited = []
            for attempt in (1, 2):
                t0 = trio.current_time()
                with pytest.raises(errors.WrongPassword) as info:
                    await wallet.unlock("not the password")
                waited.append(trio.current_time() - t0)
                assert wallet.failed_unlocks == attempt
                assert "not the password" not in str(info.value)
            # trio.sleep never wakes early, so these lower bounds are exact, not timing guesses.
            assert waited[0] >= 0.25 and waited[1] >= 0.5
            with pytest.raises(errors.WrongPassword):
                await wallet.change_password("still wrong", "new")
            assert wallet.failed_unlocks == 3 and wallet.state == "locked"
            await wallet.unlock(PW)
            assert wallet.failed_unlocks == 0 and wallet.state == "unlocked"


async def test_unlock_timeout_clamped_zero_and_invalid(tmp_path):
    with trio.fail_after(20):
        wallet, _ = open_wallet(tmp_path)
        async with wallet:
            await wallet.create(PW)
            result = await wallet.unlock(PW, timeout_s=10**12)
            assert result["until"] == wallet.unlocked_until
            assert MAX_UNLOCK_TIMEOUT_S - 60 < wallet.unlocked_until - __import__("time").time() <= MAX_UNLOCK_TIMEOUT_S
            assert wallet.timer.deadline - trio.current_time() <= MAX_UNLOCK_TIMEOUT_S
            assert (await wallet.unlock(PW, timeout_s=0)) == {"unlocked": True}
            assert wallet.unlocked_until is None and wallet.timer.deadline == float("inf")
            for bad in (-1, float("nan"), "10", True):
                with pytest.raises(errors.InvalidParams):
                    await wallet.unlock(PW, timeout_s=bad)


async def test_unlock_timeout_relocks_on_real_clock(tmp_path):
    with trio.fail_after(20):
        wallet, ledger = open_wallet(tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(wallet.serve)
            await wallet.create(PW)
            await wallet.unlock(PW, timeout_s=0.2)
            assert wallet.state == "unlocked" and wallet.unlocked_until is not None
            while wallet._keys is not None:  # the timer task, not a lazy check, must drop the key
                await trio.sleep(0.05)
            assert wallet.state == "locked" and wallet.unlocked_until is None
            with pytest.raises(errors.WalletLocked):
                await ledger.balances()
            nursery.cancel_scope.cancel()
        assert wallet.state == "locked"


async def test_unlock_timer_rearm_and_disarm(autojump_clock):
    timer = UnlockTimer()
    expiries = []
    with trio.fail_after(10_000):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timer.run, lambda: expiries.append(trio.current_time()))
            start = trio.current_time()
            timer.arm(60)
            await trio.sleep(59)
            assert expiries == []
            timer.arm(60)  # a new unlock resets the timer
            await trio.sleep(59)
            assert expiries == []
            await trio.sleep(2)
            assert expiries == [pytest.approx(start + 119)]
            timer.arm(10)
            timer.disarm()
            await trio.sleep(100)
            assert len(expiries) == 1 and timer.deadline == float("inf")
            timer.arm(5)
            await trio.sleep(6)
            assert len(expiries) == 2
            nursery.cancel_scope.cancel()


async def test_change_password_rewraps_only_the_key(tmp_path):
    with trio.fail_after(20):
        wallet, ledger = open_wallet(tmp_path)
        async with wallet:
            await wallet.create(PW)
            await ledger.deposit("default", "ZEC", 12_345_678, "r1")
            blob = wallet.seal_to_wallet(b"sealed before the change")
            assert (await wallet.change_password(PW, "new password")) == {"changed": True}
            assert wallet.state == "unlocked"
            await wallet.lock()
            with pytest.raises(errors.WrongPassword):
                await wallet.unlock(PW)
            await wallet.unlock("new password")
            assert wallet.open_sealed(blob) == b"sealed before the change"
        wallet, ledger = open_wallet(tmp_path)
        async with wallet:
            await wallet.unlock("new password")
            [_, zec] = await ledger.balances("default")
            assert zec["available"] == "0.12345678"
            assert (await ledger.verify())["ok"]


async def test_seal_while_locked_open_when_unlocked(tmp_path):
    with trio.fail_after(20):
        wallet, _ = open_wallet(tmp_path)
        async with wallet:
            await wallet.create(PW)
            await wallet.lock()
            blob = wallet.seal_to_wallet(b'{"event": "checkout.session.completed"}')
            with pytest.raises(errors.WalletLocked):
                wallet.open_sealed(blob)
            await wallet.unlock(PW)
            assert wallet.open_sealed(blob) == b'{"event": "checkout.session.completed"}'
            tampered = bytearray(blob)
            tampered[-1] ^= 1
            with pytest.raises(errors.IntegrityError):
                wallet.open_sealed(bytes(tampered))
            other, _ = open_wallet(tmp_path / "other")
            async with other:
                await other.create(PW)
                with pytest.raises(errors.IntegrityError):
                    other.open_sealed(blob)


async def test_backup_while_running_opens_with_password(tmp_path):
    with trio.fail_after(30):
        wallet, ledger = open_wallet(tmp_path / "live")
        async with wallet:
            await wallet.create(PW)
            await ledger.create_account("savings")
            await ledger.deposit("savings", "USDC", 42_000_000, "r1")
            dest = tmp_path / "copy" / "wallet.db"
            dest.parent.mkdir()
            async with trio.open_nursery() as nursery:  # writes keep flowing while the copy is taken
                for i in range(20):
                    nursery.start_soon(ledger.transfer, "savings", "default", "USDC", 1_000, f"t{i}")
                result = await wallet.backup(dest)
            assert result == {"path": str(dest), "bytes": dest.stat().st_size} and result["bytes"] > 0
            with pytest.raises(errors.Conflict):
                await wallet.backup(dest)
        copy, copy_ledger = open_wallet(dest.parent)
        async with copy:
            assert copy.state == "locked" and copy.public_id == wallet.public_id
            with pytest.raises(errors.WrongPassword):
                await copy.unlock("wrong")
            await copy.unlock(PW)
            assert [a["name"] for a in await copy_ledger.list_accounts()] == ["default", "savings"]
            check = await copy_ledger.verify()
            assert check["ok"], check["problems"]
            totals = {b["account"]: b["available_minor"] for b in await copy_ledger.balances() if b["token"] == "USDC"}
            assert totals["savings"] + totals["default"] == 42_000_000
            assert totals["default"] == 1_000 * (check["entries"] - 1)


def _gate_op(tx, entered: threading.Event, gate: threading.Event) -> str:
    entered.set()
    assert gate.wait(10), "gate never opened"
    return "gate"


async def _hold_writer(wallet: Wallet, nursery) -> threading.Event:
    """Park the writer thread inside an op; returns the event that lets it go on."""
    entered, gate = threading.Event(), threading.Event()
    nursery.start_soon(wallet.write, _gate_op, entered, gate)
    assert await trio.to_thread.run_sync(entered.wait, 10)
    return gate


async def _queue_behind_gate(wallet: Wallet, ops: list) -> list:
    """Hold the writer on a gate so every op in `ops` is queued, then release: they must form one batch."""
    results: list = [None] * len(ops)

    async def run(i, fn, *args):
        try:
            results[i] = ("ok", await wallet.write(fn, *args))
        except Exception as exc:
            results[i] = ("error", exc)

    async with trio.open_nursery() as nursery:
        gate = await _hold_writer(wallet, nursery)
        for i, (fn, *args) in enumerate(ops):
            nursery.start_soon(run, i, fn, *args)
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    return results


async def test_group_commit_batches_every_waiting_op(tmp_path):
    with trio.fail_after(30):
        wallet, ledger = open_wallet(tmp_path)
        async with wallet:
            await wallet.create(PW)
            await ledger.deposit("default", "USDC", 1_000_000, "seed")
            await ledger.create_account("bob")
            before = dict(wallet.stats)
            ops = [(lambda tx, i: tx.post_entry(f"t{i}", "transfer", [Posting("default", "USDC", -1),
                                                                     Posting("bob", "USDC", 1)]), i)
                   for i in range(40)]
            results = await _queue_behind_gate(wallet, ops)
            assert all(kind == "ok" for kind, _ in results)
            assert wallet.stats["ops"] - before["ops"] == 41
            assert wallet.stats["transactions"] - before["transactions"] == 2  # the gate's, then all 40 in one
            assert wallet.stats["max_batch"] >= 40
            [bob_usdc, _] = await ledger.balances("bob")
            assert bob_usdc["available_minor"] == 40


def _module_op(tx, n: int, fail: bool):
    tx.conn.execute("INSERT INTO dex_notes (n) VALUES (?)", (n,))
    entry = tx.post_entry(f"fill:{n}", "fill", [Posting("default", "USDC", -100), Posting("fees", "USDC", 100)])
    if fail:
        raise errors.OrderRejected(f"op {n} changed its mind")
    return entry["id"], tx.balance("default", "USDC")


async def test_failing_op_rolls_back_only_itself_with_module_tables(tmp_path):
    with trio.fail_after(30):
        wallet = Wallet(tmp_path, scrypt_n=TEST_N)
        wallet.add_schema("dex", ["CREATE TABLE dex_notes (n INTEGER NOT NULL)"])
        wallet.add_schema("dex", ["CREATE TABLE dex_notes (n INTEGER NOT NULL)"])  # idempotent
        with pytest.raises(ValueError):
            wallet.add_schema("dex", ["CREATE TABLE something_else (x)"])
        ledger = Ledger(wallet, TOKENS)
        async with wallet:
            await wallet.create(PW)
            await ledger.deposit("default", "USDC", 1_000, "seed")
            results = await _queue_behind_gate(wallet, [(_module_op, 1, False), (_module_op, 2, True),
                                                        (_module_op, 3, False)])
            assert results[1][0] == "error" and isinstance(results[1][1], errors.OrderRejected)
            # trio starts tasks in any order, so ops 1 and 3 commit as entries 2 and 3 either way round; whichever
            # ran after op 2 sees 800, not 700: the failed op's balance change was undone in the cache too.
            assert sorted([results[0][1], results[2][1]]) == [(2, (900, 0)), (3, (800, 0))]
            notes = await wallet.read(lambda rtx: [r[0] for r in rtx.conn.execute("SELECT n FROM dex_notes")])
            assert sorted(notes) == [1, 3]
            assert {e["key"] for e in await ledger.history()} == {"fill:3", "fill:1", "deposit:seed"}
            [fees] = [b for b in await ledger.balances("fees") if b["token"] == "USDC"]
            assert fees["available_minor"] == 200
            assert (await ledger.verify())["ok"]
        migrated = Wallet(tmp_path, scrypt_n=TEST_N)
        migrated.add_schema("dex", ["CREATE TABLE dex_notes (n INTEGER NOT NULL)",
                                    "ALTER TABLE dex_notes ADD COLUMN note TEXT"])
        Ledger(migrated, TOKENS)
        async with migrated:
            cols = await migrated.read(lambda rtx: [r[1] for r in rtx.conn.execute("PRAGMA table_info(dex_notes)")])
            assert cols == ["n", "note"]
            with pytest.raises(RuntimeError):
                migrated.add_schema("late", ["CREATE TABLE late (x)"])


def _sabotage_op(tx):
    tx.conn.execute("ROLLBACK")  # ends the writer's transaction under it: SQLite itself fails for the batch


async def test_broken_batch_fails_every_op_and_the_writer_survives(tmp_path):
    with trio.fail_after(30):
        wallet, ledger = open_wallet(tmp_path)
        async with wallet:
            await wallet.create(PW)
            await ledger.deposit("default", "USDC", 1_000, "seed")
            deposit = (lambda tx: tx.post_entry("deposit:x", "deposit", [Posting("external:chain", "USDC", -5),
                                                                         Posting("default", "USDC", 5)]),)
            results = await _queue_behind_gate(wallet, [deposit, (_sabotage_op,)])
            assert [kind for kind, _ in results] == ["error", "error"]
            assert all("nothing was written" in str(exc) for _, exc in results)
            assert (await ledger.balances("default"))[0]["available_minor"] == 1_000
            again = await ledger.deposit("default", "USDC", 5, "x")  # the writer still works; the key is free
            assert again["repeated"] is False and again["id"] == 2
            assert await wallet.write(lambda tx: tx.balance("default", "USDC")) == (1_005, 0)
            assert (await ledger.verify())["ok"]


async def test_lock_clears_writer_cache_and_reads_never_wait(tmp_path):
    with trio.fail_after(30):
        wallet, ledger = open_wallet(tmp_path)
        async with wallet:
            await wallet.create(PW)
            await ledger.deposit("default", "USDC", 700, "seed")
            await wallet.lock()
            with pytest.raises(errors.WalletLocked):
                await wallet.write(lambda tx: tx.balance("default", "USDC"))
            await wallet.unlock(PW)
            async with trio.open_nursery() as nursery:
                gate = await _hold_writer(wallet, nursery)
                [usdc, _] = await ledger.balances("default")  # the writer is stuck; the reader is not
                gate.set()
            assert usdc["available_minor"] == 700
            assert await wallet.write(lambda tx: tx.balance("default", "USDC")) == (700, 0)


async def test_writes_after_close_are_refused(tmp_path):
    with trio.fail_after(20):
        wallet, ledger = open_wallet(tmp_path)
        async with wallet:
            await wallet.create(PW)
        with pytest.raises(errors.ShuttingDown):  # refused as a stopping daemon's, never written
            await ledger.deposit("default", "USDC", 1, "late")
        raw = sqlite3.connect(tmp_path / "wallet.db")
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        raw.close()


async def test_a_read_or_write_after_the_wallet_closed_is_shutting_down(tmp_path):
    """A service task that reaches the wallet after a stop closed it (the onramp worker at a SIGTERM) gets
    ShuttingDown, which services end on quietly, never a RuntimeError that turns a clean stop into exit 1."""
    with trio.fail_after(20):
        wallet, ledger = open_wallet(tmp_path)
        with pytest.raises(RuntimeError, match="not started"):
            await ledger.balances()
        async with wallet:
            await wallet.create(PW)
            await ledger.deposit("default", "USDC", 1, "before-close")
        with pytest.raises(errors.ShuttingDown):
            await ledger.balances()
        with pytest.raises(errors.ShuttingDown):
            await ledger.deposit("default", "USDC", 1, "after-close")
