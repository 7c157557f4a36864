"""The ledger: accounts, entries, idempotency, holds, insufficient funds, tampering, and nothing in clear on disk."""

from __future__ import annotations

import sqlite3

import pytest
import trio

from tachyond import errors
from tachyond.amounts import Token
from tachyond.ledger.journal import Posting, lock_postings, release_postings
from tachyond.ledger.service import Ledger
from tachyond.wallet.wallet import Wallet

TOKENS = {"USDC": Token("USDC", 6), "ZEC": Token("ZEC", 8)}
PW = "ledger test password"


async def started(path) -> tuple[Wallet, Ledger]:
    wallet = Wallet(path, scrypt_n=2**10)
    ledger = Ledger(wallet, TOKENS)
    await wallet.start()
    if wallet.state == "absent":
        await wallet.create(PW)
    else:
        await wallet.unlock(PW)
    return wallet, ledger


def by_key(rows) -> dict:
    return {(r["account"], r["token"]): (r["available_minor"], r["locked_minor"]) for r in rows}


async def test_accounts(tmp_path):
    with trio.fail_after(20):
        wallet, ledger = await started(tmp_path)
        try:
            assert [a["name"] for a in await ledger.list_accounts()] == ["default"]
            created = await ledger.create_account("alice.trading-1")
            assert created["name"] == "alice.trading-1" and isinstance(created["created_at"], float)
            with pytest.raises(errors.Conflict):
                await ledger.create_account("alice.trading-1")
            for bad in ("Alice", "-x", "a" * 65, "", "fees", "external:stripe", "a b", 7):
                with pytest.raises(errors.InvalidParams):
                    await ledger.create_account(bad)
            with pytest.raises(errors.UnknownAccount):
                await ledger.deposit("nobody", "USDC", 1, "r")
            with pytest.raises(errors.UnknownAccount):
                await ledger.balances("nobody")
            with pytest.raises(errors.UnknownToken):
                await ledger.deposit("default", "DOGE", 1, "r")
            for amount in (0, -5, 1.5, True, "10"):
                with pytest.raises(errors.AmountError):
                    await ledger.deposit("default", "USDC", amount, "r")
            assert [a["name"] for a in await ledger.list_accounts()] == ["alice.trading-1", "default"]
        finally:
            await wallet.aclose()


async def test_deposit_withdraw_transfer_balances_history(tmp_path):
    with trio.fail_after(20):
        wallet, ledger = await started(tmp_path)
        try:
            await ledger.create_account("alice")
            entry = await ledger.deposit("alice", "USDC", 120_000_000, "tx-1")
            assert entry["key"] == "deposit:tx-1" and entry["kind"] == "deposit" and entry["repeated"] is False
            assert entry["postings"] == [
                {"account": "external:chain", "token": "USDC", "bucket": "available", "amount": "-120.00",
                 "amount_minor": -120_000_000, "hold": None},
                {"account": "alice", "token": "USDC", "bucket": "available", "amount": "120.00",
                 "amount_minor": 120_000_000, "hold": None}]
            await ledger.deposit("alice", "ZEC", 150_000_000, "tx-2", source="stripe")
            moved = await ledger.transfer("alice", "default", "USDC", 20_500_000)
            assert moved["key"].startswith("transfer:") and len(moved["key"]) > len("transfer:")
            await ledger.withdraw("alice", "ZEC", 50_000_000, "out-1")
            assert await ledger.balances("alice") == [
                {"account": "alice", "token": "USDC", "available": "99.50", "locked": "0.00",
                 "available_minor": 99_500_000, "locked_minor": 0},
                {"account": "alice", "token": "ZEC", "available": "1.00", "locked": "0.00",
                 "available_minor": 100_000_000, "locked_minor": 0}]
            everyone = by_key(await ledger.balances())
            assert set(a for a, _ in everyone) == {"alice", "default"}  # user accounts only
            assert everyone[("default", "USDC")] == (20_500_000, 0)
            system = by_key(await ledger.balances("external:chain"))
            assert system[("external:chain", "USDC")] == (-120_000_000, 0)  # system accounts may go negative
            assert system[("external:chain", "ZEC")] == (50_000_000, 0)
            history = await ledger.history()
            assert [e["kind"] for e in history] == ["withdraw", "transfer", "deposit", "deposit"]
            assert [e["id"] for e in history] == [4, 3, 2, 1]
            assert [e["id"] for e in await ledger.history(limit=2, before=4)] == [3, 2]
            assert [e["id"] for e in await ledger.history(account="default")] == [3]
            with pytest.raises(errors.InvalidParams):
                await ledger.history(limit=0)
            with pytest.raises(errors.InvalidParams):
                await ledger.transfer("alice", "alice", "USDC", 1)
        finally:
            await wallet.aclose()


