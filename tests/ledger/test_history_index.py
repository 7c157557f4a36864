"""ledger.history by account reads the account's entries only, through an HMAC-keyed index."""

from __future__ import annotations

import sqlite3

import trio
from test_ledger import started

from tachyond.ledger.journal import Posting


def _many(tx, start: int, count: int, alice_every: int) -> None:
    for i in range(start, start + count):
        account = "alice" if i % alice_every == 0 else "bob"
        tx.post_entry(f"deposit:{i}", "deposit", [Posting("external:chain", "USDC", -1), Posting(account, "USDC", 1)])


async def test_history_of_an_account_with_10_entries_in_50000_reads_10_rows(tmp_path):
    with trio.fail_after(240):
        wallet, ledger = await started(tmp_path / "data")
        try:
            await ledger.create_account("alice")
            await ledger.create_account("bob")
            for start in range(0, 50_000, 5_000):
                await wallet.write(_many, start, 5_000, 5_000)  # alice: entries 0, 5000, ... 45000
            assert (await ledger.verify())["entries"] == 50_000

            before = ledger.history_rows_read
            alice = await ledger.history("alice", limit=100)
            assert len(alice) == 10 and [e["key"] for e in alice] == [f"deposit:{i}" for i in range(45_000, -1, -5_000)]
            assert ledger.history_rows_read - before == 10  # not 50,000: the index names alice's rows

            before = ledger.history_rows_read
            page = await ledger.history("alice", limit=3, before=alice[2]["id"])
            assert page == alice[3:6] and ledger.history_rows_read - before == 3

            before = ledger.history_rows_read
            assert len(await ledger.history("bob", limit=20)) == 20 and ledger.history_rows_read - before == 20
            assert await ledger.history("nobody-here", limit=5) == []

            # The index holds HMACs of account names, never the names; each entry once per account it touches.
            await wallet.aclose()
            with sqlite3.connect(tmp_path / "data" / "wallet.db") as conn:
                assert conn.execute("SELECT count(*) FROM ledger_history").fetchone()[0] == 2 * 50_000
                raw = b"".join(bytes(r[0]) for r in conn.execute("SELECT DISTINCT account_tag FROM ledger_history"))
                assert b"alice" not in raw and b"bob" not in raw and len(raw) == 3 * 32
        finally:
            await wallet.aclose()


async def test_account_tags_are_keyed_per_wallet(tmp_path):
    """Two wallets, the same account names and entries: no tag in common, so tags cannot be matched across
    stolen files or backups of different wallets (the key is derived from each wallet's random data key)."""
    tags = []
    with trio.fail_after(60):
        for name in ("one", "two"):
            wallet, ledger = await started(tmp_path / name)
            try:
                await ledger.create_account("alice")
                await ledger.create_account("bob")
                await wallet.write(_many, 0, 4, 2)
            finally:
                await wallet.aclose()
            with sqlite3.connect(tmp_path / name / "wallet.db") as conn:
                tags.append({bytes(r[0]) for r in conn.execute("SELECT DISTINCT account_tag FROM ledger_history")})
    assert len(tags[0]) == len(tags[1]) == 3  # alice, bob, external:chain
    assert not tags[0] & tags[1]
