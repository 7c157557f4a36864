"""DEX paths no other test reached, through real tachyond (and tachyon-engine-server) processes:

a market whose maker fee is above its taker fee, fees that do not divide, a market order with nothing to
meet, the after_match crash on the remote engine, a lost or older SQLite engine store, orders recorded but
never submitted, a lying engine's fill that /healthz names, and a settlement write that fails (a full disk) making
/healthz name the engine.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import httpx
import pytest
import trio
from conftest import DaemonProc, base_document, fill_disk, mount_small_tmpfs
from test_dex_helpers import (
    MARKET_DEFAULTS,
    PASSWORD,
    USDC,
    ZEC,
    balances,
    crash_after_match,
    fund,
    order,
    rpc,
    rpc_error,
    state_snapshot,
)
from test_http_engine import TOKEN, ServerProc, server_document

from tachyon_ctl.client import DaemonNotRunning, RpcError


def _document(dir_, markets: list[dict], **extra) -> dict:
    (dir_ / "pw").write_text(PASSWORD)
    return base_document(dir_, tokens=[USDC, ZEC], markets=markets, wallet={"password_file": str(dir_ / "pw")},
                         **extra)


async def _start(d: DaemonProc, create: bool = True) -> DaemonProc:
    await trio.to_thread.run_sync(d.start)
    if create:
        await rpc(d, "wallet.create", {"password": PASSWORD})
        await rpc(d, "wallet.unlock", {"password": PASSWORD})
    return d


async def _fee_total(d) -> int:
    """What the fees account holds, from the journal (it is a system account: ledger.balances lists users)."""
    return sum(p["amount_minor"] for e in await rpc(d, "ledger.history", {"limit": 1000}) for p in e["postings"]
               if p["account"] == "fees")


async def test_maker_fee_above_taker_fee_resting_bid_with_no_spare_funds_fills_as_maker(sockdir):
    """maker 20 > taker 10 bps: the bid holds docs/dex.md's 101.22 (the higher rate) and its maker fee fits in it."""
    market = {**MARKET_DEFAULTS, "symbol": "ZEC/USDC", "engine": "memory", "maker_fee_bps": 20, "taker_fee_bps": 10}
    with trio.fail_after(60):
        d = await _start(DaemonProc(sockdir, _document(sockdir, [market])))
        try:
            await fund(d, "buyer", USDC="101.22")     # exactly the hold: nothing spare
            await fund(d, "seller", ZEC="2")
            bid = await order(d, "buyer", "buy", "2", "50.50")
            assert (bid["status"], bid["filled"]) == ("open", "0.00")
            assert (await balances(d, "buyer"))["USDC"] == (0, 101_220_000)
            ask = await order(d, "seller", "sell", "2", "50.50")   # the resting bid is the maker
            [trade] = ask["trades"]
            assert (trade["maker_order_id"], trade["taker_side"], trade["notional"]) == (bid["id"], "sell", "101.00")
            assert (trade["maker_fee"], trade["taker_fee"]) == ("0.202", "0.101")
            assert (await balances(d, "buyer")) == {"USDC": (18_000, 0), "ZEC": (200_000_000, 0)}
            assert (await balances(d, "seller")) == {"USDC": (100_899_000, 0), "ZEC": (0, 0)}
            [filled] = await rpc(d, "dex.orders", {"account": "buyer"})
            assert (filled["status"], filled["cost"], filled["fee"]) == ("closed", "101.00", "0.202")
            assert await _fee_total(d) == 303_000
            assert (await rpc(d, "ledger.verify"))["ok"]
        finally:
            d.kill()