async def test_insufficient_funds_message_and_nothing_moves(tmp_path):
    with trio.fail_after(20):
        wallet, ledger = await started(tmp_path)
        try:
            await ledger.create_account("alice")
            await ledger.deposit("alice", "USDC", 120_000_000, "r1")
            before = await ledger.balances()
            with pytest.raises(errors.InsufficientFunds) as info:
                await ledger.transfer("alice", "default", "USDC", 500_000_000, "big")
            assert info.value.message == "insufficient available USDC: need 500.00, have 120.00"
            with pytest.raises(errors.InsufficientFunds) as info:
                await ledger.withdraw("default", "ZEC", 1, "w")
            assert info.value.message == "insufficient available ZEC: need 0.00000001, have 0.00"
            assert await ledger.balances() == before
            assert len(await ledger.history()) == 1
            # The refused key was not consumed: the same reference works once funds allow it.
            await ledger.deposit("alice", "USDC", 380_000_000, "r2")
            assert (await ledger.transfer("alice", "default", "USDC", 500_000_000, "big"))["repeated"] is False
        finally:
            await wallet.aclose()


async def test_reference_reused_with_other_content_is_a_conflict(tmp_path):
    """Another amount, account or token under a used reference answers Conflict naming it; nothing moves."""
    with trio.fail_after(30):
        wallet, ledger = await started(tmp_path)
        try:
            await ledger.create_account("alice")
            first = await ledger.deposit("default", "USDC", 1_000_000, "chain-tx-9")
            await ledger.deposit("alice", "USDC", 5_000_000, "fund-alice")
            attempts = [ledger.deposit("default", "USDC", 999_000_000, "chain-tx-9"),
                        ledger.deposit("alice", "USDC", 1_000_000, "chain-tx-9"),
                        ledger.deposit("default", "ZEC", 1_000_000, "chain-tx-9")]
            for attempt in attempts:
                with pytest.raises(errors.Conflict) as info:
                    await attempt
                assert info.value.message == (f"idempotency key 'deposit:chain-tx-9' was already used for entry "
                                              f"{first['id']} with different content (kind, accounts, tokens or "
                                              f"amounts)")
                assert info.value.data == {"key": "deposit:chain-tx-9", "entry_id": first["id"]}
            await ledger.withdraw("alice", "USDC", 1_000_000, "wd-1")
            with pytest.raises(errors.Conflict, match="withdraw:wd-1"):
                await ledger.withdraw("alice", "USDC", 2_000_000, "wd-1")
            await ledger.transfer("alice", "default", "USDC", 1_000_000, "tr-1")
            with pytest.raises(errors.Conflict, match="transfer:tr-1"):
                await ledger.transfer("default", "alice", "USDC", 1_000_000, "tr-1")
            with pytest.raises(errors.Conflict, match="transfer:tr-1"):
                await ledger.transfer("alice", "default", "USDC", 1_000_001, "tr-1")
            balances = by_key(await ledger.balances())
            assert balances[("default", "USDC")] == (2_000_000, 0) and balances[("alice", "USDC")] == (3_000_000, 0)
            assert (await ledger.withdraw("alice", "USDC", 1_000_000, "wd-1"))["repeated"] is True
        finally:
            await wallet.aclose()


