"""DEX rules through a real tachyond per engine: one market per test, so tests do not share a book."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import trio
from test_dex_helpers import balances, fund, order, rpc, rpc_error, start_dex_daemon

BASES = ["TICK", "LOT", "MIN", "FUNDS", "POST", "FOK", "IOC", "STP", "COID", "MKT", "CANCEL", "FEES", "SHAPE", "METR"]


@pytest.fixture(scope="module", params=["memory", "sqlite"])
def dexd(request):
    """One daemon per engine for this module; every test trades its own market and accounts."""
    dir_ = Path(tempfile.mkdtemp(prefix="tyd-", dir="/tmp"))
    d = start_dex_daemon(dir_, request.param, BASES)
    yield d
    assert d.stop() == 0
    shutil.rmtree(dir_, ignore_errors=True)


async def test_price_off_the_tick_is_refused(dexd):
    with trio.fail_after(30):
        await fund(dexd, "tick-a", USDC="100")
        err = await rpc_error(dexd, "dex.place_order", {"account": "tick-a", "market": "TICK/USDC", "side": "buy",
                                                        "type": "limit", "price": "10.005", "qty": "1"})
        assert (err.code, err.message) == (-32021, "price 10.005 is off the tick 0.01 of TICK/USDC")
        assert await rpc(dexd, "dex.orders", {"account": "tick-a"}) == []
        assert (await balances(dexd, "tick-a"))["USDC"] == (100_000_000, 0)


async def test_qty_off_the_lot_is_refused(dexd):
    with trio.fail_after(30):
        await fund(dexd, "lot-a", USDC="100")
        err = await rpc_error(dexd, "dex.place_order", {"account": "lot-a", "market": "LOT/USDC", "side": "buy",
                                                        "type": "limit", "price": "10", "qty": "0.00001"})
        assert (err.code, err.message) == (-32021, "qty 0.00001 is off the lot 0.0001 of LOT/USDC")
        # Past Decimal's default 28 digits the quantity is still refused, never rounded onto the lot.
        err = await rpc_error(
            dexd,
            "dex.place_order",
            {
                "account": "lot-a",
                "market": "LOT/USDC",
                "side": "buy",
                "type": "limit",
                "price": "10",
                "qty": "1.000000000000000000000000000001",
            },
        )
        assert err.code == -32021 and "off the lot" in err.message
        assert await rpc(dexd, "dex.orders", {"account": "lot-a"}) == []


async def test_under_min_notional_is_refused(dexd):
    with trio.fail_after(30):
        await fund(dexd, "min-a", USDC="100")
        err = await rpc_error(dexd, "dex.place_order", {"account": "min-a", "market": "MIN/USDC", "side": "buy",
                                                        "type": "limit", "price": "10.00", "qty": "0.01"})
        assert err.code == -32021
        assert err.message == "notional 0.10 USDC is under the min_notional 1.00 USDC of MIN/USDC"
        assert await rpc(dexd, "dex.orders", {"account": "min-a"}) == []
        unknown = await rpc_error(dexd, "dex.place_order", {"market": "NOPE/USDC", "side": "buy", "type": "limit",
                                                            "price": "1", "qty": "1"})
        assert unknown.code == -32020 and "NOPE/USDC" in unknown.message


async def test_insufficient_funds_is_refused_with_nothing_locked(dexd):
    with trio.fail_after(30):
        await fund(dexd, "funds-a", USDC="120")
        # 10 FUNDS at 50.00 = 500.00, plus the largest taker fee: 20 bps of 0.005 per lot = 0.00001 x 100000 lots.
        err = await rpc_error(dexd, "dex.place_order", {"account": "funds-a", "market": "FUNDS/USDC", "side": "buy",
                                                        "type": "limit", "price": "50.00", "qty": "10"})
        assert (err.code, err.message) == (-32013, "insufficient available USDC: need 501.00, have 120.00")
        assert (await balances(dexd, "funds-a"))["USDC"] == (120_000_000, 0)
        assert await rpc(dexd, "dex.orders", {"account": "funds-a"}) == []
        history = await rpc(dexd, "ledger.history", {"account": "funds-a"})
        assert [e["kind"] for e in history] == ["deposit"]
        sell = await rpc_error(dexd, "dex.place_order", {"account": "funds-a", "market": "FUNDS/USDC", "side": "sell",
                                                         "type": "limit", "price": "50.00", "qty": "1"})
        assert (sell.code, sell.message) == (-32013, "insufficient available FUNDS: need 1.00, have 0.00")


async def test_post_only_that_would_take_is_refused(dexd):
    with trio.fail_after(30):
        await fund(dexd, "post-m", POST="5")
        await fund(dexd, "post-t", USDC="1000")
        await order(dexd, "post-m", "sell", "1", "50.00", market="POST/USDC")
        err = await rpc_error(dexd, "dex.place_order", {"account": "post-t", "market": "POST/USDC", "side": "buy",
                                                        "type": "limit", "price": "50.00", "qty": "1",
                                                        "post_only": True})
        assert err.code == -32021 and err.message == "post-only buy at 50.00 would take the ask at 50.00"
        assert (await balances(dexd, "post-t"))["USDC"] == (1_000_000_000, 0)
        resting = await order(dexd, "post-t", "buy", "1", "49.99", market="POST/USDC", post_only=True)
        assert resting["status"] == "open" and resting["trades"] == []
        # A post-only bid is always the maker: it holds the maker fee (10 bps), not the taker fee.
        assert (await balances(dexd, "post-t"))["USDC"][1] == 10000 * (4999 + 5)


async def test_fok_fills_entirely_or_not_at_all(dexd):
    with trio.fail_after(30):
        await fund(dexd, "fok-m", FOK="5")
        await fund(dexd, "fok-t", USDC="1000")
        await order(dexd, "fok-m", "sell", "1", "50.00", market="FOK/USDC")
        await order(dexd, "fok-m", "sell", "1", "51.00", market="FOK/USDC")
        book_before = await rpc(dexd, "dex.order_book", {"market": "FOK/USDC"})
        too_big = await order(dexd, "fok-t", "buy", "3", "51.00", market="FOK/USDC", time_in_force="fok")
        assert (too_big["status"], too_big["filled"], too_big["trades"]) == ("expired", "0.00", [])
        assert (await balances(dexd, "fok-t"))["USDC"] == (1_000_000_000, 0)
        book_after = await rpc(dexd, "dex.order_book", {"market": "FOK/USDC"})
        assert (book_after["bids"], book_after["asks"]) == (book_before["bids"], book_before["asks"])
        fits = await order(dexd, "fok-t", "buy", "2", "51.00", market="FOK/USDC", time_in_force="fok")
        assert (fits["status"], fits["filled"], len(fits["trades"])) == ("closed", "2.00", 2)
        assert (await balances(dexd, "fok-t"))["USDC"] == (1_000_000_000 - 101_000_000 - 202_000, 0)


async def test_ioc_remainder_expires_and_its_hold_is_released(dexd):
    with trio.fail_after(30):
        await fund(dexd, "ioc-m", IOC="5")
        await fund(dexd, "ioc-t", USDC="1000")
        await order(dexd, "ioc-m", "sell", "1", "50.00", market="IOC/USDC")
        o = await order(dexd, "ioc-t", "buy", "3", "50.00", market="IOC/USDC", time_in_force="ioc")
        assert (o["status"], o["filled"], o["remaining"]) == ("expired", "1.00", "2.00")  # remaining = qty - filled
        assert (await balances(dexd, "ioc-t")) == {"USDC": (1_000_000_000 - 50_000_000 - 100_000, 0),
                                                   "IOC": (100_000_000, 0), "ZEC": (0, 0),
                                                   **{b: (0, 0) for b in BASES if b not in ("IOC",)}}
        assert (await rpc(dexd, "dex.order_book", {"market": "IOC/USDC"}))["bids"] == []


async def test_self_trade_prevention_cancels_the_taker(dexd):
    with trio.fail_after(30):
        await fund(dexd, "stp-a", USDC="1000", STP="5")
        maker = await order(dexd, "stp-a", "sell", "1", "50.00", market="STP/USDC")
        taker = await order(dexd, "stp-a", "buy", "1", "50.00", market="STP/USDC")
        assert (taker["status"], taker["filled"], taker["trades"]) == ("canceled", "0.00", [])
        assert (await balances(dexd, "stp-a"))["USDC"] == (1_000_000_000, 0)
        assert (await balances(dexd, "stp-a"))["STP"] == (400_000_000, 100_000_000)
        orders = {o["id"]: o["status"] for o in await rpc(dexd, "dex.orders", {"account": "stp-a"})}
        assert orders == {maker["id"]: "open", taker["id"]: "canceled"}


async def test_client_order_id_repeat_returns_the_first_order(dexd):
    with trio.fail_after(30):
        await fund(dexd, "coid-a", USDC="1000")
        first = await order(dexd, "coid-a", "buy", "1", "40.00", market="COID/USDC", client_order_id="x-1")
        after_first = await balances(dexd, "coid-a")
        again = await order(dexd, "coid-a", "buy", "1", "40.00", market="COID/USDC", client_order_id="x-1")
        assert again["id"] == first["id"] and (again["price"], again["qty"]) == ("40.00", "1.00")
        # The same id for another order is the caller's mistake, not a repeat: Conflict, nothing recorded.
        for other in ({"qty": "2"}, {"price": "41.00"}, {"side": "sell"}, {"time_in_force": "ioc"},
                      {"post_only": True}):
            params = {"account": "coid-a", "market": "COID/USDC", "side": "buy", "type": "limit", "qty": "1",
                      "price": "40.00", "client_order_id": "x-1", **other}
            err = await rpc_error(dexd, "dex.place_order", params)
            assert err.code == -32014 and "'x-1'" in err.message and first["id"] in err.message, (other, err)
            assert err.data == {"client_order_id": "x-1", "order_id": first["id"]}
        assert await balances(dexd, "coid-a") == after_first
        assert len(await rpc(dexd, "dex.orders", {"account": "coid-a"})) == 1
        await fund(dexd, "coid-b", USDC="1000")
        other = await order(dexd, "coid-b", "buy", "1", "40.00", market="COID/USDC", client_order_id="x-1")
        assert other["id"] != first["id"]  # unique per account, not globally


async def test_market_order_fills_only_within_the_protection_band(dexd):
    with trio.fail_after(30):
        await fund(dexd, "mkt-m", MKT="5")
        await fund(dexd, "mkt-t", USDC="1000")
        # Nothing to buy from: accepted, expired with nothing filled, nothing left locked.
        empty = await order(dexd, "mkt-t", "buy", "1", market="MKT/USDC")
        assert (empty["status"], empty["filled"], empty["remaining"], empty["trades"]) == (
            "expired",
            "0.00",
            "1.00",
            [],
        )
        assert (await balances(dexd, "mkt-t"))["USDC"] == (1_000_000_000, 0)
        for price in ("100.00", "104.00", "106.00"):
            await order(dexd, "mkt-m", "sell", "1", price, market="MKT/USDC")
        o = await order(dexd, "mkt-t", "buy", "3", market="MKT/USDC")
        assert o["protection_price"] == "105.00" and o["price"] is None
        assert (o["status"], o["filled"]) == ("expired", "2.00")
        assert [t["price"] for t in o["trades"]] == ["100.00", "104.00"]
        assert (await balances(dexd, "mkt-t"))["USDC"] == (1_000_000_000 - 204_000_000 - 408_000, 0)
        sell = await order(dexd, "mkt-m", "sell", "1", market="MKT/USDC")
        assert (sell["status"], sell["filled"]) == ("expired", "0.00")
        assert (await balances(dexd, "mkt-m"))["MKT"][1] == 100_000_000  # only the resting ask's lock remains
        gtc = await rpc_error(dexd, "dex.place_order", {"account": "mkt-t", "market": "MKT/USDC", "side": "buy",
                                                        "type": "market", "qty": "1", "time_in_force": "gtc"})
        assert gtc.code == -32602


async def test_cancel_releases_the_hold(dexd):
    with trio.fail_after(30):
        await fund(dexd, "cancel-a", USDC="1000")
        o = await order(dexd, "cancel-a", "buy", "1", "10.00", market="CANCEL/USDC", client_order_id="c1")
        assert (await balances(dexd, "cancel-a"))["USDC"] == (1_000_000_000 - 10_020_000, 10_020_000)
        done = await rpc(dexd, "dex.cancel_order", {"order_id": o["id"]})
        assert done["status"] == "canceled"
        assert (await balances(dexd, "cancel-a"))["USDC"] == (1_000_000_000, 0)
        again = await rpc_error(dexd, "dex.cancel_order", {"order_id": o["id"]})
        assert again.code == -32022 and "canceled" in again.message
        assert (await rpc_error(dexd, "dex.cancel_order", {"order_id": "nope"})).code == -32005
        o3 = await order(dexd, "cancel-a", "buy", "1", "10.00", market="CANCEL/USDC", client_order_id="c2")
        by_coid = await rpc(dexd, "dex.cancel_order", {"client_order_id": "c2", "account": "cancel-a"})
        assert (by_coid["id"], by_coid["status"]) == (o3["id"], "canceled")
        assert (await rpc(dexd, "ledger.verify"))["ok"]


async def test_fees_and_holds_worked_example(dexd):
    """The docs' example: 2 at 50.00 (maker 10 bps) taken by a bid at 50.50 (taker 20 bps)."""
    with trio.fail_after(30):
        await fund(dexd, "fees-m", FEES="5")
        await fund(dexd, "fees-t", USDC="1000")
        ask = await order(dexd, "fees-m", "sell", "2", "50.00", market="FEES/USDC")
        bid = await order(dexd, "fees-t", "buy", "2", "50.50", market="FEES/USDC")
        assert (bid["status"], bid["cost"], bid["fee"]) == ("closed", "100.00", "0.20")
        [trade] = bid["trades"]
        assert (trade["price"], trade["qty"], trade["maker_fee"], trade["taker_fee"]) == (
            "50.00",
            "2.00",
            "0.10",
            "0.20",
        )
        assert (trade["maker_order_id"], trade["taker_order_id"], trade["taker_side"]) == (ask["id"], bid["id"], "buy")
        assert (await balances(dexd, "fees-t"))["USDC"] == (1_000_000_000 - 100_200_000, 0)
        assert (await balances(dexd, "fees-t"))["FEES"] == (200_000_000, 0)
        assert (await balances(dexd, "fees-m"))["USDC"] == (99_900_000, 0)
        assert (await balances(dexd, "fees-m"))["FEES"] == (300_000_000, 0)
        [fill] = [e for e in await rpc(dexd, "ledger.history", {"account": "fees-t"}) if e["kind"] == "fill"]
        assert {p["account"]: p["amount"] for p in fill["postings"] if p["account"] == "fees"} == {"fees": "0.30"}
        assert (await rpc(dexd, "ledger.verify"))["ok"]
        trades = await rpc(dexd, "dex.trades", {"market": "FEES/USDC", "account": "fees-m"})
        assert [t["id"] for t in trades] == [trade["id"]]


