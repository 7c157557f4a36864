"""Keys do not outlive `wallet lock`: after it, nothing reachable from a running daemon (wallet, writer, ledger,
dex, engines, threads) holds the data key, its derived keys, the X25519 key or the SQLite engine's MAC key;
the log redaction set holds only verified passwords."""

from __future__ import annotations

import gc
import sys
import threading
import types

import pytest
import trio
from conftest import write_config
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from tachyon_sqlite_engine import SqliteEngine
from test_dex_helpers import PASSWORD, dex_document

from tachyon_ctl.client import Client, RpcError
from tachyond.config import load
from tachyond.daemon import Daemon
from tachyond.engine import EngineContext, EngineOrder, MarketSpec
from tachyond.errors import WalletLocked
from tachyond.runtime import logs
from tachyond.wallet.crypto import Cipher, WalletKeys
from tachyond.wallet.wallet import Wallet

WRONG = "not the password, but long enough to redact"


def holders_of(roots: list[object], secrets: set[bytes], skip: set[int]) -> list[str]:
    """Walk gc referents from ``roots``; describe every key-holding object (key bytes, Cipher, AESGCM, WalletKeys)."""
    seen = set(skip)
    stack = list(roots)
    found = []
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (bytes, bytearray)) and bytes(obj) in secrets:
            found.append(f"key bytes ({len(obj)})")
        elif isinstance(obj, (Cipher, AESGCM, WalletKeys)):
            found.append(type(obj).__name__)
        elif isinstance(obj, (str, int, float, types.ModuleType)) and not isinstance(obj, bool):
            continue  # modules: globals of the whole program are not "reachable from the daemon" state
        stack.extend(gc.get_referents(obj))
    return found


def call(sock: str, method: str, params: dict | None = None):
    with Client(sock) as c:
        return c.call(method, params)


@pytest.mark.parametrize("in_wallet", [True, False])
async def test_after_wallet_lock_no_object_reachable_from_the_daemon_holds_a_key(sockdir, in_wallet):
    """The sqlite engine's own file (in_wallet = false) has an order-id MAC key of its own, dropped at the lock
    with the wallet's keys; by default (in_wallet) the engine holds no key at all (the wallet's writer seals)."""
    doc = dex_document(sockdir, "sqlite")
    doc["engines"] = {"sqlite": {"in_wallet": in_wallet}}
    config = load(write_config(sockdir, doc))
    sock = str(config.daemon.socket)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            daemon = Daemon(config)
            daemon.load_plugins()
            daemon.wallet.scrypt_n = 2**10
            await nursery.start(daemon.run)
            rpc = lambda method, params=None: trio.to_thread.run_sync(call, sock, method, params)  # noqa: E731
            await rpc("wallet.create", {"password": PASSWORD})
            await rpc("ledger.deposit", {"token": "USDC", "amount": "100", "reference": "r1"})
            await rpc("dex.place_order", {"market": "ZEC/USDC", "side": "buy", "type": "limit", "qty": "1",
                                          "price": "10.00"})
            engine = daemon.dex.engines["sqlite"]
            keys = daemon.wallet.keys
            secrets = {keys.data_key, keys._lookup_key, keys.chain_key, keys.private_raw}
            if in_wallet:
                assert engine.in_tx and engine._store._mac_key == b"" and engine._store._cipher is None
            else:
                secrets.add(engine._store._mac_key)
            assert len(secrets) == 5 - in_wallet and all(len(s) == 32 for s in secrets)
            roots = [daemon, *(f for ident, f in sys._current_frames().items() if ident != threading.get_ident())]
            # The walk reaches keys while unlocked: the engine's copies (its own file), else the wallet's own.
            skip = {id(secrets)} if in_wallet else {id(secrets), id(keys)}
            assert holders_of(roots, secrets, skip), "the walk finds keys while unlocked"
            del keys

            with pytest.raises(RpcError) as info:
                await rpc("wallet.unlock", {"password": WRONG})
            assert info.value.code == -32004
            assert await rpc("wallet.lock") == {"locked": True}
            gc.collect()
            roots = [daemon, *(f for ident, f in sys._current_frames().items() if ident != threading.get_ident())]
            assert holders_of(roots, secrets, {id(secrets)}) == []
            assert not logs.is_redacted(WRONG) and logs.is_redacted(PASSWORD)

            # Unlocking gives the engine its key back: orders work again, on the same book.
            await rpc("wallet.unlock", {"password": PASSWORD})
            placed = await rpc("dex.place_order", {"market": "ZEC/USDC", "side": "buy", "type": "limit",
                                                   "qty": "1", "price": "10.00"})
            assert placed["status"] == "open"
            book = await rpc("dex.order_book", {"market": "ZEC/USDC"})
            assert book["bids"] == [["10.00", "2.0000"]] or book["bids"][0][0] == "10.00"
            daemon.request_stop("test")


async def test_the_unlock_timeout_tells_lock_listeners_and_the_sqlite_engine_drops_its_keys(tmp_path):
    market = MarketSpec("ZEC/USDC", "ZEC", "USDC", "0.01", "0.001")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            wallet = Wallet(tmp_path, scrypt_n=2**10)
            await nursery.start(wallet.serve)
            await wallet.create(PASSWORD)
            # The engine's own file (in_wallet = false): its store holds the cipher and a MAC key of its own.
            engine = SqliteEngine(EngineContext("sqlite", tmp_path, wallet.cipher, {"in_wallet": False}))
            await engine.start([market])
            locked = trio.Event()

            async def on_lock() -> None:
                await engine.on_lock()
                locked.set()

            wallet.add_lock_listener(on_lock)
            await engine.submit(EngineOrder("o1", market.symbol, "alice", "buy", 100, 5))
            await wallet.unlock(PASSWORD, timeout_s=0.2)
            await locked.wait()
            assert wallet.state == "locked"
            assert engine._store._cipher is None and engine._store._mac_key == b""
            with pytest.raises(WalletLocked):
                await engine.submit(EngineOrder("o2", market.symbol, "alice", "buy", 100, 5))
            assert (await engine.depth(market.symbol, 5)).bids == [(100, 5)]  # the book stays, in memory
            await wallet.unlock(PASSWORD)
            await engine.on_unlock(wallet.cipher)
            events = await engine.submit(EngineOrder("o2", market.symbol, "alice", "buy", 100, 5))
            assert events[-1].kind == "rested" and [e.order_id for e in await engine.events_after(0)] == ["o1", "o2"]
            await engine.aclose()
            nursery.cancel_scope.cancel()
