"""One durable commit per order (docs/engines.md, in-transaction engines), through real tachyond processes.

An engine that matches inside the wallet's write transaction (memory; sqlite with ``in_wallet = true``, its
default) has an order recorded, matched and settled in one commit; the two-step path (sqlite's own file,
``in_wallet = false``) takes two. A transaction that does not commit leaves the engine's books as the
ledger's, and a SIGKILL under load loses nothing acknowledged and leaves the books equal to the ledger's open
orders.
"""

from __future__ import annotations

import re
from collections import Counter
from decimal import Decimal

import httpx
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
    state_snapshot,
)

from tachyon_ctl.client import DaemonNotRunning, RpcError
from tachyond.errors import IntegrityError

# (market engine, [engines.<name>] table, commits an order with fills costs)
# "sqlite": no [engines.sqlite] table, the default (in_wallet = true).
IN_TX = {"memory": ("memory", {}), "sqlite": ("sqlite", {})}
EXPLICIT = {"sqlite-in-wallet": ("sqlite", {"in_wallet": True})}
TWO_STEP = {"sqlite-own-file": ("sqlite", {"in_wallet": False})}


def _start(sockdir, variant: str, env: dict | None = None) -> DaemonProc:
    engine, table = {**IN_TX, **EXPLICIT, **TWO_STEP}[variant]
    doc = dex_document(sockdir, engine)
    if table:
        doc["engines"] = {engine: table}
    d = DaemonProc(sockdir, doc, env=env).start()
    d.call("wallet.create", {"password": PASSWORD})
    d.call("wallet.unlock", {"password": PASSWORD})
    return d


async def _commits(d: DaemonProc) -> int:
    base = (await rpc(d, "daemon.info"))["http"][0]
    async with httpx.AsyncClient() as client:
        text = (await client.get(base + "/metrics", timeout=10)).text
    [value] = re.findall(r"^tachyon_dex_wallet_commits (\S+)$", text, re.M)
    return int(float(value))


@pytest.mark.parametrize("variant,expected", [("memory", 1), ("sqlite", 1), ("sqlite-in-wallet", 1),
                                              ("sqlite-own-file", 2)])
async def test_an_order_with_fills_is_answered_after_one_wallet_commit_on_an_in_tx_engine(sockdir, variant,
                                                                                          expected):
    with trio.fail_after(60):
        d = await trio.to_thread.run_sync(_start, sockdir, variant)
        try:
            await fund(d, "maker", ZEC="10")
            await fund(d, "taker", USDC="1000")
            await order(d, "maker", "sell", "1", "50.00")
            await order(d, "maker", "sell", "1", "51.00")
            before = await _commits(d)
            o = await order(d, "taker", "buy", "1.5", "51.00")
            assert (o["status"], [t["price"] for t in o["trades"]]) == ("closed", ["50.00", "51.00"])
            assert await _commits(d) - before == expected
            # The answer is what the ledger holds: a read after it shows the same order.
            [stored] = [x for x in await rpc(d, "dex.orders", {"account": "taker"}) if x["id"] == o["id"]]
            assert stored == o
            book = await rpc(d, "dex.order_book", {"market": "ZEC/USDC"})
            assert (book["bids"], book["asks"]) == ([], [["51.00", "0.50"]])
            if expected == 1:   # a cancel too: the engine and the release of the hold in one commit
                rest = await order(d, "maker", "sell", "1", "60.00")
                before = await _commits(d)
                canceled = await rpc(d, "dex.cancel_order", {"order_id": rest["id"]})
                assert canceled["status"] == "canceled"
                assert await _commits(d) - before == 1
            assert (await rpc(d, "ledger.verify"))["ok"]
        finally:
            d.kill()