async def test_shapes_of_markets_book_orders_and_trades(dexd):
    with trio.fail_after(30):
        markets = {m["symbol"]: m for m in await rpc(dexd, "dex.markets")}
        assert markets["ZEC/USDC"] == {
            "symbol": "ZEC/USDC",
            "base": "ZEC",
            "quote": "USDC",
            "engine": markets["ZEC/USDC"]["engine"],
            "tick": "0.01",
            "lot": "0.0001",
            "min_notional": "1.00",
            "tick_minor": 10_000,
            "lot_minor": 10_000,
            "min_notional_minor": 1_000_000,
            "maker_fee_bps": 10,
            "taker_fee_bps": 20,
            "protection_bps": 500,
            "halted": False,
            "halt_reason": None,
            "engine_online": True,
        }
        await fund(dexd, "shape-a", USDC="1000", SHAPE="5")
        await order(dexd, "shape-a", "buy", "1", "10.00", market="SHAPE/USDC")
        await order(dexd, "shape-a", "buy", "0.5", "10.00", market="SHAPE/USDC")
        await order(dexd, "shape-a", "buy", "1", "9.00", market="SHAPE/USDC")
        await order(dexd, "shape-a", "sell", "2", "12.00", market="SHAPE/USDC")
        book = await rpc(dexd, "dex.order_book", {"market": "SHAPE/USDC", "depth": 1})
        assert (book["bids"], book["asks"]) == ([["10.00", "1.50"]], [["12.00", "2.00"]]) and book["seq"] > 0
        o = (await rpc(dexd, "dex.orders", {"account": "shape-a", "market": "SHAPE/USDC", "status": "open"}))[0]
        assert set(o) >= {"id", "client_order_id", "account", "market", "side", "type", "time_in_force", "post_only",
                          "price", "qty", "filled", "remaining", "cost", "fee", "status", "created_at", "trades",
                          "qty_minor", "filled_minor", "cost_minor", "fee_minor", "price_minor"}
        locked = await rpc_error(dexd, "dex.order_book", {"market": "SHAPE/USDC", "depth": 0})
        assert locked.code == -32602