async def test_idempotency_first_entry_wins(tmp_path):
    with trio.fail_after(30):
        wallet, ledger = await started(tmp_path)
        try:
            first = await ledger.deposit("default", "USDC", 1_000_000, "chain-tx-9")
            again = await ledger.deposit("default", "USDC", 1_000_000, "chain-tx-9")
            assert again == {**first, "repeated": True}
            assert by_key(await ledger.balances("default"))[("default", "USDC")] == (1_000_000, 0)

            await ledger.create_account("bob")
            async with trio.open_nursery() as nursery:
                results = []

                async def send():
                    results.append(await ledger.transfer("default", "bob", "USDC", 10_000, "once"))

                for _ in range(50):
                    nursery.start_soon(send)
            assert len(results) == 50 and len({r["id"] for r in results}) == 1
            assert sum(not r["repeated"] for r in results) == 1
            assert by_key(await ledger.balances("bob"))[("bob", "USDC")] == (10_000, 0)
            assert len(await ledger.history()) == 2
        finally:
            await wallet.aclose()


def _hold_op(tx, postings, key):
    return tx.post_entry(key, "order", postings, memo="limit bid", links=[1, "order:7"])


async def test_holds_lock_consume_release(tmp_path):
    with trio.fail_after(20):
        wallet, ledger = await started(tmp_path)
        try:
            await ledger.deposit("default", "USDC", 10_000_000, "seed")
            entry = await wallet.write(_hold_op, lock_postings("default", "USDC", 4_000_000, "order:7"), "lock:7")
            assert entry["memo"] == "limit bid" and entry["links"] == [1, "order:7"]
            assert entry["postings"][1] == {"account": "default", "token": "USDC", "bucket": "locked",
                                            "amount": "4.00", "amount_minor": 4_000_000, "hold": "order:7"}
            assert by_key(await ledger.balances("default"))[("default", "USDC")] == (6_000_000, 4_000_000)
            fill = [Posting("default", "USDC", -1_500_000, "locked", "order:7"), Posting("fees", "USDC", 1_500_000)]
            await wallet.write(_hold_op, fill, "fill:7")
            assert await wallet.write(lambda tx: tx.hold_remaining("order:7")) == 2_500_000
            with pytest.raises(errors.InsufficientFunds) as info:
                await wallet.write(_hold_op, release_postings("default", "USDC", 3_000_000, "order:7"), "rel:7")
            assert "order:7" in info.value.message or "locked" in info.value.message
            with pytest.raises(errors.InvalidParams):  # a hold belongs to one account and token
                await wallet.write(_hold_op, lock_postings("default", "ZEC", 0 + 1, "order:7"), "lock:7b")
            with pytest.raises(errors.InvalidParams):
                await wallet.write(_hold_op, [Posting("default", "USDC", -1, "locked")], "nohold")
            with pytest.raises(errors.InvalidParams):  # unbalanced
                await wallet.write(_hold_op, [Posting("default", "USDC", -1), Posting("fees", "USDC", 2)], "bad")
            await wallet.write(_hold_op, release_postings("default", "USDC", 2_500_000, "order:7"), "rel:7")
            assert await wallet.write(lambda tx: (tx.hold_remaining("order:7"), tx.balance("default", "USDC"))) \
                == (0, (8_500_000, 0))
            check = await ledger.verify()
            assert check == {"ok": True, "entries": 4, "problems": []}
        finally:
            await wallet.aclose()


