#!/usr/bin/env python3
"""Wrap every statement ruff reports as too long (E501) with `ruff format --range`, leaving the rest of
each file as written. Re-runnable; what it cannot wrap (long strings, comments) is listed for a hand fix.

    .venv/bin/python tools/wrap_long_lines.py tachyond tachyon_ctl plugins tests bench
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

RUFF = str(Path(sys.executable).with_name("ruff"))


def long_lines(paths: list[str]) -> dict[str, list[int]]:
    out = subprocess.run([RUFF, "check", "--select", "E501", "--output-format", "json", *paths],
                         capture_output=True, text=True)
    found: dict[str, list[int]] = defaultdict(list)
    for d in json.loads(out.stdout or "[]"):
        found[d["filename"]].append(d["location"]["row"])
    return found


def main() -> None:
    paths = sys.argv[1:] or ["tachyond", "tachyon_ctl"]
    for filename, rows in long_lines(paths).items():
        for row in sorted(set(rows), reverse=True):  # bottom up: earlier rows keep their numbers
            subprocess.run([RUFF, "format", "--quiet", f"--range={row}:1-{row + 1}:1", filename], check=False)
    left = long_lines(paths)
    for filename, rows in sorted(left.items()):
        for row in rows:
            print(f"{filename}:{row}: still too long")


if __name__ == "__main__":
    main()
