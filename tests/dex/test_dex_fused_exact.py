"""The in-transaction settlement path (tachyond/dex/fused.py) pinned exactly, in-process on a real wallet file.

``place_orders_op``, ``cancel_op``, ``reseed_op`` and ``settle_in_tx`` run inside ``wallet.write`` with the real
memory engine plugin's in-transaction methods, as the service runs them: the exact entries, holds, fees, trades
and applied seq of a batch with fills; refusals and client_order_id repeats in a batch; an event that does not
fit this wallet's orders rolling the whole operation back; a cancel's release; a re-seed. Fast on purpose: this
file is in `make mutate`'s test selection (docs/reliability.md).
"""

from __future__ import annotations

import copy

import pytest
import trio
from tachyon_memory_engine import MemoryEngine
from tachyon_sqlite_engine import SqliteEngine
from test_money_exact import PW, TOKENS, bal, market, new_order, postings_of, record, started

from tachyond.dex.fused import EngineEventRefused, InjectedFault, cancel_op, place_orders_op, reseed_op, settle_in_tx
from tachyond.dex.store import DEX_SCHEMA, engine_seqs_read, open_orders_read, order_read, settle_op, trades_read
from tachyond.engine import EngineContext, EngineOrder, Event, MarketSpec
from tachyond.ledger.service import Ledger
from tachyond.wallet.wallet import Wallet

M = "ZEC/USDC"
SPECS = [MarketSpec(M, "ZEC", "USDC", "0.01", "0.0001")]
OWNERS = {"maker": "om", "taker": "ot", "default": "od"}


def _eo(order: dict, **change) -> EngineOrder:
    """The engine order the service builds for a ledger order (the remaining lots)."""
    eo = EngineOrder(order["id"], order["market"], OWNERS[order["account"]], order["side"], order["price_ticks"],
                     order["qty_lots"] - order["filled_lots"], order["time_in_force"], order["post_only"])
    return EngineOrder(**{**eo.__dict__, **change}) if change else eo


async def _engine(tmp_path) -> MemoryEngine:
    engine = MemoryEngine(EngineContext("memory", tmp_path, None, {}))
    await engine.start(SPECS)
    return engine


async def _setup(tmp_path):
    wallet, ledger = await started(tmp_path / "w", schemas=True)
    for name in ("maker", "taker"):
        await ledger.create_account(name)
    await ledger.deposit("maker", "ZEC", 100_000_000, "m")     # 1 ZEC
    await ledger.deposit("taker", "USDC", 1_000_000, "t")      # 1 USDC
    return wallet, ledger, await _engine(tmp_path)


async def _place(wallet, engine, m, open_orders: dict, orders: list[dict], base: int = 0, fail=None, eos=None):
    """place_orders_op as the service calls it; then the service's bookkeeping of its committed open orders."""
    items = [(o, *m.hold(o["side"], o["price_ticks"], o["qty_lots"], o["post_only"])) for o in orders]
    outcomes, events, result = await wallet.write(place_orders_op, engine, "memory", base, items,
                                                  eos if eos is not None else [_eo(o) for o in orders],
                                                  open_orders, {M: m}, fail)
    _remember(open_orders, [v for k, v in outcomes if k == "new"], result)
    return outcomes, events, result


def _remember(open_orders: dict, new: list[dict], result: dict) -> None:
    for order in new:
        open_orders[order["id"]] = order
    for oid, order in result["orders"].items():
        if order["status"] == "open":
            open_orders[oid] = order
        else:
            open_orders.pop(oid, None)


async def _seqs(wallet) -> dict:
    return await wallet.read(engine_seqs_read)


async def _snapshot(wallet, ledger) -> tuple:
    """Everything an operation could have written: order rows, balances, journal, trades, the engine seqs."""
    rows = await wallet.read(lambda rtx: rtx.conn.execute("SELECT id, is_open FROM dex_orders ORDER BY id").fetchall())
    funds = [await ledger.balances(a) for a in ("maker", "taker")]
    return rows, funds, await ledger.history(limit=100), await wallet.read(trades_read, None, None, 100), \
        await _seqs(wallet)


