"""Engine-only throughput of the memory and SQLite engines on a mixed order flow; prints JSON lines.

The mix keeps about 1,000 orders resting on one market: ~48% passive limit orders near the spread, ~40%
cancels of resting orders, ~12% marketable orders (GTC, IOC, FOK, some far-away "market" limits) from 20
owners, so self-trade prevention fires too. The stream is generated (untimed) by running it through the
matching core once; each timed run replays it on a fresh engine. Usage:

    python bench/bench_engines.py [--quick] [--ops N] [--sqlite-ops N] [--seed S]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

import trio  # noqa: E402
from tachyon_memory_engine import MemoryEngine  # noqa: E402
from tachyon_sqlite_engine import SqliteEngine  # noqa: E402

from tachyond.engine import EngineContext, EngineOrder, MarketSpec  # noqa: E402
from tachyond.matching import Matcher  # noqa: E402
from tachyond.wallet.crypto import Cipher  # noqa: E402

MARKET = MarketSpec("ZEC/USDC", "ZEC", "USDC", "0.01", "0.001")
MID_TICKS = 100_000
RESTING_TARGET = 1_000
OWNERS = [f"acct-{i}" for i in range(20)]
MIX = {"passive": 0.48, "cancel": 0.40, "marketable": 0.12, "resting_target": RESTING_TARGET, "owners": len(OWNERS)}

Op = tuple  # ("submit", EngineOrder) | ("cancel", market, order_id)


def make_ops(n_ops: int, seed: int) -> tuple[list[Op], list[Op]]:
    """(warm-up ops that build the resting book, the timed mix), generated against a live matching core."""
    rng = random.Random(seed)
    matcher = Matcher()
    book = matcher.add_market(MARKET.symbol)
    resting_ids: list[str] = []
    counter = 0

    def passive() -> Op:
        nonlocal counter
        counter += 1
        side = rng.choice(("buy", "sell"))
        offset = 1 + int(rng.expovariate(1 / 15))
        price = MID_TICKS - offset if side == "buy" else MID_TICKS + offset
        return ("submit", EngineOrder(f"o{counter}", MARKET.symbol, rng.choice(OWNERS), side, price,
                                      rng.randint(1, 50), "gtc", rng.random() < 0.1))

    def marketable() -> Op:
        nonlocal counter
        counter += 1
        side = rng.choice(("buy", "sell"))
        far = rng.random() < 0.2  # a market order: an IOC/FOK limit at the protection price
        offset = 5_000 if far else rng.randint(0, 8)
        price = MID_TICKS + offset if side == "buy" else MID_TICKS - offset
        tif = rng.choice(("ioc", "fok")) if far else rng.choice(("gtc", "ioc", "fok"))
        return ("submit", EngineOrder(f"o{counter}", MARKET.symbol, rng.choice(OWNERS), side, price,
                                      rng.randint(1, 120), tif))

    def cancel() -> Op:
        while resting_ids:
            i = rng.randrange(len(resting_ids))
            resting_ids[i], resting_ids[-1] = resting_ids[-1], resting_ids[i]
            order_id = resting_ids.pop()
            if order_id in book:
                return ("cancel", MARKET.symbol, order_id)
        return passive()

    def run(op: Op) -> None:
        if op[0] == "submit":
            events = matcher.submit(op[1])
            if events[-1].kind == "rested":
                resting_ids.append(op[1].order_id)
        else:
            matcher.cancel(op[1], op[2])

    warmup: list[Op] = []
    while len(book) < RESTING_TARGET:
        warmup.append(passive())
        run(warmup[-1])
    timed: list[Op] = []
    for _ in range(n_ops):
        r = rng.random()
        if len(book) < RESTING_TARGET * 0.9:
            op = passive()
        elif len(book) > RESTING_TARGET * 1.1 or r < MIX["cancel"]:
            op = cancel()
        elif r < MIX["cancel"] + MIX["marketable"]:
            op = marketable()
        else:
            op = passive()
        timed.append(op)
        run(op)
    return warmup, timed


def replay_sync(matcher: Matcher, ops: list[Op]) -> tuple[float, float, int]:
    """Time the core with a plain loop; returns (wall seconds, CPU seconds, events)."""
    submit, cancel = matcher.submit, matcher.cancel
    n_events = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for op in ops:
        if op[0] == "submit":
            n_events += len(submit(op[1]))
        else:
            n_events += len(cancel(op[1], op[2]))
    return time.perf_counter() - t0, time.process_time() - c0, n_events


async def replay_async(engine, ops: list[Op]) -> tuple[float, float]:
    """Time an engine's async API, one call after another; returns (wall seconds, CPU seconds)."""
    t0, c0 = time.perf_counter(), time.process_time()
    for op in ops:
        if op[0] == "submit":
            await engine.submit(op[1])
        else:
            await engine.cancel(op[1], op[2])
    return time.perf_counter() - t0, time.process_time() - c0