@pytest.mark.parametrize("variant", list(IN_TX))
async def test_a_transaction_that_does_not_commit_leaves_the_engine_as_the_ledger(sockdir, variant):
    """The operation fails after the engine matched (a test fault): the caller gets the error, nothing of it is
    kept (no order, no hold, no fill), the engine's books are the ledger's again without a restart, and the
    maker it had taken still trades."""
    with trio.fail_after(60):
        d = await trio.to_thread.run_sync(lambda: _start(sockdir, variant,
                                                         env={"TACHYON_TEST_FAULT": "fail_in_tx:boom"}))
        try:
            await fund(d, "maker", ZEC="10")
            await fund(d, "taker", USDC="1000")
            await order(d, "maker", "sell", "1", "50.00")
            await order(d, "maker", "sell", "1", "51.00")
            await order(d, "taker", "buy", "1", "40.00")
            before = await state_snapshot(d)
            err = await rpc_error(d, "dex.place_order", {"account": "taker", "market": "ZEC/USDC", "side": "buy",
                                                         "type": "limit", "price": "51.00", "qty": "1.5",
                                                         "client_order_id": "boom"})
            assert "the operation failed after the engine matched" in err.message
            assert await state_snapshot(d) == before
            assert [o["client_order_id"] for o in await rpc(d, "dex.orders", {"account": "taker"})] == [None]
            assert await rpc(d, "dex.trades", {}) == []
            # Service goes on: the makers the failed order had matched are still there, in time priority.
            o = await order(d, "taker", "buy", "1.5", "51.00", client_order_id="fine")
            assert [(t["price"], t["qty"]) for t in o["trades"]] == [("50.00", "1.00"), ("51.00", "0.50")]
            book = await rpc(d, "dex.order_book", {"market": "ZEC/USDC"})
            assert (book["bids"], book["asks"]) == ([["40.00", "1.00"]], [["51.00", "0.50"]])
            fills = [e for e in await rpc(d, "ledger.history", {"limit": 100}) if e["kind"] == "fill"]
            assert len({e["key"] for e in fills}) == len(fills) == 2
            assert (await rpc(d, "ledger.verify"))["ok"]
        finally:
            d.kill()


def _levels(orders: list[dict], side: str) -> list[list[str]]:
    """Aggregated (price, remaining) of open orders of one side, best first, as dex.order_book shows them."""
    total: Counter = Counter()
    for o in orders:
        if o["side"] == side:
            total[Decimal(o["price"])] += Decimal(o["remaining"])
    prices = sorted(total, reverse=(side == "buy"))
    return [[f"{p:.2f}", f"{total[p]:.2f}"] for p in prices]


@pytest.mark.parametrize("variant", list(IN_TX))
async def test_sigkill_under_load_keeps_every_acknowledged_order_and_the_books_equal_the_ledger(sockdir, variant):
    """8 clients place crossing orders (and cancel some) until the daemon is SIGKILLed mid-load. After the
    restart: ledger.verify ok, every acknowledged order there with at least what its answer said (a later
    order may have filled it more), every acknowledged cancel canceled, and the engine's books exactly the
    ledger's open orders."""
    acked: dict[str, dict] = {}
    canceled: set[str] = set()
    with trio.fail_after(120):
        d = await trio.to_thread.run_sync(_start, sockdir, variant)
        try:
            for i in range(8):
                await fund(d, f"c{i}", ZEC="1000", USDC="100000")
            enough = trio.Event()

            async def client(i: int) -> None:
                n = 0
                try:
                    while True:
                        n += 1
                        side = "buy" if (n + i) % 2 else "sell"
                        price = f"{50 + (n * 7 + i * 3) % 9 - 4}.00"
                        o = await order(d, f"c{i}", side, f"0.{1 + (n + i) % 9}", price, client_order_id=f"c{i}-{n}")
                        acked[o["id"]] = o
                        if o["status"] == "open" and n % 5 == 0:
                            c = await rpc(d, "dex.cancel_order", {"order_id": o["id"]})
                            assert c["status"] == "canceled"
                            canceled.add(o["id"])
                        if len(acked) >= 150:
                            enough.set()
                except (DaemonNotRunning, RpcError, OSError, ConnectionError):
                    return   # the daemon was killed under this call

            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(client, i)
                await enough.wait()
                await trio.to_thread.run_sync(d.kill)
            await trio.to_thread.run_sync(d.start)
            assert (await rpc(d, "ledger.verify"))["ok"]
            stored = {o["id"]: o for o in await rpc(d, "dex.orders", {})}
            for oid, o in acked.items():
                assert oid in stored, o
                s = stored[oid]
                assert s["client_order_id"] == o["client_order_id"]
                assert Decimal(s["filled"]) >= Decimal(o["filled"])
                if o["status"] != "open":
                    assert (s["status"], s["filled"]) == (o["status"], o["filled"])
            for oid in canceled:
                assert stored[oid]["status"] == "canceled"
            open_orders = [o for o in stored.values() if o["status"] == "open"]
            book = await rpc(d, "dex.order_book", {"market": "ZEC/USDC", "depth": 1000})
            assert book["bids"] == _levels(open_orders, "buy")
            assert book["asks"] == _levels(open_orders, "sell")
            locked_usdc = 0
            for i in range(8):
                locked_usdc += (await balances(d, f"c{i}"))["USDC"][1]
            assert (locked_usdc > 0) == any(o["side"] == "buy" for o in open_orders)
            # It trades on: a sell at the lowest price takes the best bid first.
            if book["bids"]:
                await fund(d, "late", ZEC="2")
                o = await order(d, "late", "sell", "1", "1.00")
                assert o["trades"][0]["price"] == book["bids"][0][0]
            assert (await rpc(d, "ledger.verify"))["ok"]
        finally:
            d.kill()