async def test_a_batch_with_fills_records_matches_and_settles_exactly(tmp_path):
    """A resting ask, then a batch of two bids: one crosses (a partial fill of the ask, the bid filled), one
    rests. Every entry, hold, fee, trade, order state, event and the stored seq (base 100) exactly."""
    m = market(10, 20)
    with trio.fail_after(20):
        wallet, ledger, engine = await _setup(tmp_path)
        try:
            open_orders: dict = {}
            s1 = new_order("s1", "maker", "sell", 5000, 100)
            outcomes, events, result = await _place(wallet, engine, m, open_orders, [s1], base=100)
            assert [k for k, _ in outcomes] == ["new"]
            assert events == [Event(1, M, "rested", "s1", 100)]
            assert result == {"orders": {}, "trades": []}
            assert await _seqs(wallet) == {"memory": (100, 1)}
            [hold] = await ledger.history(limit=1)
            assert (hold["key"], postings_of(hold)) == ("order:s1", [("maker", "ZEC", "available", "-0.01"),
                                                                     ("maker", "ZEC", "locked", "0.01")])

            b1 = new_order("b1", "taker", "buy", 5050, 60)
            b2 = new_order("b2", "taker", "buy", 4900, 10)
            before = copy.deepcopy(open_orders)
            committed = open_orders.copy()
            outcomes, events, result = await wallet.write(
                place_orders_op, engine, "memory", 100,
                [(o, *m.hold(o["side"], o["price_ticks"], o["qty_lots"], o["post_only"])) for o in (b1, b2)],
                [_eo(b1), _eo(b2)], committed, {M: m})
            assert committed == before      # the committed open orders are only read, never changed
            assert [(k, v["id"], v["rowid"]) for k, v in outcomes] == [("new", "b1", 2), ("new", "b2", 3)]
            assert events == [Event(2, M, "fill", "b1", 60, 5000, "s1", "buy"),
                              Event(3, M, "done", "b1", 0, reason="filled"),
                              Event(4, M, "rested", "b2", 10)]
            [trade] = result["trades"]
            assert (trade["seq"], trade["taker_order_id"], trade["maker_order_id"], trade["notional_minor"],
                    trade["taker_fee_minor"], trade["maker_fee_minor"], trade["taker_account"],
                    trade["maker_account"]) == (102, "b1", "s1", 300_000, 600, 300, "taker", "maker")
            assert sorted(result["orders"]) == ["b1", "s1"]
            got_b1, got_s1 = result["orders"]["b1"], result["orders"]["s1"]
            assert (got_b1["status"], got_b1["done_reason"], got_b1["filled_lots"], got_b1["cost_minor"],
                    got_b1["fee_minor"], got_b1["trades"]) == ("closed", "filled", 60, 300_000, 600, [trade["id"]])
            assert (got_s1["status"], got_s1["filled_lots"], got_s1["cost_minor"], got_s1["fee_minor"],
                    got_s1["trades"]) == ("open", 60, 300_000, 300, [trade["id"]])
            hist = await ledger.history(limit=3)
            assert [e["key"] for e in hist] == ["fill:memory:102", "order:b2", "order:b1"]
            assert postings_of(hist[2]) == [("taker", "USDC", "available", "-0.30366"),
                                            ("taker", "USDC", "locked", "0.30366")]
            assert postings_of(hist[1]) == [("taker", "USDC", "available", "-0.0491"),
                                            ("taker", "USDC", "locked", "0.0491")]
            assert postings_of(hist[0]) == [("taker", "USDC", "locked", "-0.30366"),
                                            ("taker", "USDC", "available", "0.00306"),
                                            ("taker", "ZEC", "available", "0.006"),
                                            ("maker", "ZEC", "locked", "-0.006"),
                                            ("maker", "USDC", "available", "0.2997"),
                                            ("fees", "USDC", "available", "0.0009")]
            assert bal(await ledger.balances("taker"), "taker", "USDC") == (1_000_000 - 300_600 - 49_100, 49_100)
            assert bal(await ledger.balances("taker"), "taker", "ZEC") == (600_000, 0)
            assert bal(await ledger.balances("maker"), "maker", "ZEC") == (99_000_000, 400_000)
            assert bal(await ledger.balances("maker"), "maker", "USDC") == (299_700, 0)
            assert await _seqs(wallet) == {"memory": (100, 4)}
            stored = await wallet.read(order_read, "b1")
            assert (stored["status"], stored["filled_lots"], stored["fee_minor"]) == ("closed", 60, 600)
            assert [o["id"] for o in await wallet.read(open_orders_read)] == ["s1", "b2"]
            assert await engine.open_orders(M) == [_eo(got_s1), _eo(b2)]
            assert (await ledger.verify())["ok"]
        finally:
            await wallet.aclose()


