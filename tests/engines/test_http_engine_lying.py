"""A lying engine server (a fake peer speaking docs/engine-api.yaml) against a real tachyond.

Every kind of invalid fill is refused before money moves: the market halts with a clear reason in the
logs, /healthz, dex.markets and a metric, the ledger still verifies; after the operator's fix (the server
serves a correct log) and a restart, settlement resumes and a valid fill settles.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import trio
from conftest import DaemonProc
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from test_http_engine import TOKEN
from test_http_engine_daemon import PASSWORD, daemon_document

MARKET = {"symbol": "ZEC/USDC", "base": "ZEC", "quote": "USDC", "tick": "0.01", "lot": "0.0001"}
USDC = 1_000_000


class FakeEngine:
    """Speaks the protocol; its feed is whatever the test puts in ``events`` (it never matches anything)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.orders: dict[str, dict[str, Any]] = {}
        self.epoch = "fake-epoch-0001"
        self._changed = trio.Event()

    def add(self, **event: Any) -> int:
        seq = len(self.events) + 1
        self.events.append({"seq": seq, "market": "ZEC/USDC", "price_ticks": 0, "maker_order_id": None,
                            "taker_side": None, "reason": None, **event})
        self._changed.set()
        self._changed = trio.Event()
        return seq

    def replace(self, seq: int, **event: Any) -> None:
        """The operator's fix: the server's log now holds a correct event at that seq."""
        self.events[seq - 1] = {"seq": seq, "market": "ZEC/USDC", "price_ticks": 0, "maker_order_id": None,
                                "taker_side": None, "reason": None, **event}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                await send({"type": msg["type"] + ".complete"})
                if msg["type"] == "lifespan.shutdown":
                    return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        status, answer = await self.route(scope["method"], scope["path"],
                                          dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if p),
                                          json.loads(body) if body else None)
        data = json.dumps(answer).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    async def route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        if path == "/v1/markets":
            return 200, {"markets": [MARKET]}
        if path == "/v1/events":
            after, limit = int(query.get("after", 0)), int(query.get("limit", 1000))
            if float(query.get("wait_s", 0)) and len(self.events) <= after:
                with trio.move_on_after(float(query["wait_s"])):
                    await self._changed.wait()
            return 200, {"events": self.events[after:after + limit] if limit else [], "last_seq": len(self.events),
                         "epoch": self.epoch, "durable": True, "first_seq": 1}
        if path == "/v1/orders" and method == "POST":
            self.orders[body["order_id"]] = body
            seq = self.add(kind="rested", order_id=body["order_id"], qty_lots=body["qty_lots"])
            return 200, {"events": [self.events[seq - 1]]}
        if path.startswith("/v1/open-orders/"):
            return 200, {"orders": list(self.orders.values())}
        if path.startswith("/v1/depth/"):
            return 200, {"seq": len(self.events), "bids": [], "asks": []}
        if path == "/v1/compact":
            return 200, {}
        return 404, {"error": "no such route"}


async def call(d: DaemonProc, method: str, params: Any = None) -> Any:
    return await trio.to_thread.run_sync(d.call, method, params)


async def wait_halted(d: DaemonProc) -> str:
    while True:
        [m] = await call(d, "dex.markets")
        if m["halted"]:
            return m["halt_reason"]
        await trio.sleep(0.02)


