"""Where an order's time goes: py-spy samples the daemon (only the thread holding the GIL, ``--gil``) while the
native load generator places orders from 32 connections. Not part of ``make bench`` (needs py-spy: the
``bench`` extra). Prints the share of GIL samples per function (self time, and inclusive for the daemon's own
functions), the share of wall time the GIL was held, and the orders/s while sampled.

Usage (from bench/): ``python profile_dex.py [--engine sqlite|sqlite-file|memory] [--seconds 10]``.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_dex import CLIENTS, config, make_order, setup
from common import Daemon, load_native


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default="sqlite")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=200)
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with Daemon(config(args.engine)) as d:
        setup(d, CLIENTS)
        assert d.proc is not None
        done: dict = {}

        def drive() -> None:   # enough orders to outlast the sampling
            done["r"] = load_native(d.socket, CLIENTS, 2000, lambda cid, n: make_order(cid, n + 5_000_000))

        t = threading.Thread(target=drive)
        t.start()
        time.sleep(1.0)
        out = Path(tempfile.mkdtemp(prefix="tyb-spy-")) / "raw.txt"
        subprocess.run([spy, "record", "--gil", "--threads", "-r", str(args.rate), "-d", str(int(args.seconds)),
                        "-f", "raw", "-o", str(out), "-p", str(d.proc.pid)], check=True, capture_output=True)
        t.join()
        verify = d.call("ledger.verify")
    self_time: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", fr) for fr in stack.split(";")]   # "function (file)", no line
        self_time[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    wall = args.seconds * args.rate
    r = done.get("r") or {}
    print(f"engine {args.engine}: {r.get('calls_per_s', 0):,.0f} orders/s over the whole load; GIL held in "
          f"{total} of ~{wall:.0f} samples ({100 * total / wall:.0f}% of the time); ledger.verify ok: {verify['ok']}")
    print("self time, share of GIL samples:")
    for name, n in self_time.most_common(25):
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("inclusive, the daemon's own functions (tachyond/plugins), share of GIL samples:")
    own = [(n, f) for f, n in inclusive.items() if "tachyond/" in f or "plugins/" in f or "tachyon_" in f]
    for n, name in sorted(own, reverse=True)[:30]:
        print(f"  {100 * n / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