async def test_a_sqlite_engine_file_is_replayed_once_then_put_away_when_in_wallet_is_turned_on(sockdir):
    """A wallet that ran the SQLite engine on its own file, and died between the engine's match and the
    settlement (after_match): restarted with the default (``in_wallet = true``), the file's unsettled fills
    settle once, the file is renamed ``engine-sqlite.db.migrated``, the books are the ledger's, its log is in
    the wallet (sealed) and the seqs go on without reusing a fill key."""
    data = sockdir / "data"
    with trio.fail_after(90):
        d = await trio.to_thread.run_sync(_start, sockdir, "sqlite-own-file")
        try:
            await crash_after_match(d)
            assert (data / "engine-sqlite.db").exists()

            doc = {key: value for key, value in d.doc.items() if key != "engines"}   # the default: in_wallet
            d = DaemonProc(sockdir, doc)
            await trio.to_thread.run_sync(d.start)
            [taker] = await rpc(d, "dex.orders", {"account": "taker"})
            assert (taker["client_order_id"], taker["status"], taker["filled"]) == ("crash-1", "closed", "1.50")
            assert [(t["price"], t["qty"]) for t in taker["trades"]] == [("50.00", "1.00"), ("51.00", "0.50")]
            assert not (data / "engine-sqlite.db").exists() and (data / "engine-sqlite.db.migrated").exists()
            book = await rpc(d, "dex.order_book", {"market": "ZEC/USDC"})
            assert (book["bids"], book["asks"]) == ([], [["51.00", "0.50"]])
            before = await _commits(d)
            o = await order(d, "taker", "buy", "0.5", "51.00")
            assert [(t["price"], t["qty"]) for t in o["trades"]] == [("51.00", "0.50")]
            assert await _commits(d) - before == 1
            seqs = [t["seq"] for t in await rpc(d, "dex.trades", {})]
            assert len(seqs) == len(set(seqs)) == 3
            assert (await rpc(d, "ledger.verify"))["ok"]
            assert await trio.to_thread.run_sync(d.stop) == 0
            # The log is in the wallet file, sealed: rows there, no order id in clear anywhere in the file.
            import sqlite3

            with sqlite3.connect(data / "wallet.db") as conn:
                rows = conn.execute("SELECT id, body FROM engine_sqlite_events ORDER BY id").fetchall()
            assert rows and all(o["id"].encode() not in bytes(body) for _id, body in rows)
            assert o["id"].encode() not in (data / "wallet.db").read_bytes()
            # A second restart reads nothing from the old file and applies nothing twice.
            await trio.to_thread.run_sync(d.start)
            assert len(await rpc(d, "dex.trades", {})) == 3
            book = await rpc(d, "dex.order_book", {"market": "ZEC/USDC"})
            assert (book["bids"], book["asks"]) == ([], [])
            assert (await balances(d, "taker"))["ZEC"] == (200_000_000, 0)
            assert (await rpc(d, "ledger.verify"))["ok"]
        finally:
            d.kill()