async def test_each_kind_of_invalid_fill_moves_nothing_and_halts_the_market(sockdir: Any) -> None:
    fake = FakeEngine()
    hc = HypercornConfig()
    hc.bind = ["127.0.0.1:0"]
    hc.accesslog = None
    daemons: list[DaemonProc] = []
    with trio.fail_after(240):
        async with trio.open_nursery() as nursery:
            [url] = await nursery.start(lambda task_status: serve(fake, hc, mode="asgi", task_status=task_status))
            doc = daemon_document(sockdir, url)
            def start() -> DaemonProc:
                daemons.append(DaemonProc(sockdir, doc, env={"TACHYON_ENGINE_TOKEN": TOKEN}).start())
                return daemons[-1]

            try:
                d = await trio.to_thread.run_sync(start)
                await call(d, "wallet.create", {"password": PASSWORD})
                await call(d, "accounts.create", {"name": "bob"})
                await call(d, "ledger.deposit", {"account": "bob", "token": "ZEC", "amount": "2", "reference": "z"})
                await call(d, "ledger.deposit", {"account": "bob", "token": "USDC", "amount": "100", "reference": "u"})
                place = {"account": "bob", "market": "ZEC/USDC", "type": "limit", "qty": "1"}
                ask = await call(d, "dex.place_order", {**place, "side": "sell", "price": "40.00"})   # 4000 ticks
                bid = await call(d, "dex.place_order", {**place, "side": "buy", "price": "30.00"})    # 3000 ticks
                ioc = await call(d, "dex.place_order", {**place, "side": "buy", "price": "20.00",
                                                         "time_in_force": "ioc"})
                # A market buy meets an empty book: its protection limit is the lowest tick (its hold 0.02 USDC).
                mkt = await call(d, "dex.place_order", {"account": "bob", "market": "ZEC/USDC", "side": "buy",
                                                        "type": "market", "qty": "1"})
                assert [o["status"] for o in (ask, bid)] == ["open", "open"]
                fake.add(kind="done", order_id=ioc["id"], qty_lots=10_000, reason="expired")
                while (await call(d, "dex.orders", {"status": "expired"})) == []:
                    await trio.sleep(0.02)
                sell_fill = {"kind": "fill", "order_id": "someone-elses", "maker_order_id": ask["id"],
                             "taker_side": "buy", "qty_lots": 5_000, "price_ticks": 4000}
                buy_fill = {"kind": "fill", "order_id": "someone-elses", "maker_order_id": bid["id"],
                            "taker_side": "sell", "qty_lots": 5_000, "price_ticks": 3000}
                lies = [
                    ({**sell_fill, "price_ticks": 3999}, "not at its own price"),
                    ({**buy_fill, "price_ticks": 3001}, "not at its own price"),
                    ({**sell_fill, "order_id": ask["id"], "maker_order_id": "someone", "price_ticks": 3999},
                     "as a buy, but it is a sell"),
                    ({**buy_fill, "order_id": bid["id"], "maker_order_id": "x", "taker_side": "buy",
                      "price_ticks": 3001}, "above its limit"),
                    ({**sell_fill, "qty_lots": -5}, "not a positive integer"),
                    ({**sell_fill, "qty_lots": 0}, "not a positive integer"),
                    ({**sell_fill, "qty_lots": 10_001}, "which has 10000 left"),
                    ({**sell_fill, "qty_lots": True}, "not a positive integer"),
                    ({**sell_fill, "qty_lots": 5000.0}, "not a positive integer"),
                    ({**sell_fill, "price_ticks": "4000"}, "not a positive integer"),
                    ({**sell_fill, "market": "BASE/USDC"}, "of market ZEC/USDC"),
                    ({**sell_fill, "taker_side": "sell"}, "as a buy, but it is a sell"),
                    ({**sell_fill, "order_id": ask["id"]}, "the same order"),
                    ({**sell_fill, "maker_order_id": ioc["id"]}, "no longer open"),
                    ({**sell_fill, "kind": "bogus"}, "unknown event kind"),
                    ({**buy_fill, "order_id": mkt["id"], "maker_order_id": "someone", "taker_side": "buy",
                      "price_ticks": 2}, "above its limit 1"),
                    ({**sell_fill, "maker_order_id": mkt["id"], "taker_side": "sell", "price_ticks": 1},
                     "never rests"),
                ]
                harmless = {"kind": "fill", "order_id": "t-other", "maker_order_id": "m-other",
                            "taker_side": "buy", "qty_lots": 1, "price_ticks": 4000}
                for lie, reason in lies:
                    http = (await call(d, "daemon.info"))["http"][0]
                    before = await call(d, "ledger.balances", {"account": "bob"})
                    venue = await call(d, "ledger.balances", {"account": "venue:http"})
                    seq = fake.add(**lie)
                    why = await wait_halted(d)
                    assert reason in why and f"seq {seq}" in why, (lie, why)
                    assert await call(d, "ledger.balances", {"account": "bob"}) == before, lie
                    assert await call(d, "ledger.balances", {"account": "venue:http"}) == venue, lie
                    assert (await call(d, "ledger.verify"))["ok"] is True
                    assert not await call(d, "dex.trades")
                    async with httpx.AsyncClient() as client:
                        health = await client.get(http + "/healthz")
                        metrics = (await client.get(http + "/metrics")).text
                    assert health.status_code == 503 and "market:ZEC/USDC" in health.text, health.text
                    assert 'tachyon_dex_market_halted{market="ZEC/USDC"} 1.0' in metrics
                    assert "invalid event refused" in d.stderr() and "restart the daemon" in d.stderr()
                    refused = await trio.to_thread.run_sync(d.raw, json.dumps(
                        {"jsonrpc": "2.0", "id": 1, "method": "dex.place_order",
                         "params": {**place, "side": "buy", "price": "1.00"}}).encode() + b"\n")
                    assert b"is halted" in refused, refused
                    # The operator's fix: the server's log is corrected (here: another wallet's trade), and a
                    # restart replays the feed from the last applied seq.
                    fake.replace(seq, **harmless)
                    d.kill()
                    d = await trio.to_thread.run_sync(start)
                    await call(d, "dex.order_book", {"market": "ZEC/USDC"})   # answers once recovered
                    assert (await call(d, "dex.markets"))[0]["halted"] is False
                    assert await call(d, "ledger.balances", {"account": "bob"}) == before
                # A valid fill of the resting sell settles, at its price, with the maker fee.
                fake.add(**{**sell_fill, "qty_lots": 10_000})
                fake.add(kind="done", order_id=ask["id"], qty_lots=0, reason="filled")
                while (await call(d, "dex.orders", {"status": "closed"})) == []:
                    await trio.sleep(0.02)
                [sold] = await call(d, "dex.orders", {"status": "closed"})
                assert (sold["id"], sold["filled"], sold["fee"]) == (ask["id"], "1.00", "0.04")
                usdc = {b["token"]: b for b in await call(d, "ledger.balances", {"account": "bob"})}["USDC"]
                # The bid at 30.00 still locks 30.00 plus the highest fee it may pay (20 bps): 30.06; the market
                # buy (left open by this fake server) 0.02.
                assert (usdc["available_minor"], usdc["locked_minor"]) == (
                    140 * USDC - 40_000 - 30_060_000 - 20_000, 30_060_000 + 20_000)
                assert (await call(d, "ledger.verify"))["ok"] is True
            finally:
                for p in daemons:
                    p.kill()
                nursery.cancel_scope.cancel()