async def test_fees_that_do_not_divide_are_rounded_up_per_fill(sockdir):
    """One lot at 50.50 is 0.00505 USDC: the taker's 20 bps is 0.0000101 -> 0.000011, the maker's 10 bps 0.000006."""
    market = {**MARKET_DEFAULTS, "symbol": "ZEC/USDC", "engine": "memory", "min_notional": "0.000001"}
    with trio.fail_after(60):
        d = await _start(DaemonProc(sockdir, _document(sockdir, [market])))
        try:
            await fund(d, "maker", ZEC="1")
            await fund(d, "taker", USDC="1")
            await order(d, "maker", "sell", "0.0003", "50.50")
            taker = await order(d, "taker", "buy", "0.0001", "50.50")
            [trade] = taker["trades"]
            assert (trade["notional_minor"], trade["taker_fee_minor"], trade["maker_fee_minor"]) == (5050, 11, 6)
            assert (trade["taker_fee"], trade["maker_fee"]) == ("0.000011", "0.000006")
            taker = await order(d, "taker", "buy", "0.0002", "50.50")
            [trade] = taker["trades"]   # 10100 x 20 bps = 20.2 -> 21; x 10 bps = 10.1 -> 11
            assert (trade["notional_minor"], trade["taker_fee_minor"], trade["maker_fee_minor"]) == (10_100, 21, 11)
            assert (await balances(d, "taker"))["USDC"] == (1_000_000 - 15_150 - 32, 0)
            assert (await balances(d, "maker"))["USDC"] == (15_150 - 17, 0)
            assert await _fee_total(d) == 49
            assert (await rpc(d, "ledger.verify"))["ok"]
        finally:
            d.kill()


async def test_market_order_with_nothing_to_meet_is_accepted_and_expires(sockdir):
    """docs/decisions.md: not one of the contract's refusals; it ends expired, nothing filled, nothing locked."""
    market = {**MARKET_DEFAULTS, "symbol": "ZEC/USDC", "engine": "memory"}
    with trio.fail_after(60):
        d = await _start(DaemonProc(sockdir, _document(sockdir, [market])))
        try:
            await fund(d, "t", USDC="10", ZEC="1")
            for side in ("buy", "sell"):
                o = await order(d, "t", side, "1")
                assert (o["status"], o["filled"], o["remaining"], o["trades"], o["price"]) == \
                    ("expired", "0.00", "1.00", [], None)
            assert await balances(d, "t") == {"USDC": (10_000_000, 0), "ZEC": (100_000_000, 0)}
            assert [o["status"] for o in await rpc(d, "dex.orders", {"account": "t"})] == ["expired", "expired"]
            book = await rpc(d, "dex.order_book", {"market": "ZEC/USDC"})
            assert (book["bids"], book["asks"]) == ([], [])
            assert (await rpc(d, "ledger.verify"))["ok"]
        finally:
            d.kill()


def _http_document(dir_, url: str) -> dict:
    market = {**MARKET_DEFAULTS, "symbol": "ZEC/USDC", "engine": "http"}
    return _document(dir_, [market], engines={"http": {"url": url, "token_env": "TACHYON_ENGINE_TOKEN",
                                                       "timeout_s": 5}})


async def test_fault_after_match_on_the_remote_engine_settles_every_fill_exactly_once(sockdir, tmp_path):
    with trio.fail_after(90):
        server = await trio.to_thread.run_sync(ServerProc(tmp_path, server_document(tmp_path / "engine")).start)
        d = DaemonProc(sockdir, _http_document(sockdir, server.url), env={"TACHYON_ENGINE_TOKEN": TOKEN})
        try:
            await _start(d)
            await crash_after_match(d)
            await trio.to_thread.run_sync(d.start)   # the server kept the fills; the core replays them once
            [taker] = await rpc(d, "dex.orders", {"account": "taker"})
            assert (taker["client_order_id"], taker["status"], taker["filled"]) == ("crash-1", "closed", "1.50")
            assert [(t["price"], t["qty"]) for t in taker["trades"]] == [("50.00", "1.00"), ("51.00", "0.50")]
            notional = 50_000_000 + 25_500_000
            assert (await balances(d, "taker")) == {"USDC": (1_000_000_000 - notional - 151_000, 0),
                                                    "ZEC": (150_000_000, 0)}
            assert (await balances(d, "maker")) == {"USDC": (notional - 75_500, 0), "ZEC": (800_000_000, 50_000_000)}
            fills = [e["key"] for e in await rpc(d, "ledger.history", {"limit": 100}) if e["kind"] == "fill"]
            assert len(fills) == 2 and len(set(fills)) == 2
            assert (await rpc(d, "ledger.verify"))["ok"]
            # Another restart applies nothing twice.
            assert await trio.to_thread.run_sync(d.stop) == 0
            await trio.to_thread.run_sync(d.start)
            assert len(await rpc(d, "dex.trades", {})) == 2
            assert (await balances(d, "taker"))["ZEC"] == (150_000_000, 0)
            book = await rpc(d, "dex.order_book", {"market": "ZEC/USDC"})
            assert (book["bids"], book["asks"]) == ([], [["51.00", "0.50"]])
        finally:
            d.kill()
            server.kill()


