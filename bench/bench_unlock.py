"""Wallet unlock time per scrypt cost (r=8, p=1): what a password guess costs an attacker, and an unlock the owner.

Run: .venv/bin/python bench/bench_unlock.py [--repeat 3]
Prints one JSON line per N: n, memory_mib, unlock_s (median of --repeat unlocks of a real wallet file).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tachyond.wallet.wallet import Wallet  # noqa: E402

PASSWORD = "correct horse battery staple"


async def run(n: int, repeat: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        async with Wallet(Path(tmp), scrypt_n=n) as wallet:
            await wallet.create(PASSWORD)
            times = []
            for _ in range(repeat):
                await wallet.lock()
                start = time.perf_counter()
                await wallet.unlock(PASSWORD)
                times.append(time.perf_counter() - start)
    return {"n": n, "memory_mib": 128 * n * 8 // 2**20, "unlock_s": round(statistics.median(times), 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for n in (2**15, 2**16, 2**17, 2**18):
        print(json.dumps(trio.run(run, n, args.repeat)), flush=True)


if __name__ == "__main__":
    main()
