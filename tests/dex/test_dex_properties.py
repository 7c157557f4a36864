"""Differential property test: random order streams through the DEX core on each engine and a plain reference.

The DEX runs in-process on a real Daemon (config mapping, real plugins, real wallet and ledger on disk); the
reference below is the rules written as plainly as possible. Both must refuse the same orders, produce the
same fills in the same order, and leave every account with exactly what its fills imply, fees included.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tachyond.config import from_mapping
from tachyond.daemon import Daemon
from tachyond.errors import NotFound, OrderNotOpen, OrderRejected

ACCOUNTS = ["ann", "ben", "cat"]
START_USDC = 10**12          # minor units: enough that no order is refused for funds
START_ZEC = 10**12
MAKER_BPS, TAKER_BPS, PROTECTION_BPS = 13, 25, 10
# tick 0.01 USDC = 10_000 minor, lot 0.0001 ZEC = 10_000 minor; one tick x one lot = 1 USDC minor unit.
PRICES = st.integers(4995, 5005)  # in ticks: 49.95 .. 50.05 USDC, so fees round (25 bps of 5000 = 12.5)


@dataclass
class Resting:
    coid: str
    account: str
    side: str
    price: int
    qty: int


class Reference:
    """Price-time priority over one list, self-trade cancels the taker, fees rounded up per fill."""

    def __init__(self) -> None:
        self.book: list[Resting] = []
        self.fills: list[tuple[str, str, int, int]] = []   # (taker coid, maker coid, price, qty)
        self.status: dict[str, str] = {}
        self.owner: dict[str, str] = {}
        self.sides: dict[str, str] = {}

    def best(self, side: str) -> int | None:
        prices = [r.price for r in self.book if r.side == side]
        if not prices:
            return None
        return max(prices) if side == "buy" else min(prices)

    def place(self, coid, account, side, kind, qty, price, tif, post_only) -> str:
        opposite = "sell" if side == "buy" else "buy"
        best = self.best(opposite)
        if kind == "market":
            if best is None:  # nothing to trade with: accepted, expires with nothing filled
                self.owner[coid] = account
                self.status[coid] = "expired"
                return "expired"
            band = best * (10_000 + PROTECTION_BPS) if side == "buy" else best * (10_000 - PROTECTION_BPS)
            price = band // 10_000 if side == "buy" else -(-band // 10_000)
        def crossing(r: Any) -> bool:
            return r.side == opposite and (r.price <= price if side == "buy" else r.price >= price)

        if post_only and best is not None and any(crossing(r) for r in self.book):
            return "refused"
        self.owner[coid] = account
        makers = sorted((r for r in self.book if crossing(r)), key=lambda r: r.price if side == "buy" else -r.price)
        if tif == "fok":
            fillable = 0
            for m in makers:
                if m.account == account:
                    break
                fillable += m.qty
            if fillable < qty:
                self.status[coid] = "expired"
                return "expired"
        remaining = qty
        for m in makers:
            if remaining == 0:
                break
            if m.account == account:
                self.status[coid] = "canceled"
                return "canceled"
            n = min(remaining, m.qty)
            self.fills.append((coid, m.coid, m.price, n))
            m.qty -= n
            remaining -= n
            if m.qty == 0:
                self.book.remove(m)
                self.status[m.coid] = "closed"
        if remaining == 0:
            status = "closed"
        elif tif == "gtc":
            self.book.append(Resting(coid, account, side, price, remaining))
            status = "open"
        else:
            status = "expired"
        self.status[coid] = status
        return status

    def cancel(self, coid: str) -> str:
        for r in self.book:
            if r.coid == coid:
                self.book.remove(r)
                self.status[coid] = "canceled"
                return "canceled"
        return "not open"

    def expected_balances(self) -> dict[tuple[str, str], int]:
        bal = {(a, t): START_USDC if t == "USDC" else START_ZEC for a in ACCOUNTS for t in ("USDC", "ZEC")}
        for taker, maker, price, qty in self.fills:
            notional = price * qty  # minor units: one tick x one lot is one USDC minor unit
            taker_fee = -(-notional * TAKER_BPS // 10_000)
            maker_fee = -(-notional * MAKER_BPS // 10_000)
            buyer, seller = (taker, maker) if self.sides[taker] == "buy" else (maker, taker)
            buyer_fee, seller_fee = (taker_fee, maker_fee) if buyer == taker else (maker_fee, taker_fee)
            bal[(self.owner[buyer], "USDC")] -= notional + buyer_fee
            bal[(self.owner[buyer], "ZEC")] += qty * 10_000
            bal[(self.owner[seller], "USDC")] += notional - seller_fee
            bal[(self.owner[seller], "ZEC")] -= qty * 10_000
        return bal


place_op = st.tuples(st.just("place"), st.sampled_from(ACCOUNTS), st.sampled_from(["buy", "sell"]),
                     st.sampled_from(["limit", "limit", "limit", "market"]), st.integers(1, 5), PRICES,
                     st.sampled_from(["gtc", "gtc", "ioc", "fok"]), st.booleans())
cancel_op = st.tuples(st.just("cancel"), st.integers(0, 30))
streams = st.lists(st.one_of(place_op, place_op, place_op, cancel_op), min_size=1, max_size=20)


def _document(dir_: Path, engine: str) -> dict:
    return {"daemon": {"data_dir": str(dir_ / "data"), "socket": str(dir_ / "rpc.sock"), "log_level": "warning"},
            "tokens": [{"symbol": "USDC", "decimals": 6}, {"symbol": "ZEC", "decimals": 8}],
            "markets": [{"symbol": "ZEC/USDC", "engine": engine, "tick": "0.01", "lot": "0.0001",
                         "min_notional": "0.001", "maker_fee_bps": MAKER_BPS, "taker_fee_bps": TAKER_BPS,
                         "protection_bps": PROTECTION_BPS}]}


async def _run(engine: str, ops: list, dir_: Path) -> dict:
    """Drive a real Daemon's DexService through the stream; return outcomes, fills and final balances."""
    daemon = Daemon(from_mapping(_document(dir_, engine)))
    daemon.load_plugins()
    daemon.wallet.scrypt_n = 2**10
    dex, ledger = daemon.dex, daemon.ledger
    outcomes, fills, coid_of = [], [], {}
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.wallet.serve)
        await nursery.start(dex.serve)
        await daemon.wallet.create("pw")
        await dex.on_unlocked()
        for account in ACCOUNTS:
            await ledger.create_account(account)
            for token, amount in (("USDC", START_USDC), ("ZEC", START_ZEC)):
                await ledger.deposit(account, token, amount, f"{account}-{token}")
        for i, op in enumerate(ops):
            if op[0] == "place":
                _, account, side, kind, qty, price, tif, post_only = op
                tif = "ioc" if kind == "market" and tif == "gtc" else tif
                try:
                    o = await dex.place_order("ZEC/USDC", side, kind, f"{qty / 10_000:.4f}",
                                              None if kind == "market" else f"{price / 100:.2f}", tif,
                                              post_only and kind == "limit", f"c{i}", account)
                except OrderRejected:
                    outcomes.append("refused")
                    continue
                coid_of[o["id"]] = f"c{i}"
                outcomes.append(o["status"])
                fills += [(f"c{i}", coid_of[t["maker_order_id"]], t["price_minor"] // 10_000, t["qty_minor"] // 10_000)
                          for t in o["trades"]]
            else:
                try:
                    o = await dex.cancel_order(client_order_id=f"c{op[1]}", account=_owner(ops, op[1]))
                    outcomes.append(o["status"])
                except (OrderNotOpen, NotFound):  # finished, refused or not placed yet
                    outcomes.append("not open")
        for o in await dex.orders(None, None, "open"):
            await dex.cancel_order(o["id"])
        verify = await ledger.verify()
        final = {(b["account"], b["token"]): (b["available_minor"], b["locked_minor"])
                 for b in await ledger.balances()}
        await dex.aclose()
        nursery.cancel_scope.cancel()
    return {"outcomes": outcomes, "fills": fills, "verify": verify, "balances": final}


def _owner(ops: list, index: int) -> str:
    return ops[index][1] if index < len(ops) and ops[index][0] == "place" else "ann"


def _reference(ops: list) -> tuple[list, Reference]:
    ref = Reference()
    outcomes = []
    for i, op in enumerate(ops):
        if op[0] == "place":
            _, account, side, kind, qty, price, tif, post_only = op
            tif = "ioc" if kind == "market" and tif == "gtc" else tif
            ref.sides[f"c{i}"] = side
            outcomes.append(ref.place(f"c{i}", account, side, kind, qty, price, tif, post_only and kind == "limit"))
        else:
            target = op[1]
            is_order = target < i and ops[target][0] == "place"
            outcomes.append(ref.cancel(f"c{target}") if is_order else "not open")
    return outcomes, ref


@settings(max_examples=30, deadline=None)
@given(ops=streams)
def test_engines_and_reference_agree_on_fills_and_balances(ops):
    want_outcomes, ref = _reference(ops)
    expected = ref.expected_balances()
    for engine in ("memory", "sqlite"):
        with tempfile.TemporaryDirectory(prefix="tydp-") as tmp:
            got = trio.run(_run, engine, ops, Path(tmp))
        assert got["outcomes"] == want_outcomes, engine
        assert got["fills"] == ref.fills, engine
        assert got["verify"]["ok"], got["verify"]["problems"]
        for account in ACCOUNTS:
            for token in ("USDC", "ZEC"):
                assert got["balances"][(account, token)] == (expected[(account, token)], 0), (engine, account, token)