class EngineProxy:
    """A fake peer between the daemon and a real tachyon-engine-server: it forwards each HTTP request (one per
    connection, so it sees every one), and on demand drops the next POST /v1/orders without forwarding it (the
    server never sees it; the daemon gets no answer) or refuses every connection ("down")."""

    def __init__(self, upstream_url: str):
        host, port = upstream_url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.mode = "forward"           # "forward", "drop_next_order" / "hold_next_order" (then "down"), "down"
        self.release = trio.Event()     # a held order's connection is closed (unanswered) when this is set
        self.submits: list[str] = []    # order ids of the POST /v1/orders forwarded to the server
        self.dropped: list[str] = []    # ... and of those dropped
        self.dropped_event = trio.Event()
        self.url = ""

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            await self._relay(stream)
        except (trio.BrokenResourceError, OSError):
            pass                         # either side went away (a killed daemon, a closed server): its loss

    async def _relay(self, stream: trio.SocketStream) -> None:
        async with stream:
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buf += chunk
            head, body = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            length = next((int(v) for k, _, v in (ln.partition(":") for ln in lines[1:])
                           if k.strip().lower() == "content-length"), 0)
            while len(body) < length:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                body += chunk
            method, path = lines[0].split(" ")[:2]
            submit = method == "POST" and path == "/v1/orders"
            if self.mode == "down":
                return
            if submit and self.mode in ("drop_next_order", "hold_next_order"):
                hold = self.mode == "hold_next_order"
                self.dropped.append(json.loads(body)["order_id"])
                self.mode = "down"
                self.dropped_event.set()
                if hold:
                    await self.release.wait()
                return                   # closed without an answer: the server never saw it
            if submit:
                self.submits.append(json.loads(body)["order_id"])
            kept = [ln for ln in lines[1:] if ln.split(":", 1)[0].strip().lower() != "connection"]
            request = "\r\n".join([lines[0], *kept, "Connection: close", "", ""]).encode("latin-1") + body
            async with await trio.open_tcp_stream(*self.upstream) as up:
                await up.send_all(request)
                while chunk := await up.receive_some(65536):
                    await stream.send_all(chunk)


async def _wait_resting(d: DaemonProc, asks: list) -> None:
    """Until the daemon (reconnected by itself) has submitted the order and the book shows it."""
    while True:
        try:
            if (await rpc(d, "dex.order_book", {"market": "ZEC/USDC"}))["asks"] == asks:
                return
        except RpcError:
            pass                         # the engine is still away: the book cannot be read
        await trio.sleep(0.05)


async def _healthz(d: DaemonProc) -> httpx.Response:
    base = (await rpc(d, "daemon.info"))["http"][0]
    return await trio.to_thread.run_sync(lambda: httpx.get(base + "/healthz", timeout=10))


