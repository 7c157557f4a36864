"""Durable ledger transfers through the real socket (synchronous=FULL, group commit), 1 and 32 clients."""

from __future__ import annotations

import argparse

import trio
from common import PIPELINE_DEPTH, Daemon, emit, load, load_native

TOKENS = [{"symbol": "USDC", "decimals": 6, "networks": ["ethereum"]}]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--pipeline", type=int, default=1, help="requests in flight per client")
    args = ap.parse_args()
    seconds = 1.5 if args.quick else args.seconds
    with Daemon({"tokens": TOKENS}, password="bench-password") as d:
        if d.call("daemon.info")["wallet"] == "absent":
            d.call("wallet.create", {"password": "bench-password"})
        accounts = [f"a{i}" for i in range(64)]
        d.batch([("accounts.create", {"name": a}) for a in accounts])
        d.batch([("ledger.deposit", {"account": a, "token": "USDC", "amount": "1000000", "reference": f"seed-{a}"})
                 for a in accounts])

        def transfer(cid: int, n: int) -> dict:
            # Each client moves between its own pair of accounts, so no transfer is refused for funds.
            return {
                "method": "ledger.transfer",
                "params": {
                    "from": accounts[(2 * cid) % 64],
                    "to": accounts[(2 * cid + 1) % 64],
                    "token": "USDC",
                    "amount": "0.01",
                },
            }

        for clients in (1, 32):
            r = trio.run(load, d.socket, clients, seconds, transfer, args.pipeline)
            emit({"bench": "ledger_transfer_rpc", "pipeline": args.pipeline, "synchronous": "FULL",
                  "load_generator": "python (trio)", **r})
            native = load_native(d.socket, clients, (100 if args.quick else 600) * (4 if clients == 1 else 1), transfer)
            if native is not None:
                emit({"bench": "ledger_transfer_rpc", "synchronous": "FULL", **native})
        native = load_native(d.socket, 32, (25 if args.quick else 100) * PIPELINE_DEPTH, transfer, PIPELINE_DEPTH)
        if native is not None:
            emit({"bench": "ledger_transfer_rpc", "synchronous": "FULL", **native})
        verify = d.call("ledger.verify")
        emit(
            {"bench": "ledger_verify", "after": "ledger_transfer_rpc", "ok": verify["ok"], "entries": verify["entries"]}
        )
        assert verify["ok"], verify["problems"]


if __name__ == "__main__":
    main()