async def replay_concurrent(engine, ops: list[Op], tasks: int) -> float:
    """Ops split round-robin over ``tasks`` tasks, so a durable engine can commit them in groups."""
    async def worker(chunk: list[Op]) -> None:
        for op in chunk:
            if op[0] == "submit":
                await engine.submit(op[1])
            else:
                await engine.cancel(op[1], op[2])

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(tasks):
            nursery.start_soon(worker, ops[i::tasks])
    return time.perf_counter() - t0


def mix_stats(warmup: list[Op], ops: list[Op]) -> dict:
    matcher = Matcher()
    book = matcher.add_market(MARKET.symbol)
    for op in warmup:
        matcher.submit(op[1])
    stats = {"submits": 0, "cancels": 0, "submits_trading": 0, "fills": 0, "events": 0}
    for op in ops:
        if op[0] == "submit":
            events = matcher.submit(op[1])
            stats["submits"] += 1
            fills = sum(1 for e in events if e.kind == "fill")
            stats["fills"] += fills
            stats["submits_trading"] += bool(fills)
        else:
            events = matcher.cancel(op[1], op[2])
            stats["cancels"] += 1
        stats["events"] += len(events)
    stats["trading_share"] = round(stats["submits_trading"] / max(1, stats["submits"]), 3)
    stats["resting_at_end"] = len(book)
    return stats


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


async def bench_memory(warmup: list[Op], ops: list[Op], repeat: int) -> None:
    sync_runs, async_runs = [], []
    n_events = 0
    for _ in range(repeat):
        matcher = Matcher()
        matcher.add_market(MARKET.symbol)
        replay_sync(matcher, warmup)
        wall_s, cpu_s, n_events = replay_sync(matcher, ops)
        sync_runs.append((wall_s, cpu_s))
        engine = MemoryEngine(EngineContext("memory", Path(tempfile.gettempdir()), None))
        await engine.start([MARKET])
        await replay_async(engine, warmup)
        async_runs.append(await replay_async(engine, ops))
        await engine.aclose()
    for name, engine_name, runs in (("core_sync_loop", "tachyond.matching.Matcher", sync_runs),
                                    ("engine_async", "memory", async_runs)):
        wall_s = min(r[0] for r in runs)
        cpu_s = min(r[1] for r in runs)
        emit(bench=name, engine=engine_name, ops=len(ops), events=n_events, best_of=repeat,
             seconds=round(wall_s, 4), ops_per_s=round(len(ops) / wall_s), ops_per_cpu_s=round(len(ops) / cpu_s))


async def bench_sqlite(warmup: list[Op], ops: list[Op], tasks: int) -> None:
    for mode, n_tasks in (("sequential", 1), ("concurrent", tasks)):
        with tempfile.TemporaryDirectory() as tmp:
            ctx = EngineContext("sqlite", Path(tmp), Cipher(os.urandom(32)), {"in_wallet": False})  # alone: its file
            engine = SqliteEngine(ctx)
            await engine.start([MARKET])
            await replay_concurrent(engine, warmup, 50)
            seconds = await replay_concurrent(engine, ops, n_tasks)
            last = await engine.last_seq()
            await engine.aclose()
            db_bytes = sum(p.stat().st_size for p in Path(tmp).iterdir())
        emit(bench="engine_async", engine="sqlite", mode=mode, tasks=n_tasks, ops=len(ops),
             seconds=round(seconds, 4), ops_per_s=round(len(ops) / seconds), last_seq=last, db_bytes=db_bytes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (seconds), for CI smoke checks")
    parser.add_argument("--ops", type=int, help="memory-engine ops per run (default 200000, quick 20000)")
    parser.add_argument("--sqlite-ops", type=int, help="SQLite-engine ops per mode (default 3000, quick 300)")
    parser.add_argument("--tasks", type=int, default=64, help="concurrent submitters for the SQLite group-commit run")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    n_ops = args.ops or (20_000 if args.quick else 200_000)
    n_sqlite = args.sqlite_ops or (300 if args.quick else 3_000)
    warmup, ops = make_ops(n_ops, args.seed)
    # The generated stream (hundreds of thousands of EngineOrder objects) is the load generator's data, not
    # the engine's: freeze it so the garbage collector's full passes do not walk it on every timed run.
    gc.collect()
    gc.freeze()
    emit(bench="mix", python=sys.version.split()[0], **MIX, warmup_ops=len(warmup), **mix_stats(warmup, ops))
    trio.run(bench_memory, warmup, ops, 1 if args.quick else 5)
    trio.run(bench_sqlite, warmup, ops[:n_sqlite], args.tasks)


if __name__ == "__main__":
    main()
