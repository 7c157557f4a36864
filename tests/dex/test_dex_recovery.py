"""Crash recovery through real tachyond processes: SIGKILL, the after_match fault, and the order_filled hook."""

from __future__ import annotations

import json

import pytest
import trio
from conftest import DaemonProc
from test_dex_helpers import (
    PASSWORD,
    balances,
    crash_after_match,
    dex_document,
    fund,
    order,
    rpc,
    rpc_error,
    start_dex_daemon,
    state_snapshot,
)

# variant: (market engine, its [engines.<name>] table). "sqlite" is the default (in_wallet: its log a table of
# the wallet file, matched and settled in one commit); "sqlite-own-file" keeps engine-sqlite.db, so a crash
# can fall between the engine's commit and the ledger's (after_match).
ENGINES = {"memory": ("memory", None), "sqlite": ("sqlite", None),
           "sqlite-own-file": ("sqlite", {"in_wallet": False})}


def _start(sockdir, variant: str) -> DaemonProc:
    engine, table = ENGINES[variant]
    doc = dex_document(sockdir, engine)
    if table is not None:
        doc["engines"] = {engine: table}
    d = DaemonProc(sockdir, doc).start()
    d.call("wallet.create", {"password": PASSWORD})
    d.call("wallet.unlock", {"password": PASSWORD})
    return d


async def _seed_book(d) -> None:
    """Two makers, resting orders on both sides, a partial fill and a cancel: a book with some history."""
    await fund(d, "maker", ZEC="10", USDC="1000")
    await fund(d, "taker", USDC="1000", ZEC="2")
    for price, qty in (("50.00", "1"), ("50.00", "0.5"), ("51.00", "2"), ("53.00", "1")):
        await order(d, "maker", "sell", qty, price)
    await order(d, "maker", "buy", "1", "48.00")
    await order(d, "taker", "buy", "1.2", "50.00")            # fills 1 + 0.2, leaves 0.3 at 50.00
    await order(d, "taker", "buy", "0.5", "49.00")
    gone = await order(d, "taker", "buy", "0.5", "47.00")
    await rpc(d, "dex.cancel_order", {"order_id": gone["id"]})
    await order(d, "taker", "sell", "0.3", "48.00")           # partial fill of the maker's bid


@pytest.mark.parametrize("variant", list(ENGINES))
async def test_sigkill_restart_keeps_book_orders_holds_and_balances(sockdir, variant):
    with trio.fail_after(60):
        d = await trio.to_thread.run_sync(_start, sockdir, variant)
        try:
            await _seed_book(d)
            before = await state_snapshot(d)
            assert before["books"]["ZEC/USDC"]["asks"] == [["50.00", "0.30"], ["51.00", "2.00"], ["53.00", "1.00"]]
            d.kill()
            await trio.to_thread.run_sync(d.start)  # unlocked from password_file; the engine recovers
            after = await state_snapshot(d)
            assert after == before
            assert (await rpc(d, "ledger.verify"))["ok"]
            # The recovered book still matches in time priority: the 50.00 remainder first.
            o = await order(d, "taker", "buy", "0.3", "50.00")
            assert (o["status"], [t["price"] for t in o["trades"]]) == ("closed", ["50.00"])
            assert (await rpc(d, "ledger.verify"))["ok"]
        finally:
            d.kill()


@pytest.mark.parametrize("variant", list(ENGINES))
async def test_fault_after_match_settles_every_fill_exactly_once(sockdir, variant):
    with trio.fail_after(60):
        d = await trio.to_thread.run_sync(_start, sockdir, variant)
        try:
            await crash_after_match(d)
            assert (sockdir / "data" / "engine-sqlite.db").exists() is (variant == "sqlite-own-file")
            await trio.to_thread.run_sync(d.start)
            [taker] = await rpc(d, "dex.orders", {"account": "taker"})
            assert (taker["client_order_id"], taker["status"], taker["filled"]) == ("crash-1", "closed", "1.50")
            assert [(t["price"], t["qty"]) for t in taker["trades"]] == [("50.00", "1.00"), ("51.00", "0.50")]
            assert len(await rpc(d, "dex.trades", {})) == 2
            notional = 50_000_000 + 25_500_000
            assert (await balances(d, "taker"))["USDC"] == (1_000_000_000 - notional - notional * 20 // 10_000, 0)
            assert (await balances(d, "taker"))["ZEC"] == (150_000_000, 0)
            assert (await balances(d, "maker"))["USDC"] == (notional - notional * 10 // 10_000, 0)
            assert (await balances(d, "maker"))["ZEC"] == (800_000_000, 50_000_000)
            fills = [e for e in await rpc(d, "ledger.history", {"limit": 100}) if e["kind"] == "fill"]
            assert len(fills) == 2 and len({e["key"] for e in fills}) == 2
            assert (await rpc(d, "ledger.verify"))["ok"]
            book = await rpc(d, "dex.order_book", {"market": "ZEC/USDC"})
            assert (book["bids"], book["asks"]) == ([], [["51.00", "0.50"]])
            # A second restart applies nothing twice.
            assert d.stop() == 0
            await trio.to_thread.run_sync(d.start)
            assert len(await rpc(d, "dex.trades", {})) == 2
            assert (await balances(d, "taker"))["ZEC"] == (150_000_000, 0)
            assert (await rpc(d, "ledger.verify"))["ok"]
        finally:
            d.kill()


async def test_hook_order_filled(sockdir):
    log_path = sockdir / "plugin.log"
    with trio.fail_after(60):
        d = await trio.to_thread.run_sync(lambda: start_dex_daemon(
            sockdir, "memory", test_plugin=True, env={"TACHYON_TESTPLUGIN_LOG": str(log_path)}))
        try:
            await fund(d, "maker", ZEC="1")
            await fund(d, "taker", USDC="100")
            await order(d, "maker", "sell", "1", "50.00")
            o = await order(d, "taker", "buy", "1", "50.00")
            [trade] = o["trades"]
            records = [json.loads(line) for line in log_path.read_text().splitlines()]
            filled = [r for r in records if r["hook"] == "order_filled"]
            assert filled == [{"hook": "order_filled", "trade": trade}]
        finally:
            d.kill()


async def test_orders_need_an_unlocked_wallet_and_resume_after_unlock(sockdir):
    with trio.fail_after(60):
        d = await trio.to_thread.run_sync(start_dex_daemon, sockdir, "sqlite")
        try:
            await fund(d, "maker", ZEC="1")
            resting = await order(d, "maker", "sell", "1", "50.00")
            await rpc(d, "wallet.lock")
            err = await rpc_error(d, "dex.place_order", {"account": "maker", "market": "ZEC/USDC", "side": "sell",
                                                         "type": "limit", "price": "51.00", "qty": "0.5"})
            assert err.code == -32001
            assert (await rpc_error(d, "dex.cancel_order", {"order_id": resting["id"]})).code == -32001
            await rpc(d, "wallet.unlock", {"password": PASSWORD})
            assert (await rpc(d, "dex.cancel_order", {"order_id": resting["id"]}))["status"] == "canceled"
            assert (await balances(d, "maker"))["ZEC"] == (100_000_000, 0)
        finally:
            d.kill()