async def test_refused_and_repeated_orders_in_a_batch_leave_nothing_and_the_rest_goes_through(tmp_path):
    """A bid the taker cannot fund (it would cross the ask) and a client_order_id repeat are answered without
    reaching the engine; the orders around them are recorded, matched and settled in the same operation."""
    m = market(10, 20)
    with trio.fail_after(20):
        wallet, ledger, engine = await _setup(tmp_path)
        try:
            open_orders: dict = {}
            [(kind, first)] = (await _place(wallet, engine, m, open_orders,
                                            [new_order("s1", "maker", "sell", 5000, 100, coid="ask")]))[0]
            assert kind == "new"
            too_big = new_order("b1", "taker", "buy", 5000, 1000)          # 5.01 USDC on hold: the taker has 1
            again = {**new_order("s2", "maker", "sell", 5000, 100, coid="ask"), "created_at": 5.0}
            b3 = new_order("b3", "taker", "buy", 5000, 20)
            outcomes, events, result = await _place(wallet, engine, m, open_orders, [too_big, again, b3])
            assert [k for k, _ in outcomes] == ["refused", "repeat", "new"]
            assert outcomes[0][1].message == "insufficient available USDC: need 5.01, have 1.00"
            assert outcomes[1][1] == first
            assert events == [Event(2, M, "fill", "b3", 20, 5000, "s1", "buy"),
                              Event(3, M, "done", "b3", 0, reason="filled")]
            [trade] = result["trades"]
            assert (trade["seq"], trade["notional_minor"], trade["taker_fee_minor"], trade["maker_fee_minor"]) == (
                2, 100_000, 200, 100)
            assert [e["key"] for e in await ledger.history(limit=3)] == ["fill:memory:2", "order:b3", "order:s1"]
            rows = await wallet.read(lambda rtx: rtx.conn.execute("SELECT id, is_open FROM dex_orders").fetchall())
            assert rows == [(1, 1), (2, 0)]
            assert await wallet.read(order_read, "b1") is None and await wallet.read(order_read, "s2") is None
            assert await engine.open_orders(M) == [_eo(open_orders["s1"])]
            assert open_orders["s1"]["filled_lots"] == 20
            assert await _seqs(wallet) == {"memory": (0, 3)}

            # A batch of refusals and repeats alone: nothing reaches the engine, nothing settles, the seq stays.
            outcomes, events, result = await _place(wallet, engine, m, open_orders, [too_big, again])
            assert [k for k, _ in outcomes] == ["refused", "repeat"] and events == []
            assert result == {"orders": {}, "trades": []}
            assert await _seqs(wallet) == {"memory": (0, 3)}
            assert await engine.last_seq() == 3
            assert (await ledger.verify())["ok"]
        finally:
            await wallet.aclose()


async def _refused(wallet, ledger, engine, m, open_orders, orders, eos, message):
    before_db, before_orders = await _snapshot(wallet, ledger), copy.deepcopy(open_orders)
    items = [(o, *m.hold(o["side"], o["price_ticks"], o["qty_lots"], o["post_only"])) for o in orders]
    with pytest.raises(EngineEventRefused) as info:
        await wallet.write(place_orders_op, engine, "memory", 0, items, eos, open_orders, {M: m})
    assert info.value.message == message
    assert await _snapshot(wallet, ledger) == before_db       # nothing of the operation was kept
    assert open_orders == before_orders