@pytest.mark.parametrize("variant", list(IN_TX))
async def test_disk_full_mid_order_rolls_the_whole_batch_back_and_the_engine_with_it(sockdir, variant):
    """On a full disk (a small tmpfs filled by a ballast file) crossing orders are refused with WriteFailed: the
    batch left nothing (no order, no hold, no fill), the engine's books are the ledger's again, the daemon keeps
    serving, and once space returns the makers the refused orders had matched trade as before."""
    import subprocess

    from torture.diskfull import fill, mount_tmpfs

    mnt = sockdir / "fs"
    why = await trio.to_thread.run_sync(mount_tmpfs, mnt)
    assert why is None, why
    try:
        engine, table = IN_TX[variant]
        doc = dex_document(sockdir, engine)
        doc["daemon"]["data_dir"] = str(mnt / "data")
        doc["daemon"]["log_level"] = "info"
        if table:
            doc["engines"] = {engine: table}
        with trio.fail_after(120):
            d = DaemonProc(sockdir, doc)
            await trio.to_thread.run_sync(d.start)
            try:
                await rpc(d, "wallet.create", {"password": PASSWORD})
                await rpc(d, "wallet.unlock", {"password": PASSWORD})
                await fund(d, "maker", ZEC="1000")
                await fund(d, "taker", USDC="1000000")
                for i in range(40):
                    await order(d, "maker", "sell", "1", f"{50 + i}.00")
                ballast = mnt / "ballast"
                await trio.to_thread.run_sync(fill, ballast)
                # SQLite may still have room in pages it holds: take one ask at a time until a write is refused.
                refused = None
                for i in range(40):
                    try:
                        await order(d, "taker", "buy", "1", f"{50 + i}.00", client_order_id=f"full-{i}")
                    except RpcError as exc:
                        refused = (i, exc)
                        break
                assert refused is not None, "the disk never filled up"
                i, exc = refused
                assert exc.code == -32016, (exc.code, exc.message)
                ballast.unlink()
                stored = {o["client_order_id"]: o for o in await rpc(d, "dex.orders", {"account": "taker"})}
                assert f"full-{i}" not in stored and len(stored) == i
                assert (await balances(d, "taker"))["USDC"][1] == 0   # no hold left behind
                assert (await rpc(d, "ledger.verify"))["ok"]
                asks = await rpc(d, "dex.order_book", {"market": "ZEC/USDC", "depth": 100})
                assert asks["asks"][0] == [f"{50 + i}.00", "1.00"] and len(asks["asks"]) == 40 - i
                o = await order(d, "taker", "buy", "1", f"{50 + i}.00", client_order_id=f"full-{i}")
                assert [(t["price"], t["qty"]) for t in o["trades"]] == [(f"{50 + i}.00", "1.00")]
                assert len(await rpc(d, "dex.trades", {})) == i + 1
                assert (await rpc(d, "ledger.verify"))["ok"]
                # A full disk is an operating condition: said in the log, never as a traceback.
                assert "Traceback" not in d.stderr(), d.stderr()[-3000:]
            finally:
                d.kill()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_the_in_wallet_log_is_resealed_by_a_data_key_rotation_and_trading_goes_on(sockdir):
    """``in_wallet``: the engine's table is declared to the rotation, so every row opens under the new key and
    none under the old one; the daemon's books survive the rotation and a restart, and trade on."""
    import sqlite3

    from tachyond.wallet.wallet import Wallet
    from tachyond.wallet.writer import aad

    async def keys_of(password: str):
        async with Wallet(sockdir / "data", scrypt_n=2**10) as wallet:
            await wallet.unlock(password)
            return wallet.keys

    with trio.fail_after(90):
        d = await trio.to_thread.run_sync(_start, sockdir, "sqlite")
        try:
            await fund(d, "maker", ZEC="10")
            await fund(d, "taker", USDC="1000")
            await order(d, "maker", "sell", "1", "50.00")
            await order(d, "maker", "sell", "1", "51.00")
            await order(d, "taker", "buy", "0.5", "50.00")
            old = await keys_of(PASSWORD)
            new_pw = "a new and long enough password"
            assert (await rpc(d, "wallet.change_password", {"old_password": PASSWORD, "new_password": new_pw,
                                                            "rotate_data_key": True}))["rotated"] is True
            (sockdir / "pw").write_text(new_pw)
            o = await order(d, "taker", "buy", "1", "51.00")
            assert [(t["price"], t["qty"]) for t in o["trades"]] == [("50.00", "0.50"), ("51.00", "0.50")]
            assert await trio.to_thread.run_sync(d.stop) == 0
            new = await keys_of(new_pw)
            with sqlite3.connect(sockdir / "data" / "wallet.db") as conn:
                rows = conn.execute("SELECT id, body FROM engine_sqlite_events").fetchall()
            assert len(rows) >= 6
            for seq, body in rows:
                new.cipher.open(aad("engine_sqlite_events", "body", seq), bytes(body))
                with pytest.raises(IntegrityError):
                    old.cipher.open(aad("engine_sqlite_events", "body", seq), bytes(body))
            await trio.to_thread.run_sync(d.start)
            book = await rpc(d, "dex.order_book", {"market": "ZEC/USDC"})
            assert (book["bids"], book["asks"]) == ([], [["51.00", "0.50"]])
            o = await order(d, "taker", "buy", "0.5", "51.00")
            assert o["status"] == "closed"
            assert (await rpc(d, "ledger.verify"))["ok"]
        finally:
            d.kill()
