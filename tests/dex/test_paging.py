"""Paging: dex.trades {before}, dex.orders {after}, ledger.history {before}, and tachyon-ctl --all over them."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import trio
from conftest import run_ctl
from test_dex_helpers import fund, order, rpc, rpc_error, start_dex_daemon

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def paged():
    """A daemon with 5,000 trades on PAGE/USDC (one maker ask, 5,000 taker bids) and a few on ZEC/USDC."""
    dir_ = Path(tempfile.mkdtemp(prefix="typ-", dir="/tmp"))
    d = start_dex_daemon(dir_, "memory", ["PAGE"])
    trio.run(_fill, d)
    yield d
    assert d.stop() == 0
    shutil.rmtree(dir_, ignore_errors=True)


async def _fill(d) -> None:
    from test_dex_watch import connect

    with trio.fail_after(300):
        await fund(d, "p-maker", PAGE="60", ZEC="1")
        await fund(d, "p-taker", USDC="600000")
        await order(d, "p-maker", "sell", "50", "100.00", market="PAGE/USDC")
        conn = await connect(d)
        for batch in range(5):
            await conn.send([{"jsonrpc": "2.0", "id": i, "method": "dex.place_order",
                              "params": {"account": "p-taker", "market": "PAGE/USDC", "side": "buy", "type": "limit",
                                         "price": "100.00", "qty": "0.01", "client_order_id": f"b{batch}-{i}"}}
                             for i in range(1000)])
            answers = await conn.read()
            assert len(answers) == 1000 and all(a["result"]["status"] == "closed" for a in answers)
        await conn.stream.aclose()
        # Another market's trades: --market keeps them out, and they interleave nothing on PAGE/USDC.
        await order(d, "p-maker", "sell", "1", "30.00")
        await order(d, "p-taker", "buy", "1", "30.00")


def ctl_json(d, *args: str) -> list:
    r = run_ctl("--json", *args, socket_path=d.socket, timeout_s=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_dex_trades_all_returns_5000_trades_once_each_newest_first(paged):
    trades = ctl_json(paged, "dex", "trades", "--all", "--market", "PAGE/USDC")
    ids = [t["id"] for t in trades]
    assert len(trades) == 5000 and len(set(ids)) == 5000
    assert ids == sorted(ids, reverse=True)
    assert {t["market"] for t in trades} == {"PAGE/USDC"} and {t["qty"] for t in trades} == {"0.01"}
    # The same as asking page by page by hand, and as the one-page answer's first items.
    first = ctl_json(paged, "dex", "trades", "--market", "PAGE/USDC", "--limit", "3")
    assert first == trades[:3]
    assert ctl_json(paged, "dex", "trades", "--market", "PAGE/USDC", "--limit", "2",
                    "--before", str(ids[2])) == trades[3:5]
    # Without --market, every market's trades: 5,001.
    assert len(ctl_json(paged, "dex", "trades", "--all")) == 5001
    # The oldest trade has nothing before it.
    assert ctl_json(paged, "dex", "trades", "--market", "PAGE/USDC", "--before", str(ids[-1])) == []


def test_dex_orders_all_pages_oldest_first_and_keeps_its_filters(paged):
    orders = ctl_json(paged, "dex", "orders", "--all", "--account", "p-taker", "--market", "PAGE/USDC",
                      "--status", "closed")
    assert len(orders) == 5000 and len({o["id"] for o in orders}) == 5000
    assert {o["client_order_id"] for o in orders} == {f"b{b}-{i}" for b in range(5) for i in range(1000)}
    # Oldest first: by the time each was placed (a batch's calls run concurrently, so not in batch order).
    assert [o["created_at"] for o in orders] == sorted(o["created_at"] for o in orders)
    assert [o["client_order_id"][:2] for o in orders] == sorted(o["client_order_id"][:2] for o in orders)
    assert {(o["account"], o["market"], o["status"]) for o in orders} == {("p-taker", "PAGE/USDC", "closed")}
    page = ctl_json(paged, "dex", "orders", "--account", "p-taker", "--limit", "2", "--after", orders[0]["id"])
    assert [o["id"] for o in page] == [orders[1]["id"], orders[2]["id"]]
    # The maker's resting ask (PAGE) and its filled ZEC ask: the filters apply on every page.
    maker = ctl_json(paged, "dex", "orders", "--all", "--account", "p-maker")
    assert [(o["market"], o["status"]) for o in maker] == [("PAGE/USDC", "closed"), ("ZEC/USDC", "closed")]


async def test_an_unknown_cursor_is_refused_by_name(paged):
    err = await rpc_error(paged, "dex.orders", {"after": "o-no-such-order"})
    assert err.code == -32005 and "after must be the id of an order" in err.message
    r = run_ctl("dex", "trades", "--all", "--limit", "5", socket_path=paged.socket)
    assert r.returncode == 2 and "--all pages through everything" in r.stderr
    assert await rpc(paged, "dex.trades", {"before": 1}) == []


def test_ledger_history_all_pages_newest_first(paged):
    entries = ctl_json(paged, "ledger", "history", "--all", "--account", "p-maker")
    ids = [e["id"] for e in entries]
    # Two deposits, two order locks, 5,001 fills.
    assert len(entries) == 2 + 2 + 5001 and ids == sorted(set(ids), reverse=True)
    assert all(any(p["account"] == "p-maker" for p in e["postings"]) for e in entries)
