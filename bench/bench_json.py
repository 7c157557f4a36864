"""JSON codecs on the daemon's real messages: the standard library against orjson and msgspec (when installed).

Messages: a JSON-RPC request line (ledger.transfer, dex.place_order), the answers the daemon writes
(daemon.info, a ledger entry, an order), and the sealed row bodies the writer encodes (a journal entry body,
a balance row). For each: decode (bytes -> objects) and encode (objects -> compact bytes), best of 5,
microseconds per message. tachyond.jsonx picks orjson when its wheel is installed; this is why.
Usage: python bench/bench_json.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import emit  # noqa: E402

MESSAGES = {
    "rpc_request_transfer": {
        "jsonrpc": "2.0",
        "id": 17,
        "method": "ledger.transfer",
        "params": {"from": "a12", "to": "a13", "token": "USDC", "amount": "0.01"},
    },
    "rpc_request_order": {
        "jsonrpc": "2.0",
        "id": 4711,
        "method": "dex.place_order",
        "params": {
            "account": "c7",
            "market": "ZEC/USDC",
            "side": "buy",
            "type": "limit",
            "price": "50.03",
            "qty": "0.01",
        },
    },
    "rpc_answer_info": {
        "jsonrpc": "2.0",
        "id": 3,
        "result": {
            "version": "0.2.0",
            "pid": 12345,
            "uptime_s": 12.5,
            "wallet": "unlocked",
            "socket": "/run/tachyond/rpc.sock",
            "http": ["http://127.0.0.1:8787"],
            "plugins": ["memory_engine", "sqlite_engine", "stripe"],
        },
    },
    "rpc_answer_entry": {
        "jsonrpc": "2.0",
        "id": 18,
        "result": {
            "id": 90211,
            "key": "transfer:9f3c0a1b2c3d4e5f60718293",
            "kind": "transfer",
            "ts": 1764659123.123456,
            "postings": [
                {
                    "account": "a12",
                    "token": "USDC",
                    "bucket": "available",
                    "amount": "-0.01",
                    "amount_minor": -10000,
                    "hold": None,
                },
                {
                    "account": "a13",
                    "token": "USDC",
                    "bucket": "available",
                    "amount": "0.01",
                    "amount_minor": 10000,
                    "hold": None,
                },
            ],
            "memo": None,
            "links": None,
            "repeated": False,
        },
    },
    "rpc_answer_order": {
        "jsonrpc": "2.0",
        "id": 4711,
        "result": {
            "id": "o_5f0e2a9c1b7d3e4f",
            "client_order_id": None,
            "account": "c7",
            "market": "ZEC/USDC",
            "side": "buy",
            "type": "limit",
            "price": "50.03",
            "qty": "0.01",
            "filled": "0.01",
            "remaining": "0",
            "status": "filled",
            "post_only": False,
            "tif": "gtc",
            "created_at": 1764659123.123456,
            "updated_at": 1764659123.125001,
            "fees": "0.001",
            "avg_price": "50.01",
        },
    },
    "sealed_journal_body": {
        "key": "dex:fill:o_5f0e2a9c1b7d3e4f:17",
        "kind": "dex.fill",
        "ts": 1764659123.123456,
        "postings": [
            ["c7", "USDC", "locked", -500100, "hold:o_5f0e2a9c1b7d3e4f"],
            ["c8", "USDC", "available", 499600, None],
            ["fees", "USDC", "available", 500, None],
            ["c8", "ZEC", "locked", -1000000, "hold:o_1a2b3c4d5e6f7081"],
            ["c7", "ZEC", "available", 1000000, None],
        ],
        "memo": None,
        "links": ["o_5f0e2a9c1b7d3e4f", "o_1a2b3c4d5e6f7081"],
    },
    "sealed_balance_row": ["a12", "USDC", 999999990000, 0],
}


def codecs() -> dict:
    from tachyond.jsonx import stdlib_dumps

    out = {"stdlib": (json.loads, stdlib_dumps)}
    try:
        import orjson

        out["orjson " + orjson.__version__] = (orjson.loads, orjson.dumps)
    except ImportError:
        pass
    try:
        import msgspec

        enc, dec = msgspec.json.Encoder(), msgspec.json.Decoder()
        out["msgspec " + msgspec.__version__] = (dec.decode, enc.encode)
    except ImportError:
        pass
    return out


def best_us(fn, arg, number: int) -> float:
    return min(timeit.repeat(lambda: fn(arg), number=number, repeat=5)) / number * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    number = 2000 if args.quick else 20000
    table = codecs()
    for name, msg in MESSAGES.items():
        raw = json.dumps(msg, separators=(",", ":")).encode()
        row = {"bench": "json_codecs", "message": name, "bytes": len(raw)}
        for codec, (loads, dumps) in table.items():
            assert loads(dumps(msg)) == msg, codec
            row[codec] = {"decode_us": round(best_us(loads, raw, number), 3),
                          "encode_us": round(best_us(dumps, msg, number), 3)}
        emit(row)


if __name__ == "__main__":
    main()