async def test_an_event_that_does_not_fit_rolls_the_whole_operation_back(tmp_path):
    """The engine matches an order beyond its recorded limit, and fills an order this wallet closed: each is
    EngineEventRefused naming the event, and nothing of the batch (the good order before it included) is
    recorded, held, settled or stored."""
    m = market(10, 20)
    with trio.fail_after(20):
        wallet, ledger, engine = await _setup(tmp_path)
        try:
            open_orders: dict = {}
            await _place(wallet, engine, m, open_orders, [new_order("s1", "maker", "sell", 5000, 100),
                                                          new_order("s9", "maker", "sell", 5200, 100)])
            good = new_order("b0", "taker", "buy", 4000, 10)
            liar = new_order("b1", "taker", "buy", 4000, 10)
            await _refused(wallet, ledger, engine, m, open_orders, [good, liar],
                           [_eo(good), _eo(liar, price_ticks=6000)],
                           "invalid event refused: engine memory event seq 4 ('fill' of market 'ZEC/USDC'): buys for "
                           "order b1 at 5000 ticks, above its limit 4000")

            # The ledger closed s9 (its done settled), an engine still rests it: a fill of s9 is refused.
            engine2 = await _engine(tmp_path)
            await wallet.write(lambda tx: engine2.submit_in_tx(tx, _eo(open_orders["s9"])))
            await wallet.write(settle_op, "memory", 0, [Event(9, M, "done", "s9", 100, reason="canceled")],
                               {"s9": open_orders.pop("s9")}, {M: m})
            b2 = new_order("b2", "taker", "buy", 5200, 10)
            await _refused(wallet, ledger, engine2, m, open_orders, [b2], [_eo(b2)],
                           "invalid event refused: engine memory event seq 2 ('fill' of market 'ZEC/USDC'): fills "
                           "maker order s9, which is no longer open here")
            assert (await ledger.verify())["ok"]
        finally:
            await wallet.aclose()


async def test_a_failure_after_the_engine_matched_keeps_nothing(tmp_path):
    """The test-only fault for one client_order_id raises after the match: nothing is kept; without it (and for
    orders without a client_order_id) the same batch goes through."""
    m = market(10, 20)
    with trio.fail_after(20):
        wallet, ledger, engine = await _setup(tmp_path)
        try:
            open_orders: dict = {}
            await _place(wallet, engine, m, open_orders, [new_order("s1", "maker", "sell", 5000, 100)])
            before = await _snapshot(wallet, ledger)
            batch = [new_order("b1", "taker", "buy", 5000, 10), new_order("b2", "taker", "buy", 5000, 10, coid="x")]
            with pytest.raises(InjectedFault) as info:
                await _place(wallet, engine, m, open_orders, batch, fail="x")
            assert str(info.value) == "test fault: the operation failed after the engine matched (x)"
            assert await _snapshot(wallet, ledger) == before
            engine = await _engine(tmp_path)     # what the service's re-seed does after a write that failed
            await wallet.write(reseed_op, engine, "memory", 0, 1, [_eo(open_orders["s1"])], open_orders, {M: m})
            outcomes, events, _ = await _place(wallet, engine, m, open_orders, batch, fail="y")
            assert [k for k, _ in outcomes] == ["new", "new"] and len(events) == 4
            outcomes, events, _ = await _place(wallet, engine, m, open_orders,
                                               [new_order("b3", "taker", "buy", 5000, 10)])
            assert [k for k, _ in outcomes] == ["new"] and len(events) == 2
        finally:
            await wallet.aclose()


