"""The remote engine: HttpEngine against a real tachyon-engine-server subprocess on 127.0.0.1 port 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w
import trio
from conftest import self_signed_cert
from tachyon_http_engine import HttpEngine, register_engines

from tachyond.engine import EngineContext, EngineOrder, MarketSpec
from tachyond.errors import EngineError, UnknownMarket
from tachyond.matching import Matcher

TOKEN = "test-token-4f1c9e"
ZEC = MarketSpec("ZEC/USDC", "ZEC", "USDC", "0.01", "0.0001")
BASE = MarketSpec("BASE/USDC", "BASE", "USDC", "0.01", "0.001")


def server_document(data_dir: Path, *, engine: str = "sqlite", **server: Any) -> dict[str, Any]:
    return {
        "server": {"listen": "127.0.0.1:0", "token_env": "TEST_ENGINE_TOKEN", "engine": engine,
                   "data_dir": str(data_dir), **server},
        "tokens": [{"symbol": "USDC", "decimals": 6}, {"symbol": "ZEC", "decimals": 8},
                   {"symbol": "BASE", "decimals": 8}],
        "markets": [{"symbol": "ZEC/USDC", "tick": "0.01", "lot": "0.0001", "min_notional": "1"},
                    {"symbol": "BASE/USDC", "tick": "0.01", "lot": "0.001", "min_notional": "1"}],
    }


class ServerProc:
    """A real ``python -m tachyon_http_engine.server`` process; ``url`` is read from its stderr."""

    def __init__(self, dir_: Path, doc: dict[str, Any], token: str = TOKEN):
        self.config = dir_ / "server.toml"
        self.config.write_text(tomli_w.dumps(doc))
        self.stderr_path = dir_ / f"server-{time.monotonic_ns()}.stderr"
        self.env = {**os.environ, "TEST_ENGINE_TOKEN": token}
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def run(self) -> subprocess.CompletedProcess[str]:
        """Run to completion (for configurations that must be refused)."""
        return subprocess.run([sys.executable, "-m", "tachyon_http_engine.server", "--config", str(self.config)],
                              env=self.env, capture_output=True, text=True, timeout=30)

    def start(self, timeout_s: float = 20) -> ServerProc:
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "tachyon_http_engine.server", "--config",
                                      str(self.config)], env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._err)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = re.search(r"listening on (https?://\S+)", self.stderr())
            if m:
                self.url = m.group(1)
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.stderr()}")
            time.sleep(0.05)
        raise AssertionError(f"server printed no URL within {timeout_s}s:\n{self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if hasattr(self, "_err"):
            self._err.close()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Any]:
    procs: list[ServerProc] = []

    def make(doc: dict[str, Any] | None = None, *, token: str = TOKEN) -> ServerProc:
        p = ServerProc(tmp_path, doc or server_document(tmp_path / "engine-data"), token)
        procs.append(p)
        return p

    yield make
    for p in procs:
        p.kill()


@pytest.fixture
def server(server_factory: Any) -> ServerProc:
    return server_factory().start()


def make_engine(url: str, monkeypatch: pytest.MonkeyPatch, token: str = TOKEN, **config: Any) -> HttpEngine:
    monkeypatch.setenv("CLIENT_ENGINE_TOKEN", token)
    return HttpEngine(EngineContext("http", Path("/nonexistent"), None,
                                    config={"url": url, "token_env": "CLIENT_ENGINE_TOKEN", **config}))


def order(order_id: str, side: str, price_ticks: int, qty_lots: int, *, owner: str = "o1",
          market: str = "ZEC/USDC", **kw: Any) -> EngineOrder:
    return EngineOrder(order_id, market, owner, side, price_ticks, qty_lots, **kw)  # type: ignore[arg-type]


def test_register_engines_registers_http() -> None:
    seen: dict[str, Any] = {}
    register_engines(lambda name, factory: seen.__setitem__(name, factory))
    assert seen == {"http": HttpEngine}


@pytest.mark.parametrize("table, message", [
    ({"url": "http://127.0.0.1:1", "bogus": 1}, "engines.http.bogus: unknown key"),
    ({}, "engines.http.url"),
    ({"url": "ftp://x"}, "engines.http.url"),
    ({"url": "http://127.0.0.1:1", "timeout_s": 0}, "engines.http.timeout_s"),
    ({"url": "http://127.0.0.1:1", "token_env": ""}, "engines.http.token_env"),
])
def test_validate_config_refuses_bad_tables(table: dict[str, Any], message: str) -> None:
    with pytest.raises(EngineError, match=re.escape(message)):
        HttpEngine.validate_config(table)
    HttpEngine.validate_config({"url": "https://engine.example:9010", "timeout_s": 2.5, "token_env": "X"})
    for loopback in ("http://127.0.0.1:9010", "http://localhost:9010", "http://[::1]:9010", "http://127.0.0.2:1"):
        HttpEngine.validate_config({"url": loopback})


async def test_cafile_pins_the_engine_servers_ca(tmp_path: Path, monkeypatch: Any) -> None:
    """A fake engine server over TLS with a self-signed certificate: trusted with cafile naming it, refused
    without (the system's CAs do not know it), and the token never reaches a server that was refused."""
    import ssl

    cert, key = self_signed_cert(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    seen: list[bytes] = []

    async def handle(stream: trio.SSLStream) -> None:
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
        except trio.BrokenResourceError:
            return  # the client refused our certificate during the handshake
        seen.append(data)
        body = b'{"markets": []}'
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                              + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        await stream.aclose()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            serve = partial(trio.serve_ssl_over_tcp, handle, 0, server_ctx, host="127.0.0.1")
            [listener] = await nursery.start(serve)
            url = f"https://127.0.0.1:{listener.transport_listener.socket.getsockname()[1]}"
            refused = make_engine(url, monkeypatch)
            with pytest.raises(EngineError, match="CERTIFICATE_VERIFY_FAILED"):
                await refused.start([])
            await refused.aclose()
            assert seen == []  # refused at the handshake: no request, no token
            pinned = make_engine(url, monkeypatch, cafile=str(cert))
            await pinned.start([])
            await pinned.aclose()
            assert seen and all(f"Bearer {TOKEN}".encode() in request for request in seen)
            nursery.cancel_scope.cancel()


async def test_matching_over_http_equals_the_matching_core(server: ServerProc, monkeypatch: Any) -> None:
    orders = [order("a1", "sell", 100, 2, owner="m"), order("a2", "sell", 101, 5, owner="m"),
              order("b0", "buy", 90, 3, owner="n", market="BASE/USDC"),
              order("b1", "buy", 101, 4, owner="t"), order("b2", "buy", 105, 10, owner="t", tif="ioc"),
              order("s1", "sell", 90, 1, owner="t", market="BASE/USDC", tif="fok"),
              order("p1", "buy", 200, 1, owner="t", post_only=True)]
    reference = Matcher()
    reference.add_market("ZEC/USDC")
    reference.add_market("BASE/USDC")
    engine = make_engine(server.url, monkeypatch)
    with trio.fail_after(20):
        await engine.start([ZEC, BASE])
        got = [ev for o in orders for ev in await engine.submit(o)]
        await engine.aclose()
    want = [ev for o in orders for ev in reference.submit(o)]
    assert got == want
    assert [e.seq for e in got] == list(range(1, len(got) + 1))
    fills = [(e.order_id, e.maker_order_id, e.qty_lots, e.price_ticks) for e in got if e.kind == "fill"]
    assert fills == [("b1", "a1", 2, 100), ("b1", "a2", 2, 101), ("b2", "a2", 3, 101), ("s1", "b0", 1, 90)]


async def test_cancel_depth_open_orders_and_refusals(server: ServerProc, monkeypatch: Any) -> None:
    engine = make_engine(server.url, monkeypatch)
    with trio.fail_after(20):
        await engine.start([ZEC])
        await engine.submit(order("b1", "buy", 99, 3))
        await engine.submit(order("b2", "buy", 99, 2))
        await engine.submit(order("b3", "buy", 97, 1))
        await engine.submit(order("a1", "sell", 103, 4))
        depth = await engine.depth("ZEC/USDC", 1)
        assert (depth.seq, depth.bids, depth.asks) == (4, [(99, 5)], [(103, 4)])
        assert (await engine.depth("ZEC/USDC", 10)).bids == [(99, 5), (97, 1)]
        assert [(o.order_id, o.qty_lots, o.owner) for o in await engine.open_orders("ZEC/USDC")] == [
            ("b1", 3, "o1"), ("b2", 2, "o1"), ("b3", 1, "o1"), ("a1", 4, "o1")]
        [done] = await engine.cancel("ZEC/USDC", "b2")
        assert (done.seq, done.kind, done.order_id, done.qty_lots, done.reason) == (5, "done", "b2", 2, "canceled")
        assert await engine.cancel("ZEC/USDC", "b2") == []
        assert await engine.cancel("ZEC/USDC", "never-seen") == []
        assert (await engine.depth("ZEC/USDC", 10)).bids == [(99, 3), (97, 1)]
        with pytest.raises(EngineError, match="b1"):
            await engine.submit(order("b1", "buy", 99, 1))           # a reused id: 409
        with pytest.raises(EngineError, match="refused order z1") as refused:
            await engine.submit(order("z1", "buy", 0, 1))
        assert "positive" not in refused.value.message   # the server's own words go to the log, not to callers
        with pytest.raises(UnknownMarket):
            await engine.submit(order("z2", "buy", 1, 1, market="BASE/USDC"))  # not started for this client
        assert await engine.last_seq() == 5
        await engine.aclose()


async def test_events_after_serves_each_event_once_in_order(server: ServerProc, monkeypatch: Any) -> None:
    engine = make_engine(server.url, monkeypatch)
    with trio.fail_after(20):
        await engine.start([ZEC])
        produced = []
        for i in range(6):
            produced += await engine.submit(order(f"s{i}", "sell", 100 + i, 1, owner="m"))
        produced += await engine.submit(order("b", "buy", 110, 6, owner="t"))
        last = await engine.last_seq()
        assert last == produced[-1].seq
        applied, seen = 0, []
        while True:   # a consumer paging with a small limit sees every event exactly once
            page = await engine.events_after(applied, limit=4)
            if not page:
                break
            assert page[0].seq == applied + 1
            seen += page
            applied = page[-1].seq
        assert seen == produced
        assert await engine.events_after(last) == []
        assert await engine.events_after(3, limit=2) == produced[3:5]
        await engine.compact(5)
        assert await engine.events_after(5) == produced[5:]
        with pytest.raises(EngineError, match="gone"):
            await engine.events_after(2)
        assert await engine.last_seq() == last      # limit=0 reads last_seq even below the floor
        await engine.aclose()


async def test_sqlite_server_keeps_books_and_feed_across_restart(server_factory: Any, monkeypatch: Any) -> None:
    first = server_factory().start()
    engine = make_engine(first.url, monkeypatch)
    with trio.fail_after(30):
        await engine.start([ZEC])
        before = await engine.submit(order("a1", "sell", 100, 5, owner="m"))
        before += await engine.submit(order("b1", "buy", 100, 2, owner="t"))
        await engine.aclose()
        assert await trio.to_thread.run_sync(first.terminate) == 0
        second = server_factory().start()
        engine = make_engine(second.url, monkeypatch)
        await engine.start([ZEC])
        assert await engine.events_after(0) == before
        assert [(o.order_id, o.qty_lots) for o in await engine.open_orders("ZEC/USDC")] == [("a1", 3)]
        with pytest.raises(EngineError, match="a1"):
            await engine.submit(order("a1", "sell", 100, 1, owner="m"))   # ids stay used after a restart
        [fill, done_maker, done_taker] = await engine.submit(order("b2", "buy", 100, 3, owner="t"))
        assert (fill.seq, fill.qty_lots, done_maker.order_id, done_taker.seq) == (
            before[-1].seq + 1,
            3,
            "a1",
            before[-1].seq + 3,
        )
        await engine.aclose()


async def test_market_defined_differently_or_missing_is_refused(server: ServerProc, monkeypatch: Any) -> None:
    with trio.fail_after(20):
        engine = make_engine(server.url, monkeypatch)
        with pytest.raises(EngineError, match=r"market ZEC/USDC .*tick 0\.1 here, 0\.01 on the server"):
            await engine.start([MarketSpec("ZEC/USDC", "ZEC", "USDC", "0.1", "0.0001")])
        await engine.aclose()
        engine = make_engine(server.url, monkeypatch)
        with pytest.raises(EngineError, match="market ETH/USDC: the engine server .* does not serve it"):
            await engine.start([ZEC, MarketSpec("ETH/USDC", "ETH", "USDC", "0.01", "0.001")])
        await engine.aclose()
        engine = make_engine(server.url, monkeypatch)   # equal decimals written differently are the same market
        await engine.start([MarketSpec("ZEC/USDC", "ZEC", "USDC", "0.010", "0.00010")])
        await engine.aclose()


async def test_wrong_token_and_unreachable_server_are_engine_errors(server: ServerProc, monkeypatch: Any) -> None:
    with trio.fail_after(20):
        engine = make_engine(server.url, monkeypatch, token="wrong-token-77")
        with pytest.raises(EngineError) as info:
            await engine.start([ZEC])
        assert "bearer token" in info.value.message and "wrong-token-77" not in info.value.message
        await engine.aclose()
        async with httpx.AsyncClient(base_url=server.url) as raw:
            for method, path in [("GET", "/v1/markets"), ("POST", "/v1/orders"), ("GET", "/v1/depth/ZEC%2FUSDC"),
                                 ("GET", "/v1/open-orders/ZEC%2FUSDC"), ("GET", "/v1/events"),
                                 ("POST", "/v1/compact"), ("POST", "/v1/orders/ZEC%2FUSDC/x/cancel")]:
                assert (await raw.request(method, path)).status_code == 401, path
            auth = {"Authorization": f"Bearer {TOKEN}"}
            bad = await raw.post("/v1/orders", json={"order_id": "x", "market": "ZEC/USDC", "owner": "o",
                                                      "side": "buy", "price_ticks": True, "qty_lots": 1}, headers=auth)
            assert bad.status_code == 400 and "price_ticks" in bad.json()["error"]
            unknown = await raw.get("/v1/depth/ETH%2FUSDC", headers=auth)
            assert unknown.status_code == 404
        with socket_closed() as port:
            engine = make_engine(f"http://127.0.0.1:{port}", monkeypatch, timeout_s=2)
            with pytest.raises(EngineError, match=f"127.0.0.1:{port}"):
                await engine.start([ZEC])
            await engine.aclose()
    assert TOKEN not in server.stderr()


class socket_closed:
    """A local port with nothing listening on it."""

    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc: Any) -> None:
        return None


async def test_memory_server_sigterm_exits_zero(server_factory: Any, monkeypatch: Any, tmp_path: Path) -> None:
    proc = server_factory(server_document(tmp_path / "unused", engine="memory")).start()
    with trio.fail_after(20):
        engine = make_engine(proc.url, monkeypatch)
        await engine.start([ZEC, BASE])
        assert [e.kind for e in await engine.submit(order("a", "sell", 5, 1))] == ["rested"]
        await engine.aclose()
        assert await trio.to_thread.run_sync(proc.terminate) == 0
    assert not (tmp_path / "unused").exists()   # the memory engine writes nothing


@pytest.mark.parametrize("edit, key", [
    (lambda d: d["server"].update(bindd="x"), "server.bindd: unknown key"),
    (lambda d: d["markets"][0].update(engine="sqlite"), "markets[0].engine: unknown key"),
    (lambda d: d["server"].update(engine="redis"), "server.engine"),
    (lambda d: d["server"].update(listen="nowhere"), "server.listen"),
    (lambda d: d["markets"][1].update(tick="0.0000001"), "markets[1].tick"),
    (lambda d: d.update(extra={}), "extra: unknown key"),
])
def test_bad_server_config_exits_2_naming_the_key(server_factory: Any, tmp_path: Path, edit: Any, key: str) -> None:
    doc = server_document(tmp_path / "d")
    edit(doc)
    result = server_factory(doc).run()
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], result.stderr


