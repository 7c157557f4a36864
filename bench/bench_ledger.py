"""Ledger transfers per second through the Python API (WAL, synchronous=FULL), 1 and 32 concurrent trio tasks.

Run: .venv/bin/python bench/bench_ledger.py [--ops 2000] [--dir /path/on/the/target/disk]
Prints one JSON line per run: concurrency, ops, seconds, transfers_per_s, commits, ops_per_commit, p50/p99 latency.
With --profile, the writer thread's batches run under cProfile and the top functions (by own time, per
transfer) are printed after each run: the Python the writer spends per operation (docs/performance.md).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tachyond.amounts import Token  # noqa: E402
from tachyond.ledger.service import Ledger  # noqa: E402
from tachyond.wallet.wallet import Wallet  # noqa: E402

TOKENS = {"USDC": Token("USDC", 6)}


def time_writer(wallet: Wallet) -> list[float]:
    """Add the writer thread's CPU time (time.thread_time: not the fsync waits) of every batch to a counter;
    this does not depend on how busy the machine is, so before/after comparisons hold under load."""
    spent = [0.0]
    inner = wallet.writer._run_batch_ops

    def timed(conn, batch):
        t0 = time.thread_time()
        try:
            return inner(conn, batch)
        finally:
            spent[0] += time.thread_time() - t0

    wallet.writer._run_batch_ops = timed
    return spent


def profile_writer(wallet: Wallet) -> cProfile.Profile:
    """Run every writer batch of ``wallet`` under one cProfile (the writer is its own thread)."""
    prof = cProfile.Profile()
    inner = wallet.writer._run_batch_ops

    def profiled(conn, batch):
        prof.enable()
        try:
            return inner(conn, batch)
        finally:
            prof.disable()

    wallet.writer._run_batch_ops = profiled
    return prof


async def run(concurrency: int, ops: int, data_dir: Path, profile: bool = False) -> dict:
    wallet = Wallet(data_dir, scrypt_n=2**12)
    ledger = Ledger(wallet, TOKENS)
    async with wallet:
        await wallet.create("bench")
        await ledger.create_account("a")
        await ledger.create_account("b")
        await ledger.deposit("a", "USDC", 10**15, "seed")
        await ledger.deposit("b", "USDC", 10**15, "seed-b")
        latencies: list[float] = []
        per_task = ops // concurrency
        before = dict(wallet.stats)
        prof = profile_writer(wallet) if profile else None
        writer_cpu = time_writer(wallet)

        async def worker(w: int) -> None:
            for i in range(per_task):
                t0 = time.perf_counter()
                src, dst = ("a", "b") if i % 2 else ("b", "a")
                await ledger.transfer(src, dst, "USDC", 1 + i % 7, f"{w}-{i}")
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for w in range(concurrency):
                nursery.start_soon(worker, w)
        seconds = time.perf_counter() - start
        if prof is not None:
            del wallet.writer._run_batch_ops  # back to the class's method
            stats = pstats.Stats(prof)
            total = sum(v[2] for v in stats.stats.values())  # own time of every function, seconds
            print(f"writer thread: {total / ops * 1e6:.1f} us of profiled Python per transfer "
                  f"(cProfile inflates it); top by own time:", file=sys.stderr)
            stats.sort_stats("tottime").print_stats(18)
        commits = wallet.stats["transactions"] - before["transactions"]
        assert (await ledger.verify())["ok"]
    latencies.sort()
    done = per_task * concurrency
    return {
        "bench": "ledger.transfer",
        "concurrency": concurrency,
        "ops": done,
        "seconds": round(seconds, 3),
        "transfers_per_s": round(done / seconds, 1),
        "commits": commits,
        "ops_per_commit": round(done / commits, 2),
        "writer_cpu_us_per_op": round(writer_cpu[0] / done * 1e6, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1e3, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1e3, 3),
        "synchronous": "FULL",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000, help="transfers per run")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the wallet (default: a temp dir)")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 32])
    parser.add_argument("--profile", action="store_true", help="cProfile the writer thread")
    parser.add_argument("--quick", action="store_true", help="500 transfers per run")
    args = parser.parse_args()
    for concurrency in args.concurrency:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            ops = 500 if args.quick else args.ops
            print(json.dumps(trio.run(run, concurrency, ops, Path(tmp), args.profile)), flush=True)


if __name__ == "__main__":
    main()