async def test_cancel_releases_the_rest_of_the_hold_in_one_operation(tmp_path):
    """A resting, partly filled bid: the engine's done(canceled) is settled (the rest of the hold released) and
    its seq stored. An open order the engine does not rest is canceled all the same, the seq untouched."""
    m = market(10, 20)
    with trio.fail_after(20):
        wallet, ledger, engine = await _setup(tmp_path)
        try:
            open_orders: dict = {}
            await _place(wallet, engine, m, open_orders, [new_order("b1", "taker", "buy", 5050, 100)], base=10)
            await _place(wallet, engine, m, open_orders, [new_order("s1", "maker", "sell", 5000, 30)], base=10)
            assert await _seqs(wallet) == {"memory": (10, 3)}
            b1 = open_orders["b1"]
            assert (b1["filled_lots"], b1["cost_minor"], b1["fee_minor"]) == (30, 151_500, 152)
            before = copy.deepcopy(open_orders)
            events, result = await wallet.write(cancel_op, engine, "memory", 10, M, "b1", 70, open_orders, {M: m})
            assert open_orders == before
            assert events == [Event(4, M, "done", "b1", 70, reason="canceled")]
            assert result["trades"] == [] and list(result["orders"]) == ["b1"]
            assert (result["orders"]["b1"]["status"], result["orders"]["b1"]["filled_lots"]) == ("canceled", 30)
            [release] = await ledger.history(limit=1)
            # held 100 x 5061 = 506,100; the fill took 30 x 5061 = 151,830: 354,270 released
            assert (release["key"], postings_of(release)) == ("release:b1", [("taker", "USDC", "locked", "-0.35427"),
                                                                             ("taker", "USDC", "available", "0.35427")])
            assert bal(await ledger.balances("taker"), "taker", "USDC") == (1_000_000 - 151_500 - 152, 0)
            assert await _seqs(wallet) == {"memory": (10, 4)}
            assert await engine.open_orders(M) == []
            _remember(open_orders, [], result)

            # Recorded, never on the engine's books: canceled here, the seq as it was.
            [(_, b2)] = await record(wallet, m, new_order("b2", "taker", "buy", 4000, 10))
            open_orders["b2"] = b2
            events, result = await wallet.write(cancel_op, engine, "memory", 10, M, "b2", 10, open_orders, {M: m})
            assert events == [] and result["trades"] == []
            assert (result["orders"]["b2"]["status"], result["orders"]["b2"]["done_reason"]) == ("canceled", "canceled")
            [release] = await ledger.history(limit=1)
            assert (release["key"], postings_of(release)) == ("release:b2", [("taker", "USDC", "locked", "-0.04008"),
                                                                             ("taker", "USDC", "available", "0.04008")])
            assert (await wallet.read(order_read, "b2"))["status"] == "canceled"
            assert await _seqs(wallet) == {"memory": (10, 4)}
            assert await engine.last_seq() == 4
            assert (await ledger.verify())["ok"]
        finally:
            await wallet.aclose()


async def test_reseed_puts_the_ledgers_open_orders_back_and_stores_the_seq(tmp_path):
    """The same engine (its seq where the ledger's applied seq is): books emptied and re-seeded in time order,
    equal to the ledger's open orders; the base stays; the applied seq is the last event's."""
    m = market(10, 20)
    with trio.fail_after(20):
        wallet, ledger, engine = await _setup(tmp_path)
        try:
            open_orders: dict = {}
            await _place(wallet, engine, m, open_orders, [new_order("s1", "maker", "sell", 5000, 100),
                                                          new_order("b1", "taker", "buy", 4900, 10),
                                                          new_order("b2", "taker", "buy", 4950, 10)], base=20)
            assert await _seqs(wallet) == {"memory": (20, 3)}
            eos = [_eo(o) for o in sorted(open_orders.values(), key=lambda o: o["rowid"])]
            before = await _snapshot(wallet, ledger)
            base, applied, events, result = await wallet.write(reseed_op, engine, "memory", 20, 3, eos, open_orders,
                                                               {M: m})
            assert (base, applied) == (20, 6)
            assert events == [Event(4, M, "rested", "s1", 100), Event(5, M, "rested", "b1", 10),
                              Event(6, M, "rested", "b2", 10)]
            assert result == {"orders": {}, "trades": []}
            assert await engine.open_orders(M) == eos
            after = await _snapshot(wallet, ledger)
            assert after[:4] == before[:4] and after[4] == {"memory": (20, 6)}

            # No open orders: nothing to submit, the seq stored as the engine's.
            for oid in ("s1", "b1", "b2"):
                await wallet.write(cancel_op, engine, "memory", 20, M, oid, open_orders[oid]["qty_lots"],
                                   open_orders, {M: m})
            assert await _seqs(wallet) == {"memory": (20, 9)}
            out = await wallet.write(reseed_op, engine, "memory", 20, 9, [], {}, {M: m})
            assert out == (20, 9, [], {"orders": {}, "trades": []})
            assert await _seqs(wallet) == {"memory": (20, 9)}
            out = await wallet.write(reseed_op, engine, "memory", 20, 7, [], {}, {M: m})
            assert out == (20, 9, [], {"orders": {}, "trades": []})
            assert await _seqs(wallet) == {"memory": (20, 9)}
        finally:
            await wallet.aclose()


