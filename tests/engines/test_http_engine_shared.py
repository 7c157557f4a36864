"""Several real tachyond daemons trading through one real tachyon-engine-server (the shared book).

Each daemon follows the server's feed while it runs and settles, exactly once, every event of its own
orders; outages and server restarts are met without a daemon restart.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import DaemonProc
from test_http_engine import TOKEN, ServerProc, server_document
from test_http_engine_daemon import PASSWORD, daemon_document

from tachyon_ctl.client import RpcError

ZEC = 100_000_000
USDC = 1_000_000
WAIT_S = 20   # the longest any wait below may take (it returns as soon as the condition holds)


def free_port() -> int:
    """A loopback port nobody listens on now (the server must come back on the same URL after a restart)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {value!r})")
        time.sleep(0.02)


class Cluster:
    """Real daemons, each in its own directory, sharing one engine server URL."""

    def __init__(self, root: Path):
        self.root = root
        self.daemons: list[DaemonProc] = []
        self.servers: list[ServerProc] = []

    def server(self, *, engine: str = "sqlite", port: int = 0, data: str = "engine-data") -> ServerProc:
        doc = server_document(self.root / data, engine=engine, listen=f"127.0.0.1:{port}")
        if engine == "memory":
            del doc["server"]["data_dir"]
        proc = ServerProc(self.root, doc).start()
        self.servers.append(proc)
        return proc

    def daemon(self, name: str, url: str) -> DaemonProc:
        dir_ = self.root / name
        dir_.mkdir(exist_ok=True)
        d = DaemonProc(dir_, daemon_document(dir_, url), env={"TACHYON_ENGINE_TOKEN": TOKEN})
        self.daemons.append(d)
        return d

    def restart(self, d: DaemonProc) -> DaemonProc:
        again = DaemonProc(d.dir, d.doc, env={"TACHYON_ENGINE_TOKEN": TOKEN})
        self.daemons.append(again)
        return again.start()


@pytest.fixture
def cluster(sockdir: Path) -> Iterator[Cluster]:
    c = Cluster(sockdir)
    yield c
    for d in c.daemons:
        d.kill()
    for s in c.servers:
        s.kill()


def funded(d: DaemonProc, account: str, token: str, amount: str) -> DaemonProc:
    if d.call("daemon.info")["wallet"] == "absent":
        d.call("wallet.create", {"password": PASSWORD})
    d.call("accounts.create", {"name": account})
    d.call("ledger.deposit", {"account": account, "token": token, "amount": amount, "reference": f"{account}-{token}"})
    return d


def order(d: DaemonProc, account: str, side: str, price: str, qty: str) -> dict:
    return d.call("dex.place_order", {"account": account, "market": "ZEC/USDC", "side": side, "type": "limit",
                                      "price": price, "qty": qty})


def balances(d: DaemonProc, account: str) -> dict[str, tuple[int, int]]:
    return {
        b["token"]: (b["available_minor"], b["locked_minor"]) for b in d.call("ledger.balances", {"account": account})
    }


def status(d: DaemonProc, order_id: str) -> str:
    [o] = [o for o in d.call("dex.orders") if o["id"] == order_id]
    return o["status"]


def asks(d: DaemonProc) -> Any:
    """The book's asks as d sees them; None while d cannot reach the server (it refuses, clearly)."""
    try:
        return d.call("dex.order_book", {"market": "ZEC/USDC"})["asks"]
    except RpcError as exc:
        assert "unreachable" in exc.message
        return None


def healthz(d: DaemonProc) -> httpx.Response:
    return httpx.get(d.call("daemon.info")["http"][0] + "/healthz", timeout=10)