async def _recorded_not_submitted_then_trades(d: DaemonProc, proxy: EngineProxy, placed: dict) -> None:
    """The order is recorded and locked, the server never got it; once the proxy forwards again the daemon
    submits it by itself (no restart), exactly once, and it trades and settles."""
    assert (placed["account"], placed["status"], placed["filled"]) == ("maker", "open", "0.00")
    assert (await balances(d, "maker"))["ZEC"] == (0, 100_000_000)      # its hold
    assert proxy.submits == []                                            # the server never saw it
    r = await _healthz(d)
    assert r.status_code == 503 and r.json()["failing"] == ["engine:http"], r.text
    # The client repeats the order (same client_order_id) while the engine is away: it hears of the order that
    # exists, never "refused, nothing was recorded".
    again = await order(d, "maker", "sell", "1", "50.00", client_order_id=placed["client_order_id"])
    assert (again["id"], again["status"], again["filled"]) == (placed["id"], "open", "0.00")
    assert len(await rpc(d, "dex.orders", {"account": "maker"})) == 1
    proxy.mode = "forward"
    await _wait_resting(d, [["50.00", "1.00"]])
    assert proxy.submits == [placed["id"]]
    taker = await order(d, "taker", "buy", "1", "50.00")
    assert (taker["status"], [t["maker_order_id"] for t in taker["trades"]]) == ("closed", [placed["id"]])
    [maker] = await rpc(d, "dex.orders", {"account": "maker"})
    assert (maker["id"], maker["status"], maker["filled"]) == (placed["id"], "closed", "1.00")
    assert (await balances(d, "maker")) == {"USDC": (49_950_000, 0), "ZEC": (0, 0)}
    assert (await balances(d, "taker")) == {"USDC": (100_000_000 - 50_000_000 - 100_000, 0), "ZEC": (100_000_000, 0)}
    assert (await rpc(d, "ledger.verify"))["ok"]
    assert (await _healthz(d)).status_code == 200
    # A restart submits nothing again: the order is closed.
    assert await trio.to_thread.run_sync(d.stop) == 0
    await trio.to_thread.run_sync(d.start)
    assert (await rpc(d, "dex.order_book", {"market": "ZEC/USDC"}))["asks"] == []
    assert proxy.submits == [placed["id"], taker["id"]]
    assert len(await rpc(d, "dex.trades", {})) == 1
    assert (await rpc(d, "ledger.verify"))["ok"]


async def test_an_order_recorded_when_the_daemon_dies_before_submitting_it_is_submitted_once_later(sockdir,
                                                                                                   tmp_path):
    """The daemon dies between recording an order (and its hold) and submitting it (the after_record fault):
    restarted while the server is away, the order is open and locked and on no book; once the server is
    reachable, the daemon submits it by itself, once, and it trades."""
    with trio.fail_after(90):
        server = await trio.to_thread.run_sync(ServerProc(tmp_path, server_document(tmp_path / "engine")).start)
        proxy = EngineProxy(server.url)
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.serve)
            d = DaemonProc(sockdir, _http_document(sockdir, proxy.url), env={"TACHYON_ENGINE_TOKEN": TOKEN})
            try:
                await _start(d)
                await fund(d, "maker", ZEC="1")
                await fund(d, "taker", USDC="100")
                assert await trio.to_thread.run_sync(d.stop) == 0
                d.env["TACHYON_TEST_FAULT"] = "after_record"
                await trio.to_thread.run_sync(d.start)
                with pytest.raises(DaemonNotRunning):
                    await order(d, "maker", "sell", "1", "50.00", client_order_id="rec-1")
                assert await trio.to_thread.run_sync(d.wait) == 1
                del d.env["TACHYON_TEST_FAULT"]
                proxy.mode = "down"
                await trio.to_thread.run_sync(d.start)
                [placed] = await rpc(d, "dex.orders", {"account": "maker"})
                assert placed["client_order_id"] == "rec-1"
                await _recorded_not_submitted_then_trades(d, proxy, placed)
            finally:
                d.kill()
                server.kill()
                nursery.cancel_scope.cancel()


async def test_an_order_whose_submit_got_no_answer_stays_open_and_is_submitted_once_when_the_server_is_back(
        sockdir, tmp_path):
    """The submit never reached the server (the proxy drops it, no answer): the daemon answers that the order
    stays open with its hold (not a refusal: it may have reached the engine); when the server is reachable
    again, the daemon submits it by itself, once (the server never saw it), and it trades."""
    with trio.fail_after(90):
        server = await trio.to_thread.run_sync(ServerProc(tmp_path, server_document(tmp_path / "engine")).start)
        proxy = EngineProxy(server.url)
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.serve)
            d = DaemonProc(sockdir, _http_document(sockdir, proxy.url), env={"TACHYON_ENGINE_TOKEN": TOKEN})
            try:
                await _start(d)
                await fund(d, "maker", ZEC="1")
                await fund(d, "taker", USDC="100")
                proxy.mode = "drop_next_order"
                err = await rpc_error(d, "dex.place_order", {"account": "maker", "market": "ZEC/USDC", "side": "sell",
                                                             "type": "limit", "price": "50.00", "qty": "1",
                                                             "client_order_id": "rec-2"})
                [placed] = await rpc(d, "dex.orders", {"account": "maker"})
                assert proxy.dropped == [placed["id"]]
                assert err.code == -32023
                assert ("did not answer" in err.message
                        and f"order {placed['id']} stays open with its hold" in err.message), err.message
                assert placed["client_order_id"] == "rec-2"
                await _recorded_not_submitted_then_trades(d, proxy, placed)
            finally:
                d.kill()
                server.kill()
                nursery.cancel_scope.cancel()