async def test_reseed_of_a_new_engine_moves_the_base_and_settles_orders_never_matched(tmp_path):
    """A new engine instance numbers from 0 again: the base moves past what was applied (fill keys stay new),
    and two crossing orders recorded but never matched (from before this path) match now, settled exactly."""
    m = market(10, 20)
    with trio.fail_after(20):
        wallet, ledger, _ = await _setup(tmp_path)
        try:
            open_orders: dict = {}
            [(_, s1), (_, b1)] = await record(wallet, m, new_order("s1", "maker", "sell", 5000, 100),
                                              new_order("b1", "taker", "buy", 5050, 40))
            open_orders.update({"s1": s1, "b1": b1})
            engine = await _engine(tmp_path)
            base, applied, events, result = await wallet.write(reseed_op, engine, "memory", 100, 7,
                                                               [_eo(s1), _eo(b1)], open_orders, {M: m})
            assert (base, applied) == (107, 3)
            assert events == [Event(1, M, "rested", "s1", 100), Event(2, M, "fill", "b1", 40, 5000, "s1", "buy"),
                              Event(3, M, "done", "b1", 0, reason="filled")]
            [trade] = result["trades"]
            assert (trade["seq"], trade["notional_minor"], trade["taker_fee_minor"], trade["maker_fee_minor"]) == (
                109, 200_000, 400, 200)
            [fill] = await ledger.history(limit=1)
            assert fill["key"] == "fill:memory:109"
            assert postings_of(fill) == [("taker", "USDC", "locked", "-0.20244"),
                                         ("taker", "USDC", "available", "0.00204"),
                                         ("taker", "ZEC", "available", "0.004"),
                                         ("maker", "ZEC", "locked", "-0.004"),
                                         ("maker", "USDC", "available", "0.1998"),
                                         ("fees", "USDC", "available", "0.0006")]
            assert await _seqs(wallet) == {"memory": (107, 3)}
            assert (result["orders"]["b1"]["status"], result["orders"]["s1"]["filled_lots"]) == ("closed", 40)
            assert open_orders == {"s1": s1, "b1": b1}
            _remember(open_orders, [], result)
            assert await engine.open_orders(M) == [_eo(open_orders["s1"])]

            # Another new instance, the same applied seq (3, not behind): the base stays; nothing else moves.
            again = await _engine(tmp_path)
            await wallet.write(lambda tx: [again.submit_in_tx(tx, EngineOrder(f"x{i}", M, "z", "buy", 1, 1))
                                           for i in range(3)])
            out = await wallet.write(reseed_op, again, "memory", 107, 3, [], {}, {M: m})
            assert out == (107, 3, [], {"orders": {}, "trades": []})
            # Behind, with nothing to re-seed: the moved base and the engine's seq are stored.
            out = await wallet.write(reseed_op, await _engine(tmp_path), "memory", 107, 3, [], {}, {M: m})
            assert out == (110, 0, [], {"orders": {}, "trades": []})
            assert await _seqs(wallet) == {"memory": (110, 0)}
            assert (await ledger.verify())["ok"]
        finally:
            await wallet.aclose()


async def test_settle_in_tx_of_no_events_writes_nothing(tmp_path):
    with trio.fail_after(20):
        wallet, ledger, _ = await _setup(tmp_path)
        try:
            before = await _snapshot(wallet, ledger)
            assert await wallet.write(settle_in_tx, "memory", 5, [], {}, {M: market()}) == {"orders": {}, "trades": []}
            assert await _snapshot(wallet, ledger) == before and await _seqs(wallet) == {}
        finally:
            await wallet.aclose()