async def test_metrics_count_orders_filled_and_trades_apart(dexd):
    """tachyon_orders_filled counts orders that end filled (maker and taker alike); tachyon_trades counts fills."""
    import httpx

    def metric(text: str, name: str) -> float:
        line = f'{name}{{market="METR/USDC"}} '
        return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(line))

    async def counts() -> tuple[float, float, float]:
        base = (await rpc(dexd, "daemon.info"))["http"][0]
        async with httpx.AsyncClient() as client:
            text = (await client.get(base + "/metrics", timeout=10)).text
        return (metric(text, "tachyon_orders_placed_total"), metric(text, "tachyon_orders_filled_total"),
                metric(text, "tachyon_trades_total"))

    with trio.fail_after(30):
        await fund(dexd, "metr-m", METR="5")
        await fund(dexd, "metr-t", USDC="1000")
        await order(dexd, "metr-m", "sell", "2", "50.00", market="METR/USDC")
        first = await order(dexd, "metr-t", "buy", "1", "50.00", market="METR/USDC")
        assert first["status"] == "closed"
        assert await counts() == (2, 1, 1)   # the maker is still open with 1 left
        await order(dexd, "metr-t", "buy", "1", "50.00", market="METR/USDC")
        assert await counts() == (3, 3, 2)   # both takers and the maker filled; two trades
