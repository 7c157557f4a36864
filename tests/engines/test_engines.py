"""The matching rules on both built-in engines, and the SQLite engine's restart, encryption and compaction."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pluggy
import pytest
import trio
from tachyon_memory_engine import MemoryEngine
from tachyon_sqlite_engine import SqliteEngine

from tachyond import PROJECT, hookspecs
from tachyond.engine import EngineContext, EngineOrder, Event, MarketSpec, OrderBookEngine
from tachyond.errors import EngineError, IntegrityError, UnknownMarket
from tachyond.wallet.crypto import Cipher

M = "ZEC/USDC"
M2 = "BTC/USDC"
MARKETS = [MarketSpec(M, "ZEC", "USDC", "0.01", "0.001"), MarketSpec(M2, "BTC", "USDC", "0.01", "0.0001")]
TIMEOUT_S = 15
ROOT = Path(__file__).resolve().parent.parent.parent


def order(order_id: str, side: str, price: int, qty: int, owner: str = "alice", tif: str = "gtc",
          post_only: bool = False, market: str = M) -> EngineOrder:
    return EngineOrder(order_id, market, owner, side, price, qty, tif, post_only)


def fill(seq: int, taker: str, maker: str, qty: int, price: int, side: str, market: str = M) -> Event:
    return Event(seq, market, "fill", taker, qty, price, maker, side)


def done(seq: int, order_id: str, qty: int, reason: str, market: str = M) -> Event:
    return Event(seq, market, "done", order_id, qty, reason=reason)


def rested(seq: int, order_id: str, qty: int, market: str = M) -> Event:
    return Event(seq, market, "rested", order_id, qty)


def make_engine(kind: str, data_dir: Path, cipher: Cipher | None = None, **config) -> OrderBookEngine:
    if kind == "memory":
        return MemoryEngine(EngineContext("memory", data_dir, None, config))
    # These tests drive the engine by itself (no wallet): the sqlite engine in its file mode, engine-sqlite.db
    # (the default, in_wallet, runs in the wallet's transaction: tests/engines/test_engines_in_tx.py).
    config.setdefault("in_wallet", False)
    return SqliteEngine(EngineContext("sqlite", data_dir, cipher or Cipher(os.urandom(32)), config))


@pytest.fixture(params=["memory", "sqlite"])
async def engine(request, tmp_path):
    eng = make_engine(request.param, tmp_path)
    with trio.fail_after(TIMEOUT_S):
        await eng.start(MARKETS)
    yield eng
    with trio.fail_after(TIMEOUT_S):
        await eng.aclose()


async def submit_all(eng, *orders: EngineOrder) -> list[Event]:
    events: list[Event] = []
    for o in orders:
        events += await eng.submit(o)
    return events


async def test_engines_satisfy_the_protocol(engine):
    assert isinstance(engine, OrderBookEngine)
    assert engine.durable is isinstance(engine, SqliteEngine)


def test_plugins_register_their_engines_through_the_hook():
    import tachyon_memory_engine
    import tachyon_sqlite_engine

    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(tachyon_memory_engine)
    pm.register(tachyon_sqlite_engine)
    pm.check_pending()
    registered: dict[str, object] = {}
    pm.hook.register_engines(register=registered.__setitem__)
    assert registered == {"memory": MemoryEngine, "sqlite": SqliteEngine}


async def test_price_time_priority(engine):
    with trio.fail_after(TIMEOUT_S):
        await submit_all(engine, order("a1", "sell", 101, 1, "bob"), order("a2", "sell", 100, 1, "carol"),
                         order("a3", "sell", 100, 1, "dave"))
        events = await engine.submit(order("b1", "buy", 101, 3))
    assert events == [fill(4, "b1", "a2", 1, 100, "buy"), done(5, "a2", 0, "filled"),
                      fill(6, "b1", "a3", 1, 100, "buy"), done(7, "a3", 0, "filled"),
                      fill(8, "b1", "a1", 1, 101, "buy"), done(9, "a1", 0, "filled"),
                      done(10, "b1", 0, "filled")]


async def test_partial_fills_leave_the_maker_or_rest_the_taker(engine):
    with trio.fail_after(TIMEOUT_S):
        await engine.submit(order("a1", "sell", 100, 10, "bob"))
        small = await engine.submit(order("b1", "buy", 100, 4))
        assert small == [fill(2, "b1", "a1", 4, 100, "buy"), done(3, "b1", 0, "filled")]
        assert [(o.order_id, o.qty_lots) for o in await engine.open_orders(M)] == [("a1", 6)]
        big = await engine.submit(order("b2", "buy", 100, 9))
        assert big == [fill(4, "b2", "a1", 6, 100, "buy"), done(5, "a1", 0, "filled"), rested(6, "b2", 3)]
        assert [(o.order_id, o.side, o.qty_lots) for o in await engine.open_orders(M)] == [("b2", "buy", 3)]


async def test_fills_happen_at_the_makers_price(engine):
    with trio.fail_after(TIMEOUT_S):
        await submit_all(engine, order("b1", "buy", 95, 2, "bob"), order("b2", "buy", 90, 2, "bob"))
        events = await engine.submit(order("s1", "sell", 80, 3))
    assert [(e.kind, e.price_ticks, e.qty_lots) for e in events if e.kind == "fill"] == [("fill", 95, 2),
                                                                                         ("fill", 90, 1)]
    assert all(e.taker_side == "sell" for e in events if e.kind == "fill")


async def test_ioc_expires_the_remainder(engine):
    with trio.fail_after(TIMEOUT_S):
        await engine.submit(order("a1", "sell", 100, 2, "bob"))
        events = await engine.submit(order("b1", "buy", 100, 5, tif="ioc"))
        assert events == [fill(2, "b1", "a1", 2, 100, "buy"), done(3, "a1", 0, "filled"),
                          done(4, "b1", 3, "expired")]
        assert await engine.submit(order("b2", "buy", 100, 5, tif="ioc")) == [done(5, "b2", 5, "expired")]
        assert await engine.open_orders(M) == []


async def test_fok_is_all_or_nothing(engine):
    with trio.fail_after(TIMEOUT_S):
        await submit_all(engine, order("a1", "sell", 100, 2, "bob"), order("a2", "sell", 101, 2, "carol"))
        assert await engine.submit(order("f1", "buy", 101, 5, tif="fok")) == [done(3, "f1", 5, "expired")]
        assert [o.qty_lots for o in await engine.open_orders(M)] == [2, 2]
        # Liquidity beyond the limit price does not count.
        assert await engine.submit(order("f2", "buy", 100, 3, tif="fok")) == [done(4, "f2", 3, "expired")]
        events = await engine.submit(order("f3", "buy", 101, 3, tif="fok"))
        assert events == [fill(5, "f3", "a1", 2, 100, "buy"), done(6, "a1", 0, "filled"),
                          fill(7, "f3", "a2", 1, 101, "buy"), done(8, "f3", 0, "filled")]


async def test_fok_counts_self_trade_prevention(engine):
    with trio.fail_after(TIMEOUT_S):
        await submit_all(engine, order("a1", "sell", 100, 2, "bob"), order("a2", "sell", 100, 5, "alice"),
                         order("a3", "sell", 100, 5, "carol"))
        # 12 lots cross, but alice's own a2 stops the walk after bob's 2: the FOK expires untouched.
        assert await engine.submit(order("f1", "buy", 100, 4, "alice", "fok")) == [done(4, "f1", 4, "expired")]
        events = await engine.submit(order("f2", "buy", 100, 2, "alice", "fok"))
        assert events == [fill(5, "f2", "a1", 2, 100, "buy"), done(6, "a1", 0, "filled"), done(7, "f2", 0, "filled")]


async def test_post_only_never_takes(engine):
    with trio.fail_after(TIMEOUT_S):
        await engine.submit(order("a1", "sell", 100, 2, "bob"))
        assert await engine.submit(order("p1", "buy", 100, 1, post_only=True)) == [done(2, "p1", 1, "post_only")]
        assert await engine.submit(order("p2", "buy", 99, 1, post_only=True)) == [rested(3, "p2", 1)]
        orders = await engine.open_orders(M)
        assert [(o.order_id, o.qty_lots, o.post_only) for o in orders] == [("a1", 2, False), ("p2", 1, True)]


async def test_self_trade_prevention_cancels_the_taker_remainder(engine):
    with trio.fail_after(TIMEOUT_S):
        await submit_all(engine, order("a1", "sell", 100, 2, "bob"), order("a2", "sell", 101, 3, "alice"),
                         order("a3", "sell", 101, 3, "carol"))
        events = await engine.submit(order("b1", "buy", 105, 10, "alice"))
        assert events == [fill(4, "b1", "a1", 2, 100, "buy"), done(5, "a1", 0, "filled"),
                          done(6, "b1", 8, "self_trade")]
        # The resting order of the same owner is untouched, and so is the one behind it.
        assert [(o.order_id, o.qty_lots) for o in await engine.open_orders(M)] == [("a2", 3), ("a3", 3)]


async def test_cancel(engine):
    with trio.fail_after(TIMEOUT_S):
        await engine.submit(order("a1", "sell", 100, 5, "bob"))
        await engine.submit(order("b1", "buy", 100, 2))
        assert await engine.cancel(M, "a1") == [done(4, "a1", 3, "canceled")]
        assert await engine.cancel(M, "a1") == []
        assert await engine.cancel(M, "b1") == []       # finished, never rested
        assert await engine.cancel(M, "nope") == []
        assert await engine.open_orders(M) == []
        assert await engine.last_seq() == 4
        with pytest.raises(UnknownMarket):
            await engine.cancel("DOGE/USDC", "a1")


async def test_cancels_inside_a_queue_keep_priority_depth_and_fok_exact(engine):
    """Canceled orders behind the head of a level are skipped by matching, FOK and depth; a level whose every
    order was canceled disappears, even when the cancels came in any order, and the best price moves on."""
    with trio.fail_after(TIMEOUT_S):
        for i in range(40):   # one level of 40 asks at 100, owners alternating
            await engine.submit(order(f"a{i}", "sell", 100, 1, "bob" if i % 2 else "carol"))
        await engine.submit(order("far", "sell", 105, 7, "bob"))
        for i in range(1, 39):   # cancel everything but the first and the last, out of order
            i = 1 + (i * 7) % 38
            assert await engine.cancel(M, f"a{i}") == [done(await engine.last_seq(), f"a{i}", 1, "canceled")]
        assert (await engine.depth(M, 3)).asks == [(100, 2), (105, 7)]
        assert [o.order_id for o in await engine.open_orders(M)] == ["a0", "a39", "far"]
        # FOK for 3 at 100 cannot fill (only 2 live lots there): nothing moves.
        seq = await engine.last_seq()
        assert await engine.submit(order("fok", "buy", 100, 3, "dave", tif="fok")) == [
            done(seq + 1, "fok", 3, "expired")]
        # A taker for 4 up to 105 takes a0, then a39 (skipping the 38 canceled in between), then 2 of far.
        seq += 1
        assert await engine.submit(order("t", "buy", 105, 4, "dave")) == [
            fill(seq + 1, "t", "a0", 1, 100, "buy"), done(seq + 2, "a0", 0, "filled"),
            fill(seq + 3, "t", "a39", 1, 100, "buy"), done(seq + 4, "a39", 0, "filled"),
            fill(seq + 5, "t", "far", 2, 105, "buy"), done(seq + 6, "t", 0, "filled")]
        assert (await engine.depth(M, 3)).asks == [(105, 5)]
        # Cancel every order of a level from the back: the level goes, the best bid falls to the next.
        await submit_all(engine, *(order(f"b{i}", "buy", 90, 1, "bob") for i in range(30)),
                         order("b_low", "buy", 80, 2, "bob"))
        for i in reversed(range(30)):
            await engine.cancel(M, f"b{i}")
        assert (await engine.depth(M, 3)).bids == [(80, 2)]
        await engine.submit(order("s", "sell", 80, 1, "carol"))
        assert (await engine.depth(M, 3)).bids == [(80, 1)]


async def test_depth_aggregates_levels_best_first(engine):
    with trio.fail_after(TIMEOUT_S):
        await submit_all(engine, order("b1", "buy", 98, 1, "bob"), order("b2", "buy", 99, 2, "bob"),
                         order("b3", "buy", 99, 3, "carol"), order("b4", "buy", 97, 4, "bob"),
                         order("a1", "sell", 101, 5, "bob"), order("a2", "sell", 103, 6, "bob"),
                         order("a3", "sell", 101, 7, "carol"))
        depth = await engine.depth(M, 2)
        assert (depth.seq, depth.bids, depth.asks) == (7, [(99, 5), (98, 1)], [(101, 12), (103, 6)])
        full = await engine.depth(M, 10)
        assert full.bids == [(99, 5), (98, 1), (97, 4)] and full.asks == [(101, 12), (103, 6)]
        await engine.submit(order("t1", "sell", 99, 4, "dave"))
        assert (await engine.depth(M, 1)).bids == [(99, 1)]
        assert (await engine.depth(M2, 5)).bids == []


async def test_open_orders_are_in_time_priority_order(engine):
    with trio.fail_after(TIMEOUT_S):
        await submit_all(engine, order("o1", "buy", 90, 1, "bob"), order("o2", "sell", 110, 1, "bob"),
                         order("o3", "buy", 95, 1, "bob"), order("o4", "buy", 90, 2, "bob"),
                         order("x1", "buy", 90, 1, "bob", market=M2))
        await engine.cancel(M, "o3")
        orders = await engine.open_orders(M)
        assert [o.order_id for o in orders] == ["o1", "o2", "o4"]
        assert orders[2] == EngineOrder("o4", M, "bob", "buy", 90, 2, "gtc", False)


async def test_sequence_is_continuous_across_markets(engine):
    with trio.fail_after(TIMEOUT_S):
        events = await submit_all(engine, order("a1", "sell", 100, 1, "bob"),
                                  order("x1", "sell", 100, 1, "bob", market=M2),
                                  order("b1", "buy", 100, 2), order("y1", "buy", 100, 1, market=M2))
        events += await engine.cancel(M, "b1")
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert {e.market for e in events} == {M, M2}
    assert await engine.last_seq() == len(events)


async def test_events_after_returns_the_log_in_order(engine):
    with trio.fail_after(TIMEOUT_S):
        assert await engine.events_after(0) == []
        events = await submit_all(engine, order("a1", "sell", 100, 1, "bob"), order("a2", "sell", 100, 1, "bob"),
                                  order("b1", "buy", 100, 2))
        assert await engine.events_after(0) == events
        assert await engine.events_after(2) == events[2:]
        assert await engine.events_after(1, limit=2) == events[1:3]
        assert await engine.events_after(len(events)) == []


async def test_duplicate_order_id_is_an_error(engine):
    with trio.fail_after(TIMEOUT_S):
        await engine.submit(order("a1", "sell", 100, 1, "bob"))
        await engine.submit(order("f1", "buy", 50, 1, tif="ioc"))
        for again in (order("a1", "sell", 100, 1, "bob"), order("f1", "buy", 50, 1),
                      order("a1", "buy", 10, 1, "zoe", market=M2)):
            with pytest.raises(EngineError, match="already"):
                await engine.submit(again)
        assert await engine.last_seq() == 2
        assert [o.order_id for o in await engine.open_orders(M)] == ["a1"]


async def test_malformed_orders_and_unknown_markets_are_refused(engine):
    with trio.fail_after(TIMEOUT_S):
        for bad in (order("z1", "buy", 0, 1), order("z2", "buy", 10, -1), order("z3", "hold", 10, 1),
                    order("z4", "buy", 10, 1, tif="day")):
            with pytest.raises(EngineError):
                await engine.submit(bad)
        with pytest.raises(UnknownMarket):
            await engine.submit(order("z5", "buy", 10, 1, market="DOGE/USDC"))
        assert await engine.last_seq() == 0
        assert await engine.submit(order("z1", "buy", 10, 1)) == [rested(1, "z1", 1)]


async def test_memory_engine_compact_drops_applied_events(tmp_path):
    eng = make_engine("memory", tmp_path)
    with trio.fail_after(TIMEOUT_S):
        await eng.start(MARKETS)
        events = await submit_all(eng, *(order(f"o{i}", "buy", 90 + i, 1) for i in range(6)))
        await eng.compact(4)
        assert await eng.events_after(4) == events[4:]
        with pytest.raises(EngineError, match="seq 3"):
            await eng.events_after(3)
        await eng.aclose()


async def test_memory_engine_log_is_bounded(tmp_path):
    eng = make_engine("memory", tmp_path, log_limit=4)
    with trio.fail_after(TIMEOUT_S):
        await eng.start(MARKETS)
        events = await submit_all(eng, *(order(f"o{i}", "buy", 50 + i, 1) for i in range(40)))
        tail = await eng.events_after(36)
        assert tail == events[36:]
        with pytest.raises(EngineError, match="are gone"):
            await eng.events_after(0)
        assert await eng.last_seq() == 40
        await eng.aclose()


# --- SQLite engine ----------------------------------------------------------------------------------------


async def test_sqlite_restart_restores_book_and_sequence(tmp_path):
    cipher = Cipher(os.urandom(32))
    with trio.fail_after(TIMEOUT_S):
        first = make_engine("sqlite", tmp_path, cipher, snapshot_every=4)
        await first.start(MARKETS)
        events = await submit_all(first, order("a1", "sell", 100, 5, "bob"), order("a2", "sell", 101, 5, "carol"),
                                  order("b1", "buy", 100, 2), order("x1", "buy", 7, 3, "dave", market=M2),
                                  order("p1", "buy", 99, 4, "erin", post_only=True))
        await first.compact(3)          # writes a snapshot; later events are replayed from the log
        events += await first.cancel(M, "a2")
        books = {m.symbol: await first.open_orders(m.symbol) for m in MARKETS}
        depth = await first.depth(M, 5)

        with pytest.raises(EngineError, match="in use"):
            await make_engine("sqlite", tmp_path, cipher).start(MARKETS)
        await first.aclose()

        second = make_engine("sqlite", tmp_path, cipher, snapshot_every=4)
        await second.start(MARKETS)
        assert await second.last_seq() == events[-1].seq
        assert {m.symbol: await second.open_orders(m.symbol) for m in MARKETS} == books
        assert await second.depth(M, 5) == depth
        assert await second.events_after(0) == events
        more = await second.submit(order("b2", "buy", 100, 4))
        assert more == [fill(events[-1].seq + 1, "b2", "a1", 3, 100, "buy"),
                        done(events[-1].seq + 2, "a1", 0, "filled"), rested(events[-1].seq + 3, "b2", 1)]
        with pytest.raises(EngineError, match="already"):
            await second.submit(order("b1", "buy", 100, 1))
        await second.aclose()

        third = make_engine("sqlite", tmp_path, cipher)   # after a clean close: from its closing snapshot
        await third.start(MARKETS)
        assert await third.last_seq() == more[-1].seq
        assert [(o.order_id, o.qty_lots) for o in await third.open_orders(M)] == [("p1", 4), ("b2", 1)]
        await third.aclose()


CRASH_CHILD = """
import json, os, sys, trio
from pathlib import Path
from tachyon_sqlite_engine import SqliteEngine
from tachyond.engine import EngineContext, EngineOrder, MarketSpec
from tachyond.wallet.crypto import Cipher