async def test_an_order_recorded_as_the_engine_goes_away_is_answered_as_canceled_not_as_never_recorded(
        sockdir, tmp_path):
    """Two markets on one remote engine: market A's submit hangs (the proxy holds it); market B's order is checked
    and recorded meanwhile and waits for the engine; A's submit then gets no answer and the engine is marked
    unreachable. B's order was never sent: it is canceled at once with its hold released, and its answer says
    so. (It said "... refused until it is back (nothing was recorded or locked)", yet the order exists.)"""
    markets = [{**MARKET_DEFAULTS, "symbol": s, "engine": "http"} for s in ("ZEC/USDC", "BASE/USDC")]
    markets[1]["lot"] = "0.001"
    with trio.fail_after(90):
        server = await trio.to_thread.run_sync(ServerProc(tmp_path, server_document(tmp_path / "engine")).start)
        proxy = EngineProxy(server.url)
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.serve)
            (sockdir / "pw").write_text(PASSWORD)
            doc = base_document(sockdir, tokens=[USDC, ZEC, {"symbol": "BASE", "decimals": 8}], markets=markets,
                                wallet={"password_file": str(sockdir / "pw")},
                                engines={"http": {"url": proxy.url, "token_env": "TACHYON_ENGINE_TOKEN",
                                                  "timeout_s": 5}})
            d = DaemonProc(sockdir, doc, env={"TACHYON_ENGINE_TOKEN": TOKEN})
            answers: dict[str, object] = {}

            async def place(key: str, market: str) -> None:
                try:
                    answers[key] = await order(d, "maker", "sell", "1", "50.00", market=market, client_order_id=key)
                except RpcError as exc:
                    answers[key] = exc

            try:
                await _start(d)
                await fund(d, "maker", ZEC="1", BASE="1")
                proxy.mode = "hold_next_order"
                nursery.start_soon(place, "a", "ZEC/USDC")
                await proxy.dropped_event.wait()
                nursery.start_soon(place, "b", "BASE/USDC")
                while len(await rpc(d, "dex.orders", {"account": "maker"})) < 2:   # b is recorded, waiting
                    await trio.sleep(0.02)
                proxy.release.set()
                while len(answers) < 2:
                    await trio.sleep(0.02)
                orders = {o["client_order_id"]: o for o in await rpc(d, "dex.orders", {"account": "maker"})}
                a, b = answers["a"], answers["b"]
                assert isinstance(a, RpcError) and f"order {orders['a']['id']} stays open with its hold" in a.message
                assert isinstance(b, RpcError) and b.code == -32023, b
                assert b.message.startswith(f"order {orders['b']['id']} was recorded, then canceled before it was "
                                            "sent (nothing filled, its hold released): engine http is unreachable")
                assert "nothing was recorded" not in b.message, b.message
                assert (orders["b"]["status"], orders["b"]["filled"]) == ("canceled", "0.00")
                assert (orders["a"]["status"], orders["a"]["filled"]) == ("open", "0.00")
                assert (await balances(d, "maker")) == {
                    "BASE": (100_000_000, 0),
                    "USDC": (0, 0),
                    "ZEC": (0, 100_000_000),
                }
                assert proxy.dropped == [orders["a"]["id"]] and proxy.submits == []
                proxy.mode = "forward"      # a is submitted once the engine is back; b never is
                await _wait_resting(d, [["50.00", "1.00"]])
                assert proxy.submits == [orders["a"]["id"]]
                assert (await rpc(d, "ledger.verify"))["ok"]
            finally:
                d.kill()
                server.kill()
                nursery.cancel_scope.cancel()