async def _build(tmp_path) -> bytes:
    """A small ledger on disk; returns the lookup hash of alice's USDC balance row."""
    wallet, ledger = await started(tmp_path)
    try:
        await ledger.create_account("alice")
        await ledger.create_account("bob")
        await ledger.deposit("alice", "USDC", 300_000_000, "d1")
        await ledger.deposit("bob", "ZEC", 200_000_000, "d2")
        await ledger.transfer("alice", "bob", "USDC", 50_000_000, "t1")
        await ledger.transfer("bob", "alice", "ZEC", 10_000_000, "t2")
        assert (await ledger.verify())["ok"]
        return wallet.keys.lookup("balance", "alice\x00USDC")
    finally:
        await wallet.aclose()


def _raw(tmp_path, *statements):
    conn = sqlite3.connect(tmp_path / "wallet.db")
    rows = [conn.execute(s, *a).fetchall() for s, *a in statements]
    conn.commit()
    conn.close()
    return rows


async def _problems(tmp_path) -> list[str]:
    wallet, ledger = await started(tmp_path)
    try:
        result = await ledger.verify()
        assert result["ok"] is (not result["problems"])
        return result["problems"]
    finally:
        await wallet.aclose()


async def test_flipped_balance_byte_fails_loudly(tmp_path):
    with trio.fail_after(20):
        alice_usdc = await _build(tmp_path)
        [[(rowid, value)]] = _raw(tmp_path, ("SELECT id, value FROM ledger_balances WHERE key_hash = ?",
                                             (alice_usdc,)))
        flipped = bytearray(value)
        flipped[20] ^= 0x01
        _raw(tmp_path, ("UPDATE ledger_balances SET value = ? WHERE id = ?", (bytes(flipped), rowid)))
        wallet, ledger = await started(tmp_path)
        try:
            with pytest.raises(errors.IntegrityError):
                await ledger.balances()
            with pytest.raises(errors.IntegrityError):  # the writer refuses to build on it too
                await ledger.transfer("alice", "bob", "USDC", 1, "after")
            problems = (await ledger.verify())["problems"]
            assert any(f"balance row {rowid} failed authentication" in p for p in problems)
        finally:
            await wallet.aclose()


async def test_swapped_ciphertexts_detected(tmp_path):
    with trio.fail_after(20):
        alice_usdc = await _build(tmp_path)
        [rows] = _raw(tmp_path, ("SELECT id, key_hash, value FROM ledger_balances ORDER BY key_hash != ?, id LIMIT 2",
                                 (alice_usdc,)))
        (id1, _, v1), (id2, _, v2) = rows
        _raw(tmp_path, ("UPDATE ledger_balances SET value = ? WHERE id = ?", (v2, id1)),
             ("UPDATE ledger_balances SET value = ? WHERE id = ?", (v1, id2)))
        wallet, ledger = await started(tmp_path)
        try:
            with pytest.raises(errors.IntegrityError):
                await ledger.balances()
            problems = (await ledger.verify())["problems"]
            assert any(f"balance row {id1} failed authentication" in p for p in problems)
            assert any(f"balance row {id2} failed authentication" in p for p in problems)
        finally:
            await wallet.aclose()
        # Swapping whole rows' contents (lookup hash and value) moves the value away from its rowid: caught as well.
        (id1, k1, v1), (id2, k2, v2) = rows
        _raw(tmp_path, ("UPDATE ledger_balances SET key_hash = ?, value = ? WHERE id = ?", (b"tmp", v2, id1)),
             ("UPDATE ledger_balances SET key_hash = ?, value = ? WHERE id = ?", (k1, v1, id2)),
             ("UPDATE ledger_balances SET key_hash = ? WHERE id = ?", (k2, id1)))
        wallet, ledger = await started(tmp_path)
        try:
            with pytest.raises(errors.IntegrityError):
                await ledger.balances()
        finally:
            await wallet.aclose()