def test_missing_token_env_exits_2(server_factory: Any) -> None:
    result = server_factory(token="").run()
    assert result.returncode == 2 and "TEST_ENGINE_TOKEN" in result.stderr


async def test_every_documented_route_is_served(server: ServerProc) -> None:
    spec = (Path(__file__).resolve().parent.parent.parent / "docs" / "engine-api.yaml").read_text()
    documented = re.findall(r"^  (/v1/\S+):\n    (get|post):", spec, re.M)
    assert len(documented) == 7
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with trio.fail_after(20):
        async with httpx.AsyncClient(base_url=server.url, headers=auth) as raw:
            for path, method in documented:
                concrete = path.replace("{market}", "ZEC%2FUSDC").replace("{order_id}", "x")
                body = {"applied_seq": 0} if path == "/v1/compact" else None
                resp = await raw.request(method.upper(), concrete, json=body)
                assert resp.status_code in (200, 400), (path, resp.status_code, resp.text)
                wrong = await raw.request("PUT", concrete)
                assert wrong.status_code == 405, path
            assert (await raw.get("/v1/nothing")).status_code == 404


def test_the_server_re_reads_its_token_file_on_sighup_for_a_rotation_without_restart(tmp_path):
    """A → A,B → B with SIGHUP and no restart; a token file that cannot be read keeps the tokens in force."""
    token_file = tmp_path / "engine-token"
    token_file.write_text("token-aaaa\n")
    doc = server_document(tmp_path / "data")
    del doc["server"]["token_env"]
    doc["server"]["token_file"] = str(token_file)
    server = ServerProc(tmp_path, doc).start()
    pid = server.proc.pid

    def status(token: str) -> int:
        return httpx.get(server.url + "/v1/markets", headers={"Authorization": f"Bearer {token}"},
                         timeout=10).status_code

    def hup_until(count: int) -> None:
        before = server.stderr().count("SIGHUP")
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while server.stderr().count("SIGHUP") < before + count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.stderr().count("SIGHUP") >= before + count, server.stderr()

    try:
        assert (status("token-aaaa"), status("token-bbbb")) == (200, 401)
        token_file.write_text("token-aaaa,token-bbbb\n")
        hup_until(1)
        assert (status("token-aaaa"), status("token-bbbb")) == (200, 200)
        token_file.write_text("token-bbbb\n")
        hup_until(1)
        assert (status("token-aaaa"), status("token-bbbb")) == (401, 200)
        token_file.unlink()
        hup_until(1)
        assert "the tokens in force are kept" in server.stderr()
        assert (status("token-aaaa"), status("token-bbbb")) == (401, 200)
        assert server.proc.pid == pid and server.proc.poll() is None
    finally:
        server.kill()