@pytest.mark.parametrize("store", ["lost", "older"])
async def test_a_lost_sqlite_engine_store_is_reseeded_and_an_older_one_refused_until_moved_aside(sockdir, store):
    """A lost store is re-seeded from the ledger's open orders. An older one (a restored copy) still rests orders
    since filled or cancelled: the engine is refused, /healthz names it, nothing trades on the stale book; once
    the operator moves the store aside, the restart re-seeds it."""
    market = {**MARKET_DEFAULTS, "symbol": "ZEC/USDC", "engine": "sqlite"}
    with trio.fail_after(90):
        # The engine's own store, engine-sqlite.db (in_wallet = false; the default's log is a wallet table).
        doc = _document(sockdir, [market], engines={"sqlite": {"in_wallet": False}})
        d = await _start(DaemonProc(sockdir, doc))
        data = sockdir / "data"
        try:
            await fund(d, "maker", ZEC="10", USDC="1000")
            await fund(d, "taker", USDC="1000")
            await order(d, "maker", "sell", "1", "50.00")
            await order(d, "maker", "buy", "1", "40.00")
            if store == "older":   # a copy of the engine's store from before the later trades
                assert await trio.to_thread.run_sync(d.stop) == 0
                old = sockdir / "old-engine"
                old.mkdir()
                for f in data.glob("engine-sqlite.db*"):
                    shutil.copy2(f, old / f.name)
                await trio.to_thread.run_sync(d.start)
            await order(d, "taker", "buy", "0.4", "50.00")            # a partial fill of the 50.00 ask
            await order(d, "maker", "sell", "2", "52.00")
            gone = await order(d, "maker", "sell", "1", "40.50")
            await rpc(d, "dex.cancel_order", {"order_id": gone["id"]})
            before = await state_snapshot(d)
            seqs_before = {t["seq"] for t in await rpc(d, "dex.trades", {})}
            assert await trio.to_thread.run_sync(d.stop) == 0
            for f in data.glob("engine-sqlite.db*"):
                f.unlink()
            if store == "older":
                for f in old.iterdir():
                    shutil.copy2(f, data / f.name)
                await trio.to_thread.run_sync(d.start)
                base = (await rpc(d, "daemon.info"))["http"][0]
                r = await trio.to_thread.run_sync(lambda: httpx.get(base + "/healthz", timeout=10))
                assert r.status_code == 503, r.text
                assert r.json()["failing"] == ["engine:sqlite"], r.text  # names only; the reason is in the log
                why = d.stderr()
                assert "store is older than the ledger" in why and "move the engine's store aside" in why, why
                err = await rpc_error(d, "dex.place_order", {"account": "taker", "market": "ZEC/USDC", "side": "buy",
                                                             "type": "limit", "price": "50.00", "qty": "1"})
                assert "engine sqlite is not serving" in err.message
                assert sorted((b["account"], b["token"], b["available_minor"], b["locked_minor"])
                              for b in await rpc(d, "ledger.balances")) == before["balances"]
                assert await trio.to_thread.run_sync(d.stop) == 0
                for f in data.glob("engine-sqlite.db*"):   # the operator moves it aside
                    f.rename(sockdir / f.name)
            await trio.to_thread.run_sync(d.start)
            after = await state_snapshot(d)
            assert after == before
            assert after["books"]["ZEC/USDC"]["asks"] == [["50.00", "0.60"], ["52.00", "2.00"]]
            assert (await rpc(d, "ledger.verify"))["ok"]
            # The re-seeded book trades on, and the new fills' seqs do not collide with applied ones.
            o = await order(d, "taker", "buy", "1", "52.00")
            assert [(t["price"], t["qty"]) for t in o["trades"]] == [("50.00", "0.60"), ("52.00", "0.40")]
            assert not {t["seq"] for t in o["trades"]} & seqs_before
            assert (await rpc(d, "ledger.verify"))["ok"]
        finally:
            d.kill()


