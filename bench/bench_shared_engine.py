"""Orders through one tachyon-engine-server shared by 1 and by 4 real tachyond daemons.

Each daemon has CLIENTS_PER_DAEMON socket clients placing limit orders around 50.00 (about half fill, often
against another daemon's resting orders, which that daemon then settles from the feed). Reported per run:
orders/s over all daemons, p50/p99 of dex.place_order as its client saw it, and the feed lag: how long a
maker in one daemon takes to settle a fill made by a taker in another (measured after the load).

    .venv/bin/python bench/bench_shared_engine.py [--seconds 5] [--engine sqlite|memory]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w
import trio
from bench_dex import PASSWORD, make_order
from common import Daemon, emit, load, pct

TOKEN = "bench-engine-token"
CLIENTS_PER_DAEMON = 8
MARKET = {"symbol": "ZEC/USDC", "tick": "0.01", "lot": "0.0001", "min_notional": "0.1"}
LAG_MARKET = {"symbol": "LAG/USDC", "tick": "0.01", "lot": "0.0001", "min_notional": "0.1"}   # feed lag only
TOKENS = [{"symbol": "USDC", "decimals": 6}, {"symbol": "ZEC", "decimals": 8}, {"symbol": "LAG", "decimals": 8}]


class Server:
    def __init__(self, engine: str):
        self.dir = Path(tempfile.mkdtemp(prefix="tybs-", dir="/tmp"))
        server = {"listen": "127.0.0.1:0", "engine": engine}
        if engine == "sqlite":
            server["data_dir"] = str(self.dir / "data")
        (self.dir / "server.toml").write_text(
            tomli_w.dumps({"server": server, "tokens": TOKENS, "markets": [MARKET, LAG_MARKET]})
        )

    def __enter__(self) -> Server:
        self.err = open(self.dir / "stderr", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "tachyon_http_engine.server", "--config",
                                      str(self.dir / "server.toml")], stderr=self.err, stdout=subprocess.DEVNULL,
                                     env={**os.environ, "TACHYON_ENGINE_TOKEN": TOKEN})
        for _ in range(400):
            m = re.search(r"listening on (http://\S+)", (self.dir / "stderr").read_text())
            if m:
                self.url = m.group(1)
                return self
            time.sleep(0.05)
        raise RuntimeError((self.dir / "stderr").read_text())

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def daemon_config(url: str) -> dict:
    return {"tokens": TOKENS,
            "markets": [{**m, "engine": "http", "maker_fee_bps": 10, "taker_fee_bps": 20, "protection_bps": 500}
                        for m in (MARKET, LAG_MARKET)],
            "engines": {"http": {"url": url, "token_env": "TACHYON_ENGINE_TOKEN"}}}


def setup(d: Daemon, clients: int) -> None:
    d.call("wallet.create", {"password": PASSWORD})
    for cid in range(clients):
        d.call("accounts.create", {"name": f"c{cid}"})
        d.call("ledger.deposit", {"account": f"c{cid}", "token": "USDC", "amount": "100000000", "reference": f"u{cid}"})
        d.call("ledger.deposit", {"account": f"c{cid}", "token": "ZEC", "amount": "1000000", "reference": f"z{cid}"})
    d.call("ledger.deposit", {"account": "c0", "token": "LAG", "amount": "1000", "reference": "lag"})


def feed_lag_ms(maker: Daemon, taker: Daemon, samples: int = 20) -> list[float]:
    """A resting sell in ``maker`` (on a market of its own), taken by ``taker``: time until maker settles it."""
    lags = []
    for i in range(samples):
        maker.call("dex.place_order", {"account": "c0", "market": "LAG/USDC", "side": "sell", "type": "limit",
                                             "price": "10.00", "qty": "0.01"})
        t0 = time.perf_counter()
        taker.call("dex.place_order", {"account": "c0", "market": "LAG/USDC", "side": "buy", "type": "limit",
                                       "price": "10.00", "qty": "0.01"})
        deadline = time.monotonic() + 30
        while not maker.call("dex.orders", {"account": "c0", "market": "LAG/USDC", "status": "closed"})[i:]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the maker did not settle fill {i} within 30 s")
        lags.append((time.perf_counter() - t0) * 1000)
    return lags


async def load_all(sockets: list[str], seconds: float) -> list[dict]:
    results: list[dict] = []

    async def one(i: int, sock: str) -> None:
        # Daemon i's clients use ids offset by i so the daemons' order streams differ.
        results.append(await load(sock, CLIENTS_PER_DAEMON, seconds,
                                  lambda cid, n: make_order(cid, n + 7919 * i)))

    async with trio.open_nursery() as nursery:
        for i, sock in enumerate(sockets):
            nursery.start_soon(one, i, sock)
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--engine", default="sqlite", choices=("sqlite", "memory"))
    ap.add_argument("--daemons", default="1,4", help="comma-separated daemon counts, one run each")
    args = ap.parse_args()
    os.environ["TACHYON_ENGINE_TOKEN"] = TOKEN
    for n in map(int, args.daemons.split(",")):
        with Server(args.engine) as server:
            daemons = [Daemon(daemon_config(server.url)) for _ in range(n)]
            try:
                for d in daemons:
                    d.__enter__()
                    setup(d, CLIENTS_PER_DAEMON)
                results = trio.run(load_all, [d.socket for d in daemons], args.seconds)
                orders = sum(r["calls"] for r in results)
                secs = max(r["seconds"] for r in results)
                lag = feed_lag_ms(daemons[0], daemons[-1]) if n > 1 else []
                verify = [d.call("ledger.verify")["ok"] for d in daemons]
                errors: dict[str, int] = {}
                for r in results:
                    for k, v in r["errors"].items():
                        errors[k] = errors.get(k, 0) + v
                emit({"bench": "shared_engine", "server_engine": args.engine, "daemons": n,
                      "clients_per_daemon": CLIENTS_PER_DAEMON, "orders": orders, "seconds": secs,
                      "orders_per_s": round(orders / secs), "p50_ms_worst_daemon": max(r["p50_ms"] for r in results),
                      "p99_ms_worst_daemon": max(r["p99_ms"] for r in results),
                      "feed_lag_ms_p50": round(pct(lag, 50), 1) if lag else None,
                      "feed_lag_ms_p99": round(pct(lag, 99), 1) if lag else None,
                      "ledger_verify_ok": all(verify), "errors": errors})
            finally:
                for d in daemons:
                    if d.proc is not None:
                        d.__exit__(None, None, None)


if __name__ == "__main__":
    main()
