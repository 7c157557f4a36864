"""The built-in engines' in-transaction methods (docs/engines.md, "In-transaction engines") on a real wallet.

``submit_in_tx``/``cancel_in_tx`` run inside ``wallet.write`` (the writer thread, the wallet's transaction) and
give exactly the events of the plain async methods; ``reset_in_tx`` empties the books and keeps numbering
after the last seq; the SQLite engine's ``in_wallet`` log commits or rolls back with the wallet's transaction.
"""

from __future__ import annotations

import os
import random
import sqlite3

import pytest
import trio
from tachyon_memory_engine import MemoryEngine
from tachyon_sqlite_engine import SqliteEngine

from tachyond.engine import EngineContext, EngineOrder, MarketSpec, is_transactional
from tachyond.errors import EngineError
from tachyond.wallet.crypto import Cipher
from tachyond.wallet.wallet import Wallet

M = "ZEC/USDC"
MARKETS = [MarketSpec(M, "ZEC", "USDC", "0.01", "0.001")]
PW = "in tx engines password"


def _stream(n: int) -> list[tuple]:
    rnd = random.Random(7)
    ops: list[tuple] = []
    for i in range(n):
        if i > 5 and rnd.random() < 0.25:
            ops.append(("cancel", f"o{rnd.randrange(i)}"))
        else:
            ops.append(("submit", EngineOrder(f"o{i}", M, f"u{rnd.randrange(4)}", rnd.choice(["buy", "sell"]),
                                              100 + rnd.randint(-5, 5), rnd.randint(1, 9),
                                              rnd.choice(["gtc", "gtc", "gtc", "ioc", "fok"]), rnd.random() < 0.1)))
    return ops


def _engine(kind: str, wallet: Wallet, data_dir) -> object:
    if kind == "memory":
        return MemoryEngine(EngineContext("memory", data_dir, None, {}))
    return SqliteEngine(EngineContext("sqlite", data_dir, wallet.cipher, {"in_wallet": True}))


def _wallet(tmp_path) -> Wallet:
    wallet = Wallet(tmp_path / "data", scrypt_n=2**10)
    schema, sealed = SqliteEngine.tx_tables({"in_wallet": True})
    wallet.add_schema("engine:sqlite", schema)
    for table, columns in sealed.items():
        wallet.add_rekey(table, sealed=columns)
    return wallet


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_in_tx_methods_give_the_events_of_the_plain_methods(tmp_path, kind):
    with trio.fail_after(30):
        async with _wallet(tmp_path) as wallet:
            await wallet.create(PW)
            engine = _engine(kind, wallet, tmp_path / "data")
            reference = MemoryEngine(EngineContext("memory", tmp_path, None, {}))
            for e in (engine, reference):
                await e.start(MARKETS)   # type: ignore[attr-defined]
            assert is_transactional(engine)
            await wallet.write(lambda tx: engine.reset_in_tx(tx))   # type: ignore[attr-defined]
            for op, arg in _stream(300):
                if op == "submit":
                    got = await wallet.write(lambda tx, o=arg: engine.submit_in_tx(tx, o))  # type: ignore[attr-defined]
                    assert got == await reference.submit(arg)
                else:
                    got = await wallet.write(lambda tx, i=arg: engine.cancel_in_tx(tx, M, i))  # type: ignore[attr-defined]
                    assert got == await reference.cancel(M, arg)
            assert await engine.depth(M, 50) == await reference.depth(M, 50)   # type: ignore[attr-defined]
            assert await engine.open_orders(M) == await reference.open_orders(M)   # type: ignore[attr-defined]
            last = await reference.last_seq()
            # reset: empty books, the numbering goes on
            assert await wallet.write(lambda tx: engine.reset_in_tx(tx)) == last  # type: ignore[attr-defined]
            assert (await engine.depth(M, 50)).bids == [] and await engine.open_orders(M) == []  # type: ignore[attr-defined]
            [ev] = await wallet.write(lambda tx: engine.submit_in_tx(  # type: ignore[attr-defined]
                tx, EngineOrder("again", M, "u0", "buy", 1, 1)))
            assert (ev.seq, ev.kind) == (last + 1, "rested")
            await engine.aclose()   # type: ignore[attr-defined]