def test_a_buy_in_one_daemon_fills_a_resting_sell_in_another_and_both_settle(cluster: Cluster) -> None:
    server = cluster.server()
    # The same account name in both wallets: owners are per wallet, so this is no self-trade.
    a = funded(cluster.daemon("a", server.url).start(), "trader", "USDC", "100")
    b = funded(cluster.daemon("b", server.url).start(), "trader", "ZEC", "2")
    ask = order(b, "trader", "sell", "40.00", "1")
    assert ask["status"] == "open"
    assert a.call("dex.order_book", {"market": "ZEC/USDC"})["asks"] == [["40.00", "1.00"]]   # one book for both

    bid = order(a, "trader", "buy", "40.00", "1")
    assert (bid["status"], bid["filled"], bid["cost"], bid["fee"]) == ("closed", "1.00", "40.00", "0.08")
    wait_for("B settles its maker fill from the feed", lambda: status(b, ask["id"]) == "closed")

    [sold] = [o for o in b.call("dex.orders") if o["id"] == ask["id"]]
    assert (sold["filled"], sold["cost"], sold["fee"]) == ("1.00", "40.00", "0.04")    # maker fee 10 bps
    assert balances(b, "trader") == {"USDC": (40 * USDC - 40_000, 0), "ZEC": (1 * ZEC, 0), "BASE": (0, 0)}
    assert balances(a, "trader") == {"USDC": (60 * USDC - 80_000, 0), "ZEC": (1 * ZEC, 0), "BASE": (0, 0)}
    for d in (a, b):
        assert d.call("ledger.verify")["ok"] is True
        assert len(d.call("dex.trades")) == 1
    # Each wallet booked the other's side against venue:http: the two venue accounts mirror each other.
    venue_a, venue_b = balances(a, "venue:http"), balances(b, "venue:http")
    assert venue_a["ZEC"][0] == -ZEC and venue_a["USDC"][0] == 40 * USDC
    assert venue_b["ZEC"][0] == ZEC and venue_b["USDC"][0] == -40 * USDC
    assert TOKEN not in a.stderr() + b.stderr()


def test_a_fill_while_the_maker_daemon_is_down_settles_once_after_it_restarts(cluster: Cluster) -> None:
    server = cluster.server()
    a = funded(cluster.daemon("a", server.url).start(), "alice", "USDC", "200")
    b = funded(cluster.daemon("b", server.url).start(), "bob", "ZEC", "2")
    ask = order(b, "bob", "sell", "40.00", "1")
    b.signal(signal.SIGKILL)
    b.wait(10)
    assert order(a, "alice", "buy", "40.00", "1")["status"] == "closed"

    b = cluster.restart(b)
    wait_for("B settles the fill it missed", lambda: status(b, ask["id"]) == "closed")
    # A second trade, settled after the first: had the first been applied twice, it would show by now.
    ask2 = order(b, "bob", "sell", "41.00", "1")
    assert order(a, "alice", "buy", "41.00", "1")["status"] == "closed"
    wait_for("B settles the second fill", lambda: status(b, ask2["id"]) == "closed")
    assert len(b.call("dex.trades")) == 2
    assert balances(b, "bob") == {"USDC": (81 * USDC - 40_000 - 41_000, 0), "ZEC": (0, 0), "BASE": (0, 0)}
    assert b.call("ledger.verify")["ok"] is True and a.call("ledger.verify")["ok"] is True


def test_a_new_daemon_joins_a_server_with_compacted_history(cluster: Cluster) -> None:
    server = cluster.server()
    a = funded(cluster.daemon("a", server.url).start(), "alice", "USDC", "100")
    b = funded(cluster.daemon("b", server.url).start(), "bob", "ZEC", "2")
    ask = order(b, "bob", "sell", "40.00", "0.5")
    order(a, "alice", "buy", "40.00", "0.5")
    wait_for("B settles", lambda: status(b, ask["id"]) == "closed")
    # A third wallet arrives later: it follows from the server's current seq and trades at once.
    c = funded(cluster.daemon("c", server.url).start(), "carol", "ZEC", "1")
    assert c.call("dex.markets")[0]["halted"] is False
    ask_c = order(c, "carol", "sell", "42.00", "0.5")
    assert order(a, "alice", "buy", "42.00", "0.5")["status"] == "closed"
    wait_for("C settles its fill", lambda: status(c, ask_c["id"]) == "closed")
    assert len(c.call("dex.trades")) == 1 and c.call("ledger.verify")["ok"] is True


