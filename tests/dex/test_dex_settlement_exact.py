"""Settlement's recording and idempotency rules pinned exactly, in-process on a real wallet file.

record_orders_op's client_order_id rules (a repeat returns the first order; the same id for other content is a
Conflict naming what differs, and writes nothing) and settle_op on a shared engine's batch that mixes other
wallets' events with this wallet's. Fast on purpose: this file is in `make mutate`'s test selection
(docs/reliability.md), written to kill the mutants the re-run after issue 9 left alive.
"""

from __future__ import annotations

import pytest
import trio
from test_money_exact import bal, market, new_order, postings_of, record, started

from tachyond import errors
from tachyond.dex.store import (
    engine_epochs_read,
    engine_seqs_read,
    order_read,
    set_engine_feed_op,
    set_engine_seq_op,
    settle_op,
    trades_read,
)
from tachyond.engine import Event


async def _order_rows(wallet) -> list[tuple[int, int]]:
    """(rowid, is_open) of every stored order row."""
    return await wallet.read(lambda rtx: rtx.conn.execute("SELECT id, is_open FROM dex_orders ORDER BY id").fetchall())


# One field changed at a time, and all of them: the Conflict names exactly the fields that differ.
CHANGES = [
    ({"market": "BASE/USDC"}, "market"),
    ({"side": "sell"}, "side"),
    ({"type": "market"}, "type"),
    ({"time_in_force": "ioc"}, "time_in_force"),
    ({"post_only": True}, "post_only"),
    ({"price_ticks": 5051}, "price"),
    ({"qty_lots": 11}, "qty"),
    ({"market": "BASE/USDC", "side": "sell", "type": "market", "time_in_force": "fok", "post_only": True,
      "price_ticks": 1, "qty_lots": 1}, "market, side, type, time_in_force, post_only, price, qty"),
]


async def test_a_client_order_id_reused_for_other_content_is_refused_naming_what_differs(tmp_path):
    """Each refusal is a Conflict (-32014) with the exact message and data, nothing of it written, and the items
    after it in the same batch are still recorded; a repeat of the same content returns the first order."""
    m = market(10, 20)
    with trio.fail_after(20):
        wallet, ledger = await started(tmp_path, schemas=True)
        try:
            await ledger.deposit("default", "USDC", 10_000_000, "d")
            await ledger.deposit("default", "ZEC", 10_000_000, "z")
            [(kind, first)] = await record(wallet, m, new_order("o1", "default", "buy", 5050, 10, coid="c"))
            assert kind == "new" and first["rowid"] == 1
            funds = await ledger.balances("default")
            assert bal(funds, "default", "USDC") == (10_000_000 - 10 * 5061, 10 * 5061)

            tries = []
            for n, (change, _) in enumerate(CHANGES):
                tries.append({**new_order(f"x{n}", "default", "buy", 5050, 10, coid="c"), **change})
            out = await record(wallet, m, *tries)
            assert [k for k, _ in out] == ["refused"] * len(CHANGES)
            for (_, exc), (_, names) in zip(out, CHANGES, strict=True):
                assert isinstance(exc, errors.Conflict) and exc.code == -32014
                assert exc.message == f"client_order_id 'c' was already used by order o1 with different content " \
                                      f"({names})"
                assert exc.data == {"client_order_id": "c", "order_id": "o1"}
            # Nothing of a refused item was written: no order row, no hold, no journal entry.
            assert await _order_rows(wallet) == [(1, 1)]
            assert await ledger.balances("default") == funds
            assert [e["key"] for e in await ledger.history()] == ["order:o1", "deposit:z", "deposit:d"]

            # A conflict does not end the batch: the next item is recorded; a same-content repeat (another id,
            # another time, in the same batch) is the first order, as stored.
            out = await record(wallet, m, {**new_order("x9", "default", "sell", 5050, 10, coid="c")},
                               new_order("o2", "default", "sell", 6000, 5, coid="k"),
                               {**new_order("x10", "default", "buy", 5050, 10, coid="c"), "created_at": 9.0})
            assert [k for k, _ in out] == ["refused", "new", "repeat"]
            assert out[0][1].message == "client_order_id 'c' was already used by order o1 with different content (side)"
            assert (out[1][1]["id"], out[1][1]["rowid"]) == ("o2", 2)
            assert out[2][1] == first
            assert await _order_rows(wallet) == [(1, 1), (2, 1)]
            assert [e["key"] for e in await ledger.history(limit=1)] == ["order:o2"]
            stored = await wallet.read(order_read, None, "default", "c")
            assert {k: v for k, v in stored.items() if k != "trade_rows"} == first
            assert (await ledger.verify())["ok"]
        finally:
            await wallet.aclose()