async def test_the_sqlite_in_wallet_log_commits_and_rolls_back_with_the_wallet(tmp_path):
    """Events written in a transaction that rolls back are not in the file; a new instance numbers after the
    highest committed seq; the engine keeps no file of its own."""
    with trio.fail_after(30):
        async with _wallet(tmp_path) as wallet:
            await wallet.create(PW)
            engine = SqliteEngine(EngineContext("sqlite", tmp_path / "data", wallet.cipher, {"in_wallet": True}))
            await engine.start(MARKETS)
            assert await wallet.write(engine.reset_in_tx) == 0
            await wallet.write(lambda tx: engine.submit_in_tx(tx, EngineOrder("a", M, "u", "sell", 100, 2)))

            def boom(tx):
                engine.submit_in_tx(tx, EngineOrder("b", M, "v", "buy", 100, 1))
                raise RuntimeError("rolled back")

            with pytest.raises(RuntimeError):
                await wallet.write(boom)
            assert await engine.last_seq() == 3      # the engine matched (a fill): the core would re-seed it now
            await engine.aclose()
            again = SqliteEngine(EngineContext("sqlite", tmp_path / "data", wallet.cipher, {"in_wallet": True}))
            await again.start(MARKETS)
            assert await wallet.write(again.reset_in_tx) == 1   # only "a rested" (seq 1) was committed
            await again.aclose()
        assert not list((tmp_path / "data").glob("engine-sqlite.db*"))
        with sqlite3.connect(tmp_path / "data" / "wallet.db") as conn:
            assert [r[0] for r in conn.execute("SELECT id FROM engine_sqlite_events")] == [1]


async def test_the_sqlite_engine_is_in_the_wallet_by_default_and_refuses_a_plain_submit(tmp_path):
    """No [engines.sqlite] table: the log is a wallet table (declared to the core), the engine matches only in
    the wallet's transaction, and a plain submit is refused by name (nothing matched, no file made);
    ``in_wallet = false`` is the file mode."""
    assert SqliteEngine.tx_tables({}) == SqliteEngine.tx_tables({"in_wallet": True})
    assert SqliteEngine.tx_tables({"in_wallet": False}) == ([], {})
    with trio.fail_after(30):
        engine = SqliteEngine(EngineContext("sqlite", tmp_path, Cipher(os.urandom(32))))
        assert engine.in_tx
        await engine.start(MARKETS)
        with pytest.raises(EngineError, match=r"in_wallet, its default.*in_wallet = false"):
            await engine.submit(EngineOrder("o1", M, "u", "buy", 100, 1))
        assert await engine.last_seq() == 0 and (await engine.depth(M, 5)).bids == []
        await engine.aclose()
        assert not list(tmp_path.glob("engine-sqlite.db*"))
        own = SqliteEngine(EngineContext("sqlite", tmp_path, Cipher(os.urandom(32)), {"in_wallet": False}))
        assert not own.in_tx
        await own.start(MARKETS)
        [ev] = await own.submit(EngineOrder("o1", M, "u", "buy", 100, 1))
        assert ev.kind == "rested" and (tmp_path / "engine-sqlite.db").exists()
        await own.aclose()


def test_a_subclass_overriding_submit_only_is_not_treated_as_in_tx():
    class Liar(MemoryEngine):
        async def submit(self, order):
            return await super().submit(order)

    assert is_transactional(MemoryEngine(EngineContext("memory", None, None, {})))  # type: ignore[arg-type]
    assert not is_transactional(Liar(EngineContext("memory", None, None, {})))  # type: ignore[arg-type]
    sqlite_file_mode = SqliteEngine.__new__(SqliteEngine)
    sqlite_file_mode.in_tx = False
    assert not is_transactional(sqlite_file_mode)
