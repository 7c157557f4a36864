"""`make bench`: every benchmark in turn; results print as JSON lines and append to bench/results/.

At the end, the ratios of issue 14 from this run's own numbers: each measured rate beside its baseline
(the daemon's `daemon.info`, or the bare server of bench_ceiling.py) measured in the same run, all with the
native load generator and 32 connections (one call in flight each; the pipelined rows keep PIPELINE_DEPTH in
flight). The ratios also go to bench/results/ratios.jsonl.
Usage: python bench/run_all.py [--quick] [--only bench_a.py,bench_b.py]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# (name, what, baseline, target ratio, target p99 ms); what/baseline select rows: (bench, {field: value})
NATIVE = "native (bench/loadgen.c)"
HTTP = "native HTTP (bench/loadgen.c)"
INFO = ("rpc_daemon_info", {"clients": 32, "pipeline": 1, "load_generator": NATIVE})
INFO_PIPE = ("rpc_daemon_info", {"clients": 32, "pipeline": "depth", "load_generator": NATIVE})
RATIOS = [
    ("durable orders, SQLite engine / daemon.info",
     ("dex_orders", {"engine": "sqlite", "mode": "concurrent", "load_generator": NATIVE}), INFO, 0.5, 20),
    ("durable orders, memory engine / daemon.info",
     ("dex_orders", {"engine": "memory", "mode": "concurrent", "load_generator": NATIVE}), INFO, 0.5, 20),
    ("ledger transfers / daemon.info",
     ("ledger_transfer_rpc", {"clients": 32, "pipeline": 1, "load_generator": NATIVE}), INFO, 0.6, 20),
    ("verified durable webhooks over HTTP / bare hypercorn trio worker",
     ("webhooks_durable_native", {}), ("ceiling_hypercorn", {"worker": "trio", "load_generator": HTTP}), 0.8, None),
    ("daemon.info / bare trio JSON-RPC server",
     INFO, ("ceiling_trio_jsonrpc", {"clients": 32, "pipeline": 1}), 0.7, None),
    # Pipelined (information: the targets are for one call in flight per connection)
    ("pipelined: durable orders, SQLite engine / daemon.info",
     ("dex_orders", {"engine": "sqlite", "mode": "pipelined"}), INFO_PIPE, None, None),
    ("pipelined: durable orders, memory engine / daemon.info",
     ("dex_orders", {"engine": "memory", "mode": "pipelined"}), INFO_PIPE, None, None),
    ("pipelined: ledger transfers / daemon.info",
     ("ledger_transfer_rpc", {"clients": 32, "pipeline": "depth", "load_generator": NATIVE}), INFO_PIPE, None, None),
    ("pipelined: daemon.info / bare trio JSON-RPC server",
     INFO_PIPE, ("ceiling_trio_jsonrpc", {"clients": 32, "pipeline": "depth"}), None, None),
]


def rate(row: dict) -> float:
    for key in ("events_per_s", "orders_per_s", "requests_per_s", "calls_per_s"):
        if key in row:
            return float(row[key])
    raise KeyError("no rate in " + json.dumps(row)[:200])


def find(rows: list[dict], sel: tuple[str, dict]) -> dict | None:
    from common import PIPELINE_DEPTH

    bench, fields = sel
    fields = {k: (PIPELINE_DEPTH if v == "depth" else v) for k, v in fields.items()}
    hits = [r for r in rows if r.get("bench") == bench and "skipped" not in r
            and all(r.get(k) == v for k, v in fields.items())]
    return hits[-1] if hits else None


def summarize(rows: list[dict]) -> list[dict]:
    from common import emit

    out = []
    print("\n== ratios (this run; native load generator, 32 connections)")
    print(f"{'ratio':<66} {'measured/s':>11} {'baseline/s':>11} {'ratio':>6} {'target':>7} {'p99 ms':>8}  met?")
    for name, what, base, target, p99_target in RATIOS:
        a, b = find(rows, what), find(rows, base)
        if a is None or b is None:
            print(f"{name:<66} {'(not measured in this run)':>30}")
            continue
        ratio = rate(a) / rate(b)
        p99 = a.get("p99_ms")
        met = None
        if target is not None:
            met = ratio >= target and (p99_target is None or (p99 is not None and p99 <= p99_target))
        tgt = "" if target is None else f">={target}" + (f", p99<={p99_target}" if p99_target else "")
        print(
            f"{name:<66} {rate(a):>11,.0f} {rate(b):>11,.0f} {ratio:>6.2f} {tgt:>7} {p99 if p99 is not None else '-':>8}"  # noqa: E501 (one line on purpose)
            f"  {'' if met is None else ('yes' if met else 'NO')}"
        )
        row = {"bench": "ratios", "ratio": name, "measured_per_s": round(rate(a)), "baseline_per_s": round(rate(b)),
               "value": round(ratio, 3), "target": target, "p99_ms": p99, "target_p99_ms": p99_target, "met": met}
        out.append(row)
    for row in out:
        with open(HERE / "results" / "ratios.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
    verifies = [r for r in rows if "ledger_verify_ok" in r or r.get("bench") == "ledger_verify"]
    bad = [r for r in verifies if not r.get("ledger_verify_ok", r.get("ok"))]
    print(f"ledger.verify after the runs: {len(verifies) - len(bad)} ok, {len(bad)} failed")
    emit({"bench": "ratios_summary", "ratios": {r["ratio"]: r["value"] for r in out},
          "ledger_verify_runs": len(verifies), "ledger_verify_failed": len(bad)})
    return out


def main() -> None:
    quick = ["--quick"] if "--quick" in sys.argv else []
    only = None
    if "--only" in sys.argv:
        only = set(sys.argv[sys.argv.index("--only") + 1].split(","))
    failed, rows = [], []
    for script in sorted(HERE.glob("bench_*.py")):
        if only is not None and script.name not in only:
            continue
        print(f"== {script.name}", flush=True)
        proc = subprocess.Popen([sys.executable, str(script), *quick], cwd=HERE, stdout=subprocess.PIPE, text=True)
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass
        if proc.wait() != 0:
            failed.append(script.name)
    summarize(rows)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
