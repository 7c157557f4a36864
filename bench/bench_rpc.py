"""RPC round trips (daemon.info) through the real socket with 1 and 32 clients; tachyon-ctl start-up time."""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time

import trio
from common import PIPELINE_DEPTH, Daemon, emit, load_native


def ctl_startup(socket_path: str, runs: int) -> dict:
    """Wall time of a whole `tachyon-ctl status`, and the import time of tachyon_ctl.cli (-X importtime)."""
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "tachyon_ctl", "--socket", socket_path, "status"], check=True, capture_output=True
        )
        walls.append((time.perf_counter() - t0) * 1000)
    empty = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        empty.append((time.perf_counter() - t0) * 1000)
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import tachyon_ctl.cli"], capture_output=True, text=True
    )
    m = re.search(r"\|\s*(\d+) \| tachyon_ctl\.cli$", r.stderr, re.M)
    return {"bench": "ctl_startup", "runs": runs, "status_wall_ms_median": round(statistics.median(walls), 1),
            "bare_python_ms_median": round(statistics.median(empty), 1),
            "import_tachyon_ctl_cli_cumulative_us": int(m.group(1)) if m else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    seconds = 1.5 if args.quick else args.seconds
    with Daemon() as d:
        for clients in (1, 32):
            r = trio.run(
                lambda clients=clients: __import__("common").load(
                    d.socket, clients, seconds, lambda c, n: {"method": "daemon.info"}
                )
            )
            emit({"bench": "rpc_daemon_info", "load_generator": "python (trio)", **r})
            native = load_native(d.socket, clients, 200 if args.quick else 1500, lambda c, n: {"method": "daemon.info"})
            if native is not None:
                emit({"bench": "rpc_daemon_info", **native})
        # Pipelined: each of 32 connections keeps PIPELINE_DEPTH calls in flight.
        native = load_native(d.socket, 32, (100 if args.quick else 500) * PIPELINE_DEPTH,
                             lambda c, n: {"method": "daemon.info"}, PIPELINE_DEPTH)
        if native is not None:
            emit({"bench": "rpc_daemon_info", **native})
        emit(ctl_startup(d.socket, 5 if args.quick else 20))


if __name__ == "__main__":
    main()
