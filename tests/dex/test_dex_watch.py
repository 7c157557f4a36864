"""dex.watch / tachyon-ctl dex watch: settled trades streamed on a socket connection as JSON-RPC notifications."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import trio
from test_dex_helpers import fund, order, rpc, rpc_error, start_dex_daemon

BASES = ["WTCH", "OTHR", "FLOOD"]


@pytest.fixture(scope="module")
def dexd():
    dir_ = Path(tempfile.mkdtemp(prefix="tyd-", dir="/tmp"))
    d = start_dex_daemon(dir_, "memory", BASES)
    yield d
    assert d.stop() == 0
    shutil.rmtree(dir_, ignore_errors=True)


class Conn:
    """A raw JSON-RPC connection to the socket, reading one line per message."""

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.buf = b""

    async def send(self, obj: object) -> None:
        await self.stream.send_all(json.dumps(obj).encode() + b"\n")

    async def read(self) -> dict:
        while b"\n" not in self.buf:
            chunk = await self.stream.receive_some(65536)
            assert chunk, "the daemon closed the connection"
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)


async def connect(d) -> Conn:
    return Conn(await trio.open_unix_socket(d.socket))


async def test_watch_streams_trades_of_its_market_after_its_answer(dexd):
    with trio.fail_after(30):
        await fund(dexd, "w-maker", WTCH="10", OTHR="10")
        await fund(dexd, "w-taker", USDC="1000")
        conn = await connect(dexd)
        await conn.send({"jsonrpc": "2.0", "id": 1, "method": "dex.watch", "params": {"market": "WTCH/USDC"}})
        answer = await conn.read()
        assert answer["id"] == 1 and answer["result"]["market"] == "WTCH/USDC"
        sub = answer["result"]["subscription"]
        # A trade on another market is not sent; the next message is the WTCH trade.
        await order(dexd, "w-maker", "sell", "1", "20.00", market="OTHR/USDC")
        await order(dexd, "w-taker", "buy", "1", "20.00", market="OTHR/USDC")
        await order(dexd, "w-maker", "sell", "2", "50.00", market="WTCH/USDC")
        taker = await order(dexd, "w-taker", "buy", "1", "50.00", market="WTCH/USDC")
        note = await conn.read()
        assert "id" not in note and note["method"] == "dex.trade" and note["params"]["subscription"] == sub
        [trade] = await rpc(dexd, "dex.trades", {"market": "WTCH/USDC", "limit": 1})
        assert note["params"]["trade"] == trade
        assert trade["taker_order_id"] == taker["id"] and (trade["price"], trade["qty"]) == ("50.00", "1.00")
        # Only the subscribing connection may end it.
        err = await rpc_error(dexd, "dex.unwatch", {"subscription": sub})
        assert err.code == -32005 and "on this connection" in err.message
        # dex.unwatch stops it: the next trade sends nothing, so the next line is the next answer.
        await conn.send({"jsonrpc": "2.0", "id": 2, "method": "dex.unwatch", "params": {"subscription": sub}})
        assert (await conn.read()) == {"jsonrpc": "2.0", "id": 2, "result": {"subscription": sub, "stopped": True}}
        await order(dexd, "w-taker", "buy", "1", "50.00", market="WTCH/USDC")
        await conn.send({"jsonrpc": "2.0", "id": 3, "method": "daemon.info"})
        assert (await conn.read())["id"] == 3
        err = await rpc_error(dexd, "dex.unwatch", {"subscription": sub})
        assert err.code == -32005 and sub in err.message
        # Closing the connection ends its streams: the daemon forgets the subscription (tachyon_dex_watchers).
        await conn.send({"jsonrpc": "2.0", "id": 4, "method": "dex.watch"})
        assert (await conn.read())["result"]["market"] is None
        assert await watchers(dexd) == 1
        await conn.stream.aclose()
        while await watchers(dexd) != 0:
            await trio.sleep(0.05)


async def watchers(d) -> float:
    import httpx

    base = (await rpc(d, "daemon.info"))["http"][0]
    async with httpx.AsyncClient() as client:
        text = (await client.get(base + "/metrics", timeout=10)).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("tachyon_dex_watchers "))


async def test_a_reader_that_falls_behind_is_dropped_with_a_reason_and_settlement_goes_on(dexd):
    """The client subscribes and does not read while trades settle: settlement never waits for it; once it is
    1,000 trades behind (plus what the socket buffers hold) the daemon drops it (tachyon_dex_watchers falls to
    0), and the client then reads the trades that fit and dex.watch_ended with the reason."""
    with trio.fail_after(240):
        await fund(dexd, "f-maker", FLOOD="200")
        await fund(dexd, "f-taker", USDC="200000")
        others = await watchers(dexd)
        conn = await connect(dexd)
        await conn.send({"jsonrpc": "2.0", "id": 1, "method": "dex.watch", "params": {"market": "FLOOD/USDC"}})
        sub = (await conn.read())["result"]["subscription"]
        await order(dexd, "f-maker", "sell", "200", "100.00", market="FLOOD/USDC")
        taker = await connect(dexd)
        sent = 0
        # Batches of 1,000 trades until the daemon has dropped the reader, however large this machine's
        # socket buffers are (at most 20,000 trades: the maker's whole ask).
        while await watchers(dexd) > others:
            assert sent < 20_000, "the non-reading watcher was never dropped"
            await taker.send([{"jsonrpc": "2.0", "id": i, "method": "dex.place_order",
                               "params": {"account": "f-taker", "market": "FLOOD/USDC", "side": "buy",
                                          "type": "limit", "price": "100.00", "qty": "0.01"}} for i in range(1000)])
            answers = await taker.read()
            errors = [a["error"] for a in answers if "error" in a][:3]
            assert len(answers) == 1000 and not errors, errors
            assert all(a["result"]["status"] == "closed" for a in answers)
            sent += 1000
        trades, ended = 0, None
        while ended is None:
            note = await conn.read()
            assert note["params"]["subscription"] == sub
            if note["method"] == "dex.trade":
                trades += 1
            else:
                assert note["method"] == "dex.watch_ended"
                ended = note["params"]["reason"]
        assert 1000 <= trades < sent and "fell 1000 trades behind" in ended
        assert (await rpc(dexd, "daemon.info"))["version"]
        await conn.stream.aclose()
        await taker.stream.aclose()


async def test_tachyon_ctl_dex_watch_prints_trades_as_json_lines(dexd):
    with trio.fail_after(60):
        await fund(dexd, "c-maker", WTCH="10")
        await fund(dexd, "c-taker", USDC="1000")
        await order(dexd, "c-maker", "sell", "5", "40.00", market="WTCH/USDC")
        proc = subprocess.Popen([sys.executable, "-m", "tachyon_ctl", "--socket", dexd.socket, "dex", "watch",
                                 "--market", "WTCH/USDC", "--count", "1"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            # The subscription starts when the process is up; trade until it has seen one and exits.
            while proc.poll() is None:
                await order(dexd, "c-taker", "buy", "0.1", "40.00", market="WTCH/USDC")
                await trio.sleep(0.2)
            out, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err
        [line] = out.splitlines()
        trade = json.loads(line)
        assert trade["market"] == "WTCH/USDC" and trade["price"] == "40.00" and trade["taker_side"] == "buy"


async def test_a_connection_has_at_most_16_watches(dexd):
    with trio.fail_after(30):
        conn = await connect(dexd)
        for i in range(16):
            await conn.send({"jsonrpc": "2.0", "id": i, "method": "dex.watch"})
            assert "result" in await conn.read()
        await conn.send({"jsonrpc": "2.0", "id": 99, "method": "dex.watch"})
        answer = await conn.read()
        assert answer["error"]["code"] == -32602 and "at most 16" in answer["error"]["message"]
        await conn.stream.aclose()


async def test_a_graceful_stop_flushes_watches_and_says_why(sockdir):
    """SIGTERM: trades already settled reach the watcher, then dex.watch_ended 'the daemon is stopping', then EOF."""
    d = start_dex_daemon(sockdir, "memory", ["STOP"])
    try:
        with trio.fail_after(60):
            await fund(d, "s-maker", STOP="5")
            await fund(d, "s-taker", USDC="1000")
            conn = await connect(d)
            await conn.send({"jsonrpc": "2.0", "id": 1, "method": "dex.watch", "params": {"market": "STOP/USDC"}})
            sub = (await conn.read())["result"]["subscription"]
            await order(d, "s-maker", "sell", "1", "30.00", market="STOP/USDC")
            await order(d, "s-taker", "buy", "1", "30.00", market="STOP/USDC")
            code = None

            async def stop() -> None:
                nonlocal code
                code = await trio.to_thread.run_sync(d.stop)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(stop)
                assert (await conn.read())["method"] == "dex.trade"
                ended = await conn.read()
                assert ended == {"jsonrpc": "2.0", "method": "dex.watch_ended",
                                 "params": {"subscription": sub, "reason": "the daemon is stopping"}}
                assert await conn.stream.receive_some(65536) == b""
            assert code == 0
    finally:
        if d.proc.poll() is None:
            d.kill()