async def test_batch_with_more_or_fewer_engine_orders_than_items_keeps_nothing(tmp_path):
    """One engine order per item, always: a mismatch (a caller's bug) would record an order and lock its hold
    without ever matching it, so it fails the whole operation instead."""
    m = market(10, 20)
    with trio.fail_after(20):
        wallet, ledger, engine = await _setup(tmp_path)
        try:
            b1, b2 = new_order("b1", "taker", "buy", 4000, 10), new_order("b2", "taker", "buy", 4100, 10)
            items = [(o, *m.hold(o["side"], o["price_ticks"], o["qty_lots"], o["post_only"])) for o in (b1, b2)]
            before = await _snapshot(wallet, ledger)
            for eos in ([_eo(b1)], [_eo(b1), _eo(b2), _eo(b2, order_id="b3")]):
                with pytest.raises(ValueError):
                    await wallet.write(place_orders_op, engine, "memory", 0, items, eos, {}, {M: m})
                assert await _snapshot(wallet, ledger) == before
                engine = await _engine(tmp_path)    # it matched b1 before the mismatch showed: the service re-seeds
        finally:
            await wallet.aclose()


async def test_a_cancel_of_an_order_the_engine_does_not_rest_is_checked_like_an_engine_event(tmp_path):
    """The done that cancel_op makes up for an order not on the books goes through the same checks (engine name
    and seq 0 in the refusal), and a bad one releases nothing."""
    m = market(10, 20)
    with trio.fail_after(20):
        wallet, ledger, engine = await _setup(tmp_path)
        try:
            [(_, b1)] = await record(wallet, m, new_order("b1", "taker", "buy", 4000, 10))
            before = await _snapshot(wallet, ledger)
            for left in (-1, "10"):
                with pytest.raises(EngineEventRefused) as info:
                    await wallet.write(cancel_op, engine, "memory", 3, M, "b1", left, {"b1": b1}, {M: m})
                assert info.value.message == "invalid event refused: engine memory event seq 0 ('done' of market " \
                                             "'ZEC/USDC'): qty_lots is not a non-negative integer"
                assert await _snapshot(wallet, ledger) == before
        finally:
            await wallet.aclose()


async def test_the_sqlite_engine_in_the_wallet_logs_each_operations_events_in_its_transaction(tmp_path):
    """The same operations with the SQLite engine keeping its log in the wallet (in_wallet): each op's events
    are in the wallet's table exactly when the op commits; a refused op leaves neither entries nor log rows."""
    m = market(10, 20, engine="sqlite")
    with trio.fail_after(30):
        wallet = Wallet(tmp_path / "w", scrypt_n=2**10)
        wallet.add_schema("dex", DEX_SCHEMA)
        config = {"in_wallet": True}
        schema, sealed = SqliteEngine.tx_tables(config)
        wallet.add_schema("engine:sqlite", schema)
        for table, columns in sealed.items():
            wallet.add_rekey(table, sealed=columns)
        ledger = Ledger(wallet, TOKENS)
        await wallet.start()
        await wallet.create(PW)
        try:
            for name in ("maker", "taker"):
                await ledger.create_account(name)
            await ledger.deposit("maker", "ZEC", 100_000_000, "m")
            await ledger.deposit("taker", "USDC", 1_000_000, "t")
            engine = SqliteEngine(EngineContext("sqlite", tmp_path / "w", wallet.cipher, config))
            await engine.start(SPECS)

            async def logged() -> list[int]:
                return await wallet.read(lambda rtx: [r[0] for r in rtx.conn.execute(
                    "SELECT id FROM engine_sqlite_events ORDER BY id")])

            assert await wallet.write(reseed_op, engine, "sqlite", 0, 0, [], {}, {M: m}) == (
                0, 0, [], {"orders": {}, "trades": []})
            assert await _seqs(wallet) == {"sqlite": (0, 0)}
            open_orders: dict = {}
            orders = [new_order("s1", "maker", "sell", 5000, 100), new_order("b1", "taker", "buy", 5050, 40),
                      new_order("b2", "taker", "buy", 4900, 10)]
            items = [(o, *m.hold(o["side"], o["price_ticks"], o["qty_lots"], o["post_only"])) for o in orders]
            outcomes, events, result = await wallet.write(place_orders_op, engine, "sqlite", 0, items,
                                                          [_eo(o) for o in orders], open_orders, {M: m})
            _remember(open_orders, [v for k, v in outcomes if k == "new"], result)
            assert [e.kind for e in events] == ["rested", "fill", "done", "rested"]
            assert await logged() == [1, 2, 3, 4]
            assert [e["key"] for e in await ledger.history(limit=1)] == ["fill:sqlite:2"]
            assert await _seqs(wallet) == {"sqlite": (0, 4)}

            events, _ = await wallet.write(cancel_op, engine, "sqlite", 0, M, "s1", 60, open_orders, {M: m})
            assert events == [Event(5, M, "done", "s1", 60, reason="canceled")]
            assert await logged() == [1, 2, 3, 4, 5]
            open_orders.pop("s1")

            liar = new_order("b3", "taker", "buy", 4000, 10)
            before = await _snapshot(wallet, ledger)
            with pytest.raises(EngineEventRefused):
                await wallet.write(place_orders_op, engine, "sqlite", 0, [(liar, "USDC", 40_080)],
                                   [_eo(liar, side="sell", owner="other")], open_orders, {M: m})
            assert await _snapshot(wallet, ledger) == before and await logged() == [1, 2, 3, 4, 5]

            base, applied, events, _ = await wallet.write(reseed_op, engine, "sqlite", 0, 5,
                                                          [_eo(open_orders["b2"])], open_orders, {M: m})
            # The refused op's match (seqs 6-8: b2 filled) was rolled back: b2 rests again, numbered after it.
            assert (base, applied, events) == (0, 9, [Event(9, M, "rested", "b2", 10)])
            assert await logged() == [1, 2, 3, 4, 5, 9]
            assert await engine.open_orders(M) == [_eo(open_orders["b2"])]
            assert await _seqs(wallet) == {"sqlite": (0, 9)}
            await engine.aclose()
        finally:
            await wallet.aclose()