async def test_a_lying_engines_fill_is_refused_before_settlement_and_healthz_names_the_market(sockdir):
    """A lying engine (a test plugin) reports a fill one lot larger than the seller locked: the core's checks
    (tachyond/dex/checks.py, for every engine) refuse it before settlement, nothing moves, the engine's markets are
    halted with the reason (the RPC error, the log, dex.markets), and /healthz answers 503 naming the market."""
    markets = [{**MARKET_DEFAULTS, "symbol": "ZEC/USDC", "engine": "liar"}]
    with trio.fail_after(60):
        d = DaemonProc(sockdir, _document(sockdir, markets), test_plugin=True, env={"TACHYON_TESTPLUGIN_LIAR": "1"})
        await _start(d)
        try:
            base = (await rpc(d, "daemon.info"))["http"][0]
            await fund(d, "maker", ZEC="1")
            await fund(d, "taker", USDC="100")
            await order(d, "maker", "sell", "1", "50.00")
            before = await rpc(d, "ledger.balances")
            err = await rpc_error(d, "dex.place_order", {"account": "taker", "market": "ZEC/USDC", "side": "buy",
                                                         "type": "limit", "price": "50.00", "qty": "1"})
            assert err.code == -32023
            assert err.message.startswith("settlement of engine liar is halted: invalid event refused: ")
            assert "fills 10001 lots of taker order" in err.message and "which has 10000 left" in err.message
            r = await trio.to_thread.run_sync(lambda: httpx.get(base + "/healthz", timeout=10))
            assert r.status_code == 503
            assert r.json()["failing"] == ["market:ZEC/USDC"], r.text  # names only; the reason is in the log
            assert "settlement of engine liar halted (markets: ZEC/USDC): invalid event refused" in d.stderr()
            [m] = await rpc(d, "dex.markets")
            assert m["halted"] is True and "which has 10000 left" in m["halt_reason"]
            # Nothing of the lie was booked; the taker's order stays recorded with its hold.
            after = {(b["account"], b["token"]): b for b in await rpc(d, "ledger.balances")}
            assert after[("maker", "ZEC")]["locked_minor"] == 100_000_000
            assert after[("maker", "USDC")]["available_minor"] == 0
            assert (after[("taker", "USDC")]["available_minor"], after[("taker", "USDC")]["locked_minor"]) == (
                49_900_000, 50_100_000)                              # 50.00 + the 20 bps fee it may pay
            [taker] = await rpc(d, "dex.orders", {"account": "taker"})
            assert (taker["status"], taker["filled"]) == ("open", "0.00")
            assert await rpc(d, "dex.trades", {}) == []
            assert [e for e in await rpc(d, "ledger.history", {"limit": 100}) if e["kind"] == "fill"] == []
            assert len(before) <= len(after)
            err = await rpc_error(d, "dex.place_order", {"account": "maker", "market": "ZEC/USDC", "side": "sell",
                                                         "type": "limit", "price": "60.00", "qty": "0.1"})
            assert "market ZEC/USDC is halted" in err.message
            assert (await rpc(d, "ledger.verify"))["ok"]
        finally:
            d.kill()


