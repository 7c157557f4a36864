"""End-to-end DEX orders through the real socket: durable (settled, fsynced) orders/s with 32 clients, and
sequential p50/p99, on each engine. Each order is recorded with its hold, matched and settled before it is answered.

Targets: >= 10,000 orders/s with 32 clients, p99 <= 20 ms. Results are printed as JSON lines (common.emit).

Engines (``--engines``): ``memory`` and ``sqlite`` (its default, ``in_wallet = true``; also named
``sqlite-in-wallet``, which sets it explicitly) match inside the wallet's write transaction, one commit per order;
``sqlite-file`` (``in_wallet = false``: its own file) takes the two-step path. Each row says
``commits_per_order`` (the daemon's tachyon_dex_wallet_commits over the orders of the run).
"""

from __future__ import annotations

import argparse
import random
import sys

import trio
from common import PIPELINE_DEPTH, Daemon, emit, load, load_native

PASSWORD = "bench password"
CLIENTS = 32


def config(variant: str) -> dict:
    engine = "sqlite" if variant in ("sqlite-in-wallet", "sqlite-file") else variant
    doc: dict = {"tokens": [{"symbol": "USDC", "decimals": 6}, {"symbol": "ZEC", "decimals": 8}],
                 "markets": [{"symbol": "ZEC/USDC", "engine": engine, "tick": "0.01", "lot": "0.0001",
                              "min_notional": "0.1", "maker_fee_bps": 10, "taker_fee_bps": 20, "protection_bps": 500}]}
    if variant in ("sqlite-in-wallet", "sqlite-file"):   # "sqlite" alone: the default (a tree before the key too)
        doc["engines"] = {"sqlite": {"in_wallet": variant == "sqlite-in-wallet"}}
    return doc


def commits(d: Daemon) -> int | None:
    """The daemon's count of committed wallet transactions (tachyon_dex_wallet_commits on /metrics); None for a
    daemon without that metric (an older tree, run through PYTHONPATH for a before/after comparison)."""
    import re
    import urllib.request

    base = d.call("daemon.info")["http"][0]
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        found = re.findall(r"^tachyon_dex_wallet_commits (\S+)$", r.read().decode(), re.M)
    return int(float(found[0])) if found else None


def per_order(d: Daemon, before: int | None, orders: int) -> float | None:
    after = commits(d)
    return None if before is None or after is None else round((after - before) / max(1, orders), 3)


def make_order(cid: int, n: int) -> dict:
    """Client cid trades from its own account; buys and sells around 50.00 so about half the orders fill."""
    rnd = random.Random(cid * 1_000_003 + n)
    side = "buy" if (cid + n) % 2 else "sell"
    price_ticks = 5000 + rnd.randint(-5, 5)
    return {"method": "dex.place_order",
            "params": {"account": f"c{cid}", "market": "ZEC/USDC", "side": side, "type": "limit",
                       "price": f"{price_ticks / 100:.2f}", "qty": "0.01"}}


def setup(d: Daemon, clients: int) -> None:
    d.call("wallet.create", {"password": PASSWORD})
    d.call("wallet.unlock", {"password": PASSWORD})
    d.batch([("accounts.create", {"name": f"c{cid}"}) for cid in range(clients)])
    d.batch([("ledger.deposit", {"account": f"c{cid}", "token": token, "amount": amount, "reference": f"{ref}{cid}"})
             for cid in range(clients) for token, amount, ref in (("USDC", "100000000", "u"), ("ZEC", "1000000", "z"))])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--engines", default="sqlite,sqlite-file,memory")
    args = ap.parse_args()
    seconds = 1.5 if args.quick else args.seconds
    for engine in args.engines.split(","):
        with Daemon(config(engine)) as d:
            setup(d, CLIENTS)
            for clients in (1, CLIENTS):
                c0 = commits(d)
                r = trio.run(load, d.socket, clients, seconds, make_order)
                cpo = per_order(d, c0, r["calls"])
                trades = len(d.call("dex.trades", {"limit": 1000}))
                verify = d.call("ledger.verify")
                emit({"bench": "dex_orders", "engine": engine, "mode": "sequential" if clients == 1 else "concurrent",
                      **r, "orders_per_s": r["calls_per_s"], "commits_per_order": cpo,
                      "trades_seen_capped_1000": trades, "ledger_verify_ok": verify["ok"],
                      "ledger_entries": verify["entries"], "load_generator": "python (trio)"})
                c0 = commits(d)
                native = load_native(d.socket, clients, (40 if args.quick else 200) * (8 if clients == 1 else 1),
                                     lambda cid, n: make_order(cid, n + 1_000_000))
                if native is not None:
                    cpo = per_order(d, c0, native["calls"])
                    verify = d.call("ledger.verify")
                    emit({"bench": "dex_orders", "engine": engine,
                          "mode": "sequential" if clients == 1 else "concurrent", **native,
                          "orders_per_s": native["calls_per_s"], "commits_per_order": cpo,
                          "ledger_verify_ok": verify["ok"], "ledger_entries": verify["entries"]})
            c0 = commits(d)
            native = load_native(d.socket, CLIENTS, (10 if args.quick else 50) * PIPELINE_DEPTH,
                                 lambda cid, n: make_order(cid, n + 2_000_000), PIPELINE_DEPTH)
            if native is not None:
                cpo = per_order(d, c0, native["calls"])
                verify = d.call("ledger.verify")
                emit({"bench": "dex_orders", "engine": engine, "mode": "pipelined", **native,
                      "orders_per_s": native["calls_per_s"], "commits_per_order": cpo,
                      "ledger_verify_ok": verify["ok"],
                      "ledger_entries": verify["entries"]})
            if not verify["ok"]:
                sys.exit(f"ledger.verify failed after the {engine} run: {verify['problems'][:5]}")


if __name__ == "__main__":
    main()