class RawOnce(FakeEngine):
    """The fake engine, whose next feed answer is ``raw`` (any bytes) when set."""

    raw: bytes | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/events" and self.raw is not None:
            data, self.raw = self.raw, None
            while (await receive()).get("more_body"):
                pass
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(len(data)).encode())]})
            await send({"type": "http.response.body", "body": data})
            return
        await super().__call__(scope, receive, send)


async def test_a_malformed_event_halts_without_echoing_the_servers_text(sockdir: Any) -> None:
    """An event with a field the protocol does not have (its name is the server's text), or without a required
    one, halts settlement with a reason that names the problem, never the server's text; nothing moves. (Found by
    the engine-feed fuzz target of `make torture`: the field's name reached dex.markets verbatim.) A feed answer
    that is not a JSON object says so (it said "its reason is in the daemon's log", where nothing was)."""
    fake = RawOnce()
    hc = HypercornConfig()
    hc.bind = ["127.0.0.1:0"]
    hc.accesslog = None
    odd = "<b>\u202eevil" + "x" * 300
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            [url] = await nursery.start(lambda task_status: serve(fake, hc, mode="asgi", task_status=task_status))
            doc = daemon_document(sockdir, url)
            d = DaemonProc(sockdir, doc, env={"TACHYON_ENGINE_TOKEN": TOKEN})
            try:
                await trio.to_thread.run_sync(d.start)
                await call(d, "wallet.create", {"password": PASSWORD})
                await call(d, "accounts.create", {"name": "bob"})
                await call(d, "ledger.deposit", {"account": "bob", "token": "ZEC", "amount": "2", "reference": "z"})
                ask = await call(d, "dex.place_order", {"account": "bob", "market": "ZEC/USDC", "type": "limit",
                                                        "qty": "1", "side": "sell", "price": "40.00"})
                fill = {"kind": "fill", "order_id": "someone-elses", "maker_order_id": ask["id"],
                        "taker_side": "buy", "qty_lots": 5_000, "price_ticks": 4000}
                before = await call(d, "ledger.balances", {"account": "bob"})
                cases = [({**fill, odd: 1}, "event 1 of the answer has 1 field(s) not in the protocol"),
                         ({k: v for k, v in fill.items() if k != "kind"}, "event 1 of the answer has no kind")]
                for event, reason in cases:
                    seq = fake.add(**event)
                    why = await wait_halted(d)
                    assert reason in why and "malformed events" in why, why
                    assert "evil" not in why and "<b>" not in why, why
                    assert await call(d, "ledger.balances", {"account": "bob"}) == before
                    assert (await call(d, "ledger.verify"))["ok"] is True
                    assert "evil" not in json.dumps(await call(d, "dex.markets"))
                    fake.replace(seq, kind="rested", order_id=f"theirs-{seq}", qty_lots=1)
                    d.kill()
                    await trio.to_thread.run_sync(d.start)
                    await call(d, "dex.order_book", {"market": "ZEC/USDC"})
                    assert (await call(d, "dex.markets"))[0]["halted"] is False
                for raw, reason in ((b"<html>not json", "answered 200 with a body that is not JSON"),
                                    (b'["events"]', "answered 200 with JSON that is not an object")):
                    fake.raw = raw
                    fake.add(kind="rested", order_id=f"theirs-{len(fake.events) + 1}", qty_lots=1)  # wakes the poll
                    why = await wait_halted(d)
                    assert reason in why and "in the daemon's log" not in why, why
                    assert await call(d, "ledger.balances", {"account": "bob"}) == before
                    d.kill()
                    await trio.to_thread.run_sync(d.start)
                    await call(d, "dex.order_book", {"market": "ZEC/USDC"})
                    assert (await call(d, "dex.markets"))[0]["halted"] is False
                assert "not in the protocol" in d.stderr()
            finally:
                d.kill()
                nursery.cancel_scope.cancel()