async def test_swapped_lookup_hashes_detected(tmp_path):
    with trio.fail_after(20):
        alice_usdc = await _build(tmp_path)
        [rows] = _raw(tmp_path, ("SELECT id, key_hash FROM ledger_balances ORDER BY key_hash != ?, id LIMIT 2",
                                 (alice_usdc,)))
        (id1, k1), (id2, k2) = rows
        _raw(tmp_path, ("UPDATE ledger_balances SET key_hash = ? WHERE id = ?", (b"tmp", id1)),
             ("UPDATE ledger_balances SET key_hash = ? WHERE id = ?", (k1, id2)),
             ("UPDATE ledger_balances SET key_hash = ? WHERE id = ?", (k2, id1)))
        wallet, ledger = await started(tmp_path)
        try:
            with pytest.raises(errors.IntegrityError, match="belongs to another row"):
                await ledger.balances("alice")
            problems = (await ledger.verify())["problems"]
            assert any("filed under another account's key" in p for p in problems)
        finally:
            await wallet.aclose()


@pytest.mark.parametrize("attack", ["delete_middle", "delete_last", "reorder", "edit_body", "edit_mac"])
async def test_journal_tampering_reported_by_verify(tmp_path, attack):
    with trio.fail_after(20):
        await _build(tmp_path)
        if attack == "delete_middle":
            _raw(tmp_path, ("DELETE FROM ledger_journal WHERE id = 3",))
        elif attack == "delete_last":
            _raw(tmp_path, ("DELETE FROM ledger_journal WHERE id = (SELECT MAX(id) FROM ledger_journal)",))
        elif attack == "reorder":
            _raw(tmp_path, ("UPDATE ledger_journal SET id = -1 WHERE id = 3",),
                 ("UPDATE ledger_journal SET id = 3 WHERE id = 4",),
                 ("UPDATE ledger_journal SET id = 4 WHERE id = -1",))
        elif attack == "edit_body":
            [[(body,)]] = _raw(tmp_path, ("SELECT body FROM ledger_journal WHERE id = 2",))
            edited = bytearray(body)
            edited[-3] ^= 0x80
            _raw(tmp_path, ("UPDATE ledger_journal SET body = ? WHERE id = 2", (bytes(edited),)))
        else:
            _raw(tmp_path, ("UPDATE ledger_journal SET mac = zeroblob(32) WHERE id = 2",))
        problems = await _problems(tmp_path)
        assert problems, attack
        if attack == "delete_last":
            assert any("journal head" in p for p in problems)
        else:
            assert any("chain MAC mismatch" in p or "failed authentication" in p for p in problems)


async def test_stolen_data_dir_shows_no_names_references_or_amounts(tmp_path):
    secrets_in_clear = ["zanzibar-treasury", "quixotic-vault", "ref-hippopotamus-4417", "ref-axolotl-9902",
                        "memo-platypus-dream", "order:kumquat-31", "73519846", "73.519846", "2468013", "2.468013",
                        "71051833", "71.051833", "USDC", "deposit", "transfer"]
    with trio.fail_after(30):
        wallet, ledger = await started(tmp_path / "data")
        try:
            await ledger.create_account("zanzibar-treasury")
            await ledger.create_account("quixotic-vault")
            await ledger.deposit("zanzibar-treasury", "USDC", 73_519_846, "ref-hippopotamus-4417")
            await ledger.transfer("zanzibar-treasury", "quixotic-vault", "USDC", 2_468_013, "ref-axolotl-9902")
            await wallet.write(lambda tx: tx.post_entry(
                "order:kumquat-31", "order", lock_postings("quixotic-vault", "USDC", 1_000, "order:kumquat-31"),
                memo="memo-platypus-dream"))
            await wallet.backup(tmp_path / "backup.db")
            files = sorted((tmp_path / "data").iterdir()) + [tmp_path / "backup.db"]
            assert {f.name for f in files} >= {"wallet.db", "wallet.db-wal", "backup.db"}
            for path in files:
                raw = path.read_bytes()
                for text in secrets_in_clear:
                    assert text.encode() not in raw, f"{text!r} found in clear in {path.name}"
            assert wallet.public_id.encode() in (tmp_path / "backup.db").read_bytes()  # the public id is public
        finally:
            await wallet.aclose()