class _LyingEngine:
    """A fake in-transaction engine peer: it answers an order with whatever events it was told to."""

    def __init__(self, events: list[Event]):
        self.events = events

    def submit_in_tx(self, tx, order: EngineOrder) -> list[Event]:
        return list(self.events)


async def test_an_in_tx_engine_sending_a_seq_not_after_the_applied_one_is_refused_and_nothing_moves(tmp_path):
    """As the two-step path's _in_sequence does: an event whose seq is not after the applied seq (a replayed
    fill, a stale rest, seq 0) is EngineEventRefused, and nothing of the batch is kept. Before, a stale rest
    stored the applied seq backwards and a replayed fill seq failed as a journal Conflict."""
    m = market(10, 20)
    with trio.fail_after(20):
        wallet, ledger, engine = await _setup(tmp_path)
        try:
            open_orders: dict = {}
            await _place(wallet, engine, m, open_orders, [new_order("s1", "maker", "sell", 5000, 100)])
            await _place(wallet, engine, m, open_orders, [new_order("b1", "taker", "buy", 5050, 60)])
            assert await _seqs(wallet) == {"memory": (0, 3)}
            for lie in ([Event(2, M, "rested", "b2", 10)],                      # stale: before the applied seq
                        [Event(2, M, "fill", "b2", 10, 5000, "s1", "buy"),      # a fill under an applied seq
                         Event(4, M, "done", "b2", 0, reason="filled")],
                        [Event(0, M, "rested", "b2", 10)]):                     # seq 0
                b2 = new_order("b2", "taker", "buy", 5050, 10)
                before_db, before_orders = await _snapshot(wallet, ledger), copy.deepcopy(open_orders)
                items = [(b2, *m.hold("buy", 5050, 10, False))]
                with pytest.raises(EngineEventRefused) as info:
                    await wallet.write(place_orders_op, _LyingEngine(lie), "memory", 0, items, [_eo(b2)],
                                       open_orders, {M: m}, None, 3)
                assert info.value.message == (f"invalid event refused: engine memory sent seq '{lie[0].seq}', "
                                              "not after its applied seq 3")
                assert await _snapshot(wallet, ledger) == before_db       # nothing of the operation was kept
                assert open_orders == before_orders
            assert (await ledger.verify())["ok"]
        finally:
            await wallet.aclose()
