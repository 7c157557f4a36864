"""Helpers shared by the DEX tests (no tests here): configs with markets, funded accounts, RPC from trio."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import DaemonProc, base_document

from tachyon_ctl.client import DaemonNotRunning, RpcError

PASSWORD = "correct horse battery staple"
USDC = {"symbol": "USDC", "decimals": 6}
ZEC = {"symbol": "ZEC", "decimals": 8}
MARKET_DEFAULTS = {"tick": "0.01", "lot": "0.0001", "min_notional": "1", "maker_fee_bps": 10, "taker_fee_bps": 20,
                   "protection_bps": 500}


def dex_document(dir_: Path, engine: str, extra_bases: list[str] = ()) -> dict[str, Any]:
    """A config with USDC(6)/ZEC(8), the market ZEC/USDC on ``engine`` (plus X/USDC per extra base), unlocked at start."""  # noqa: E501 (shown verbatim)
    (dir_ / "pw").write_text(PASSWORD)
    tokens = [USDC, ZEC] + [{"symbol": b, "decimals": 8} for b in extra_bases]
    markets = [{"symbol": f"{b}/USDC", "engine": engine, **MARKET_DEFAULTS} for b in ["ZEC", *extra_bases]]
    return base_document(dir_, tokens=tokens, markets=markets, wallet={"password_file": str(dir_ / "pw")})


def start_dex_daemon(dir_: Path, engine: str, extra_bases: list[str] = (), **kw: Any) -> DaemonProc:
    """A real tachyond with a created wallet whose engines are open (create, then unlock as an operator would)."""
    d = DaemonProc(dir_, dex_document(dir_, engine, extra_bases), **kw).start()
    d.call("wallet.create", {"password": PASSWORD})
    d.call("wallet.unlock", {"password": PASSWORD})
    return d


async def rpc(d: DaemonProc, method: str, params: Any = None) -> Any:
    return await trio.to_thread.run_sync(d.call, method, params)


async def rpc_error(d: DaemonProc, method: str, params: Any = None) -> RpcError:
    """The RpcError a call must raise (fails the test when the call succeeds)."""
    try:
        result = await rpc(d, method, params)
    except RpcError as exc:
        return exc
    raise AssertionError(f"{method} {params} succeeded: {result}")


async def fund(d: DaemonProc, account: str, **amounts: str) -> None:
    """Create ``account`` if needed and deposit e.g. USDC="1000", ZEC="10"."""
    if account != "default" and account not in {a["name"] for a in await rpc(d, "accounts.list")}:
        await rpc(d, "accounts.create", {"name": account})
    for token, amount in amounts.items():
        await rpc(d, "ledger.deposit", {"account": account, "token": token, "amount": amount,
                                        "reference": f"fund-{account}-{token}-{amount}"})


async def balances(d: DaemonProc, account: str) -> dict[str, tuple[int, int]]:
    """{token: (available_minor, locked_minor)}."""
    return {b["token"]: (b["available_minor"], b["locked_minor"]) for b in await rpc(d, "ledger.balances",
                                                                                     {"account": account})}


async def order(d: DaemonProc, account: str, side: str, qty: str, price: str | None = None, market: str = "ZEC/USDC",
                **kw: Any) -> dict:
    params = {"account": account, "market": market, "side": side, "qty": qty,
              "type": "limit" if price is not None else "market", **kw}
    if price is not None:
        params["price"] = price
    return await rpc(d, "dex.place_order", params)


async def state_snapshot(d: DaemonProc) -> dict:
    """What must survive a restart: books, open orders, every balance (holds are the locked column)."""
    markets = [m["symbol"] for m in await rpc(d, "dex.markets")]
    books = {m: {k: v for k, v in (await rpc(d, "dex.order_book", {"market": m})).items() if k != "seq"}
             for m in markets}
    open_orders = sorted((o["id"], o["remaining_minor"], o["filled_minor"], o["status"])
                         for o in await rpc(d, "dex.orders", {"status": "open"}))
    bals = sorted((b["account"], b["token"], b["available_minor"], b["locked_minor"])
                  for b in await rpc(d, "ledger.balances"))
    return {"books": books, "open": open_orders, "balances": bals}


async def crash_after_match(d: DaemonProc) -> None:
    """Two asks (1 at 50.00, 1 at 51.00), then a taker's buy of 1.5 at 51.00 (client_order_id crash-1) on a
    daemon that exits right after the engine matched it, before its answer; the daemon is left stopped."""
    await fund(d, "maker", ZEC="10")
    await fund(d, "taker", USDC="1000")
    await order(d, "maker", "sell", "1", "50.00")
    await order(d, "maker", "sell", "1", "51.00")
    assert await trio.to_thread.run_sync(d.stop) == 0
    d.env["TACHYON_TEST_FAULT"] = "after_match"
    await trio.to_thread.run_sync(d.start)
    with pytest.raises(DaemonNotRunning):
        await order(d, "taker", "buy", "1.5", "51.00", client_order_id="crash-1")
    assert await trio.to_thread.run_sync(d.wait) == 1
    del d.env["TACHYON_TEST_FAULT"]