async def test_another_wallets_events_naming_a_market_not_listed_here_pass_over(sockdir: Any) -> None:
    """A shared engine serves markets this daemon does not list: another wallet's fill or done there moves
    nothing here and settlement goes on. (Found by the engine-feed fuzz target: the settlement looked the
    market up before asking whose orders the event names, failed with KeyError, and stopped the engine.)"""
    fake = FakeEngine()
    hc = HypercornConfig()
    hc.bind = ["127.0.0.1:0"]
    hc.accesslog = None
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            [url] = await nursery.start(lambda task_status: serve(fake, hc, mode="asgi", task_status=task_status))
            d = DaemonProc(sockdir, daemon_document(sockdir, url), env={"TACHYON_ENGINE_TOKEN": TOKEN})
            try:
                await trio.to_thread.run_sync(d.start)
                await call(d, "wallet.create", {"password": PASSWORD})
                await call(d, "accounts.create", {"name": "bob"})
                await call(d, "ledger.deposit", {"account": "bob", "token": "ZEC", "amount": "2", "reference": "z"})
                ask = await call(d, "dex.place_order", {"account": "bob", "market": "ZEC/USDC", "type": "limit",
                                                        "qty": "1", "side": "sell", "price": "40.00"})
                for market in ("", "BTC/USDC"):
                    fake.add(kind="fill", market=market, order_id="theirs-t", maker_order_id="theirs-m",
                             taker_side="buy", qty_lots=1, price_ticks=4000)
                    fake.add(kind="done", market=market, order_id="theirs-t", qty_lots=0, reason="filled")
                # A valid fill of this wallet's ask after them settles: the feed went on past them.
                fake.add(kind="fill", order_id="theirs-x", maker_order_id=ask["id"], taker_side="buy",
                         qty_lots=10_000, price_ticks=4000)
                while (await call(d, "dex.trades")) == []:
                    await trio.sleep(0.02)
                http = (await call(d, "daemon.info"))["http"][0]
                async with httpx.AsyncClient() as client:
                    health = await client.get(http + "/healthz")
                assert health.status_code == 200, health.text
                assert (await call(d, "dex.markets"))[0]["halted"] is False
                assert len(await call(d, "dex.trades")) == 1
                assert (await call(d, "ledger.verify"))["ok"] is True
                assert "Traceback" not in d.stderr()
            finally:
                d.kill()
                nursery.cancel_scope.cancel()