async def test_other_wallets_events_in_a_batch_are_passed_over_and_the_rest_applied(tmp_path):
    """A shared engine's batch: fills between other wallets' orders (one naming a market this daemon does not list)
    come before, between and after this wallet's fill and done; each of ours is applied, the seq stored is the
    batch's last."""
    m = market(10, 20)
    with trio.fail_after(20):
        wallet, ledger = await started(tmp_path, schemas=True)
        try:
            await ledger.deposit("default", "ZEC", 100_000_000, "z")
            [(_, ask)] = await record(wallet, m, new_order("s1", "default", "sell", 5000, 100))
            events = [Event(1, "ZEC/USDC", "fill", "them1", 5, 5000, "them2", "buy"),
                      Event(2, "OTHER/USDC", "fill", "them3", 5, 5000, "them4", "sell"),
                      Event(3, "ZEC/USDC", "fill", "them5", 100, 5000, "s1", "buy"),
                      Event(4, "ZEC/USDC", "fill", "them6", 7, 5000, "them7", "sell"),
                      Event(5, "ZEC/USDC", "done", "s1", 0, reason="filled"),
                      Event(6, "OTHER/USDC", "done", "them3", 0, reason="filled")]
            result = await wallet.write(settle_op, "http", 100, events, {"s1": ask}, {"ZEC/USDC": m})
            [trade] = result["trades"]
            assert (trade["seq"], trade["maker_order_id"], trade["taker_order_id"], trade["notional_minor"],
                    trade["maker_fee_minor"], trade["taker_fee_minor"]) == (103, "s1", "them5", 500_000, 500, 0)
            assert (trade["maker_account"], trade["taker_account"]) == ("default", None)
            assert list(result["orders"]) == ["s1"]
            s1 = result["orders"]["s1"]
            assert (s1["status"], s1["done_reason"], s1["filled_lots"], s1["cost_minor"], s1["fee_minor"]) == (
                "closed", "filled", 100, 500_000, 500)
            [fill] = [e for e in await ledger.history(limit=10) if e["kind"] == "fill"]
            assert fill["key"] == "fill:http:103"
            assert postings_of(fill) == [("venue:http", "USDC", "available", "-0.50"),
                                         ("venue:http", "ZEC", "available", "0.01"),
                                         ("default", "ZEC", "locked", "-0.01"),
                                         ("default", "USDC", "available", "0.4995"),
                                         ("fees", "USDC", "available", "0.0005")]
            assert bal(await ledger.balances("default"), "default", "ZEC") == (99_000_000, 0)
            assert bal(await ledger.balances("default"), "default", "USDC") == (499_500, 0)
            assert [t["id"] for t in await wallet.read(trades_read, None, None, 10)] == [trade["id"]]
            assert await _order_rows(wallet) == [(1, 0)]
            seqs = await wallet.read(lambda rtx: rtx.conn.execute("SELECT * FROM dex_engines").fetchall())
            assert seqs == [("http", 100, 6)]
            assert (await ledger.verify())["ok"]
        finally:
            await wallet.aclose()


@pytest.mark.parametrize("reason,status", [("filled", "closed"), ("canceled", "canceled"), ("self_trade", "canceled"),
                                           ("expired", "expired"), ("post_only", "rejected"), (None, "canceled"),
                                           ("", "canceled"), ("something new", "canceled")])
async def test_a_done_event_sets_the_stored_status_and_releases_the_rest(tmp_path, reason, status):
    """The stored row (is_open, status, done_reason) and the release entry for each reason, and for none."""
    m = market(10, 20)
    with trio.fail_after(20):
        wallet, ledger = await started(tmp_path, schemas=True)
        try:
            await ledger.deposit("default", "USDC", 1_000_000, "d")
            [(_, bid)] = await record(wallet, m, new_order("b1", "default", "buy", 5000, 10))
            result = await wallet.write(settle_op, "memory", 0, [Event(1, "ZEC/USDC", "done", "b1", 10, reason=reason)],
                                        {"b1": bid}, {"ZEC/USDC": m})
            assert (result["orders"]["b1"]["status"], result["orders"]["b1"]["done_reason"]) == (status, reason)
            stored = await wallet.read(order_read, "b1")
            assert (stored["status"], stored["done_reason"]) == (status, reason)
            assert await _order_rows(wallet) == [(1, 0)]
            [release] = await ledger.history(limit=1)
            assert release["key"] == "release:b1"
            assert postings_of(release) == [("default", "USDC", "locked", "-0.0501"),
                                            ("default", "USDC", "available", "0.0501")]
            assert bal(await ledger.balances("default"), "default", "USDC") == (1_000_000, 0)
        finally:
            await wallet.aclose()


async def test_the_applied_seq_and_the_feed_epoch_are_stored_together_per_engine(tmp_path):
    """A shared engine's applied seq and the feed epoch it belongs to replace the engine's previous pair in one
    write; another engine's seq is its own; a re-seed stores a new base with nothing applied."""
    with trio.fail_after(20):
        wallet, _ledger = await started(tmp_path, schemas=True)
        try:
            await wallet.write(set_engine_feed_op, "http", 40, 7, "epoch-a")
            assert await wallet.read(engine_seqs_read) == {"http": (40, 7)}
            assert await wallet.read(engine_epochs_read) == {"http": "epoch-a"}
            await wallet.write(set_engine_feed_op, "http", 40, 9, "epoch-b")
            await wallet.write(set_engine_seq_op, "sqlite", 12, 3)
            assert await wallet.read(engine_seqs_read) == {"http": (40, 9), "sqlite": (12, 3)}
            assert await wallet.read(engine_epochs_read) == {"http": "epoch-b"}
            await wallet.write(set_engine_seq_op, "sqlite", 15, 0)
            assert await wallet.read(engine_seqs_read) == {"http": (40, 9), "sqlite": (15, 0)}
            rows = await wallet.read(lambda rtx: rtx.conn.execute("SELECT * FROM dex_engine_feeds").fetchall())
            assert rows == [("http", "epoch-b")]
        finally:
            await wallet.aclose()