async def test_a_ledger_write_failure_during_settlement_fails_the_engine_and_healthz_names_it(sockdir, tmp_path):
    """A real full disk under one wallet of a shared engine: another wallet's order fills this wallet's resting ask,
    the engine server has matched it, and this wallet's settlement write fails. The daemon stops using the engine
    (nothing of the fill booked, the ask still open with its hold), answers /healthz 503 naming the engine, says why
    in its log and in every refusal, and keeps serving the rest; restarted with room again, it settles the fill
    once from the server's feed and is healthy."""
    mnt = sockdir / "fs"
    mount_small_tmpfs(mnt)
    server = a = b = None
    try:
        with trio.fail_after(150):
            server = await trio.to_thread.run_sync(ServerProc(tmp_path, server_document(tmp_path / "engine")).start)
            env = {"TACHYON_ENGINE_TOKEN": TOKEN}
            (sockdir / "a").mkdir()
            (sockdir / "b").mkdir()
            doc_a = _http_document(sockdir / "a", server.url)
            doc_a["daemon"]["data_dir"] = str(mnt / "data")        # this wallet's files live on the small disk
            a = await _start(DaemonProc(sockdir / "a", doc_a, env=env))
            b = await _start(DaemonProc(sockdir / "b", _http_document(sockdir / "b", server.url), env=env))
            await fund(a, "maker", ZEC="1")
            await fund(b, "taker", USDC="100")
            ask = await order(a, "maker", "sell", "1", "50.00")
            assert ask["status"] == "open"
            assert (await _healthz(a)).status_code == 200

            await trio.to_thread.run_sync(fill_disk, mnt / "ballast")
            for i in range(5000):   # SQLite may still have room in pages it holds: write until the first refusal
                try:
                    await rpc(a, "ledger.deposit", {"token": "USDC", "amount": "1", "reference": f"slack-{i}"})
                except RpcError as exc:
                    assert exc.code == -32016 and "database or disk is full" in exc.message, exc.message
                    break
            else:
                pytest.fail("5,000 deposits fitted on a full 4 MiB filesystem")
            before = (await rpc(a, "ledger.balances"), await rpc(a, "dex.orders", {}))
            head = (await rpc(a, "ledger.history", {"limit": 1}))[0]
            assert await balances(a, "maker") == {"USDC": (0, 0), "ZEC": (0, 100_000_000)}

            # The other wallet's bid meets the ask on the shared server; that wallet settles its side at once.
            bid = await order(b, "taker", "buy", "1", "50.00")
            assert (bid["status"], bid["filled"], bid["fee"]) == ("closed", "1.00", "0.10")
            # This wallet hears the fill on its feed and cannot write it: the engine is marked failed.
            while (health := await _healthz(a)).status_code == 200:
                await trio.sleep(0.05)
            assert health.status_code == 503
            assert health.json() == {"status": "unavailable", "failing": ["engine:http"]}, health.text  # names only
            log_text = a.stderr()
            assert "settlement of http events failed" in log_text
            assert ("/healthz: failing: engine:http: settlement failed (WriteFailed: write failed, nothing was "
                    "written: database or disk is full); restart the daemon") in log_text
            err = await rpc_error(a, "dex.place_order", {"account": "maker", "market": "ZEC/USDC", "side": "sell",
                                                         "type": "limit", "price": "60.00", "qty": "0.1"})
            assert err.code == -32023
            assert err.message == ("engine http is not serving: settlement failed (WriteFailed: write failed, nothing "
                                   "was written: database or disk is full); restart the daemon")
            # Nothing of the fill was booked: the ask is open with its hold, the journal and balances are as before.
            assert (await rpc(a, "ledger.balances"), await rpc(a, "dex.orders", {})) == before
            assert [(o["id"], o["status"], o["filled"]) for o in before[1]] == [(ask["id"], "open", "0.00")]
            assert (await rpc(a, "ledger.history", {"limit": 1}))[0] == head
            assert await rpc(a, "dex.trades", {}) == []
            [m] = await rpc(a, "dex.markets")
            # dex.markets says so too (it said halted: false before, and only /healthz and the log told).
            assert (m["symbol"], m["halted"], m["engine_online"]) == ("ZEC/USDC", True, True)
            assert m["halt_reason"] == ("settlement failed (WriteFailed: write failed, nothing was written: database "
                                        "or disk is full); restart the daemon"), m["halt_reason"]
            assert (await rpc(a, "ledger.verify"))["ok"]
            assert a.proc is not None and a.proc.poll() is None          # the daemon keeps serving the rest

            # Room again is not enough (the engine moved on without this ledger): the operator restarts.
            (mnt / "ballast").unlink()
            assert (await _healthz(a)).status_code == 503
            assert await trio.to_thread.run_sync(a.stop) == 0
            await trio.to_thread.run_sync(a.start)
            while (await rpc(a, "dex.orders", {"account": "maker"}))[0]["status"] == "open":
                await trio.sleep(0.05)   # the restart replays the server's feed from the last applied seq
            [filled] = await rpc(a, "dex.orders", {"account": "maker"})
            assert (filled["id"], filled["status"], filled["filled"], filled["cost"], filled["fee"]) == (
                ask["id"], "closed", "1.00", "50.00", "0.05")
            assert await balances(a, "maker") == {"USDC": (49_950_000, 0), "ZEC": (0, 0)}
            fills = [e for e in await rpc(a, "ledger.history", {"limit": 100}) if e["kind"] == "fill"]
            assert len(fills) == 1
            assert [(t["price"], t["qty"], t["maker_order_id"]) for t in await rpc(a, "dex.trades", {})] == [
                ("50.00", "1.00", ask["id"])]
            assert (await _healthz(a)).status_code == 200
            assert (await rpc(a, "ledger.verify"))["ok"]
            assert await balances(b, "taker") == {"USDC": (100_000_000 - 50_000_000 - 100_000, 0),
                                                  "ZEC": (100_000_000, 0)}
    finally:
        for proc in (a, b, server):
            if proc is not None:
                proc.kill()
        subprocess.run(["umount", "-l", str(mnt)], check=True)