def test_server_outage_refuses_orders_without_locking_and_the_feed_resumes_by_itself(cluster: Cluster) -> None:
    port = free_port()
    server = cluster.server(port=port)
    a = funded(cluster.daemon("a", server.url).start(), "alice", "USDC", "100")
    b = funded(cluster.daemon("b", server.url).start(), "bob", "ZEC", "2")
    ask = order(b, "bob", "sell", "40.00", "1")
    before_a, before_b = balances(a, "alice"), balances(b, "bob")

    server.kill()
    for d in (a, b):
        wait_for("/healthz to name the unreachable engine", lambda d=d: healthz(d).status_code == 503)
        body = healthz(d).json()
        assert "engine:http" in body["failing"], body  # names only; why is in dex.markets and the log
        assert d.call("dex.markets")[0]["engine_online"] is False
    refused = a.raw(b'{"jsonrpc":"2.0","id":1,"method":"dex.place_order","params":{"account":"alice",'
                    b'"market":"ZEC/USDC","side":"buy","type":"limit","price":"40.00","qty":"1"}}\n')
    assert b"unreachable" in refused and b"nothing was recorded or locked" in refused, refused
    assert balances(a, "alice") == before_a
    assert [o["status"] for o in a.call("dex.orders")] == []
    cancel = b.raw(b'{"jsonrpc":"2.0","id":1,"method":"dex.cancel_order","params":{"order_id":"'
                   + ask["id"].encode() + b'"}}\n')
    assert b"unreachable" in cancel, cancel
    assert status(b, ask["id"]) == "open" and balances(b, "bob") == before_b

    cluster.server(port=port)   # same data dir, same URL: the log and the epoch are the same
    for d in (a, b):
        wait_for("the daemon to reconnect by itself", lambda d=d: d.call("dex.markets")[0]["engine_online"])
    assert healthz(a).status_code == 200
    bid = order(a, "alice", "buy", "40.00", "1")
    assert bid["status"] == "closed"
    wait_for("B settles from the resumed feed", lambda: status(b, ask["id"]) == "closed")
    for d in (a, b):
        assert len(d.call("dex.trades")) == 1 and d.call("ledger.verify")["ok"] is True
    assert balances(b, "bob")["USDC"] == (40 * USDC - 40_000, 0)


def test_a_memory_server_restart_is_detected_by_its_epoch(cluster: Cluster) -> None:
    port = free_port()
    server = cluster.server(engine="memory", port=port)
    a = funded(cluster.daemon("a", server.url).start(), "alice", "USDC", "100")
    b = funded(cluster.daemon("b", server.url).start(), "bob", "ZEC", "2")
    ask = order(b, "bob", "sell", "40.00", "1")
    assert order(a, "alice", "buy", "40.00", "0.5")["status"] == "closed"      # fill seq 2 of the first log
    wait_for("B settles half", lambda: [o for o in b.call("dex.orders") if o["id"] == ask["id"]][0]["filled"] == "0.50")

    server.kill()
    cluster.server(engine="memory", port=port)   # a new log: seqs begin again at 1
    wait_for("B re-submits its open order to the new book", lambda: asks(a) == [["40.00", "0.50"]])
    assert "feed epoch changed" in b.stderr()
    bid = order(a, "alice", "buy", "40.00", "0.5")    # a fill with seq 2 again, in the new epoch
    assert (bid["status"], bid["filled"]) == ("closed", "0.50")
    wait_for("B settles the new epoch's fill", lambda: status(b, ask["id"]) == "closed")
    assert len(b.call("dex.trades")) == 2 and len(a.call("dex.trades")) == 2
    assert balances(b, "bob") == {"USDC": (40 * USDC - 40_000, 0), "ZEC": (1 * ZEC, 0), "BASE": (0, 0)}
    assert balances(a, "alice")["ZEC"] == (1 * ZEC, 0)
    for d in (a, b):
        assert d.call("ledger.verify")["ok"] is True


def test_a_durable_server_with_a_new_epoch_halts_settlement_instead_of_guessing(cluster: Cluster) -> None:
    port = free_port()
    server = cluster.server(port=port)
    b = funded(cluster.daemon("b", server.url).start(), "bob", "ZEC", "2")
    ask = order(b, "bob", "sell", "40.00", "1")
    before = balances(b, "bob")
    server.kill()
    cluster.server(port=port, data="another-log")   # durable, but not the log this wallet applied from
    reason = wait_for("the market to halt", lambda: b.call("dex.markets")[0]["halt_reason"])
    assert "epoch changed" in reason and "durable" in reason, reason
    assert "market:ZEC/USDC" in healthz(b).text and healthz(b).status_code == 503
    assert status(b, ask["id"]) == "open" and balances(b, "bob") == before
    assert b.call("ledger.verify")["ok"] is True