async def main():
    eng = SqliteEngine(EngineContext("sqlite", Path(sys.argv[1]), Cipher(bytes.fromhex(sys.argv[2])),
                                     {"snapshot_every": 3, "in_wallet": False}))
    await eng.start([MarketSpec("ZEC/USDC", "ZEC", "USDC", "0.01", "0.001")])
    events = []
    for i in range(12):
        side = "buy" if i % 3 else "sell"
        events += await eng.submit(EngineOrder(f"o{i}", "ZEC/USDC", f"u{i % 4}", side, 100 - i % 5, 1 + i % 4))
        if i < 9:
            await eng.compact(events[-1].seq)
    books = [o.__dict__ for o in await eng.open_orders("ZEC/USDC")]
    print(json.dumps({"events": [e.to_dict() for e in events], "books": books}), flush=True)
    await trio.sleep_forever()

trio.run(main)
"""


async def test_sqlite_survives_sigkill_after_submit_returns(tmp_path):
    """A process killed right after its submits returned: a new instance has every event and the same book."""
    key = os.urandom(32)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    proc = subprocess.Popen([sys.executable, "-c", CRASH_CHILD, str(tmp_path), key.hex()],
                            stdout=subprocess.PIPE, env=env)
    try:
        with trio.fail_after(TIMEOUT_S):
            line = await trio.to_thread.run_sync(proc.stdout.readline)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    reported = json.loads(line)
    events = [Event.from_dict(d) for d in reported["events"]]
    assert len(events) >= 12
    with sqlite3.connect(tmp_path / "engine-sqlite.db") as conn:   # a snapshot, then events to replay after it
        assert 0 < conn.execute("SELECT max(seq) FROM snapshots").fetchone()[0] < events[-1].seq
    with trio.fail_after(TIMEOUT_S):
        survivor = make_engine("sqlite", tmp_path, Cipher(key))
        await survivor.start(MARKETS)
        assert await survivor.last_seq() == events[-1].seq
        assert await survivor.events_after(0) == events
        assert [o.__dict__ for o in await survivor.open_orders(M)] == reported["books"]
        await survivor.aclose()


async def test_sqlite_concurrent_submits_commit_in_groups(tmp_path):
    eng = make_engine("sqlite", tmp_path)
    results: dict[str, list[Event]] = {}

    async def place(i: int) -> None:
        side = "buy" if i % 2 else "sell"
        results[f"o{i}"] = await eng.submit(order(f"o{i}", side, 100, 1 + i % 3, f"owner{i % 5}"))

    with trio.fail_after(TIMEOUT_S):
        await eng.start(MARKETS)
        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(place, i)
        returned = sorted((e for evs in results.values() for e in evs), key=lambda e: e.seq)
        assert [e.seq for e in returned] == list(range(1, len(returned) + 1))
        assert await eng.events_after(0) == returned
        await eng.aclose()


async def test_sqlite_values_are_encrypted_at_rest(tmp_path):
    eng = make_engine("sqlite", tmp_path, snapshot_every=1)
    with trio.fail_after(TIMEOUT_S):
        await eng.start(MARKETS)
        await eng.submit(order("order-zebra-7781", "sell", 987654321, 424242, "owner-quokka"))
        await eng.submit(order("order-yak-9912", "buy", 987654321, 1, "owner-wombat"))
        await eng.compact(0)   # a snapshot of the book too
        await eng.aclose()
    raw = b"".join(p.read_bytes() for p in sorted(tmp_path.iterdir()))
    with sqlite3.connect(tmp_path / "engine-sqlite.db") as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 3   # rested, fill, done
        assert conn.execute("SELECT count(*) FROM snapshots").fetchone()[0] == 1
    for secret in (b"zebra", b"yak-9912", b"quokka", b"wombat", b"987654321", b"424242", b"ZEC/USDC", b"rested"):
        assert secret not in raw


async def test_sqlite_moved_ciphertext_fails_authentication(tmp_path):
    cipher = Cipher(os.urandom(32))
    eng = make_engine("sqlite", tmp_path, cipher)
    with trio.fail_after(TIMEOUT_S):
        await eng.start(MARKETS)
        await submit_all(eng, order("a1", "sell", 100, 1, "bob"), order("a2", "sell", 101, 1, "bob"))
        await eng.aclose()
    with sqlite3.connect(tmp_path / "engine-sqlite.db") as conn:
        conn.execute("DELETE FROM snapshots")   # force replay from the log
        conn.execute("UPDATE events SET body = (SELECT body FROM events WHERE seq = 2) WHERE seq = 1")
    with trio.fail_after(TIMEOUT_S):
        with pytest.raises(IntegrityError, match="events"):
            await make_engine("sqlite", tmp_path, cipher).start(MARKETS)


async def test_sqlite_compaction_keeps_unapplied_events(tmp_path):
    cipher = Cipher(os.urandom(32))
    config = {"snapshot_every": 5, "retain_events": 2}
    with trio.fail_after(TIMEOUT_S):
        eng = make_engine("sqlite", tmp_path, cipher, **config)
        await eng.start(MARKETS)
        events = await submit_all(eng, *(order(f"o{i}", "buy", 100 + i, 1, "bob") for i in range(20)))
        await eng.compact(applied_seq=8)          # snapshot at 20; drop <= min(8, 20) - 2 = 6
        assert await eng.events_after(6) == events[6:]
        assert await eng.events_after(8) == events[8:]       # every unapplied event is still there
        with pytest.raises(EngineError, match="compacted"):
            await eng.events_after(5)
        await eng.compact(applied_seq=20)          # no new snapshot due: drop <= 20 - 2
        with pytest.raises(EngineError, match="compacted"):
            await eng.events_after(17)
        await eng.aclose()

        again = make_engine("sqlite", tmp_path, cipher, **config)
        await again.start(MARKETS)
        assert await again.events_after(18) == events[18:]
        with pytest.raises(EngineError, match="compacted"):
            await again.events_after(0)
        assert len(await again.open_orders(M)) == 20
        assert await again.submit(order("o20", "sell", 200, 1, "carol")) == [rested(21, "o20", 1)]
        await again.aclose()
    with sqlite3.connect(tmp_path / "engine-sqlite.db") as conn:
        assert conn.execute("SELECT min(seq), max(seq) FROM events").fetchone() == (19, 21)
        assert conn.execute("SELECT count(*) FROM snapshots").fetchone()[0] == 1


async def test_sqlite_engine_needs_a_cipher(tmp_path):
    with pytest.raises(EngineError, match="cipher"):
        SqliteEngine(EngineContext("sqlite", tmp_path, None))
