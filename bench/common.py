"""Benchmark helpers: a real tachyond process, a trio JSON-RPC load generator, percentiles, machine facts."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w
import trio

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()}


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] if s else float("nan")


def emit(result: dict[str, Any]) -> None:
    result = {**result, "machine": machine(), "command": " ".join([Path(sys.executable).name, *sys.argv])}
    print(json.dumps(result), flush=True)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    with open(out / f"{result['bench']}.jsonl", "a") as fh:
        fh.write(json.dumps(result) + "\n")


class Daemon:
    """A real tachyond on a temp dir; ``doc`` patches the base config."""

    def __init__(self, doc: dict[str, Any] | None = None, password: str | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="tyb-", dir="/tmp"))
        base = {
            "daemon": {
                "data_dir": str(self.dir / "data"),
                "socket": str(self.dir / "rpc.sock"),
                "log_level": "warning",
            },
            "http": {"listen": ["127.0.0.1:0"]},
        }
        base.update(doc or {})
        if password is not None:
            (self.dir / "pw").write_text(password)
            base.setdefault("wallet", {})["password_file"] = str(self.dir / "pw")
        self.socket = base["daemon"]["socket"]
        (self.dir / "tachyond.toml").write_text(tomli_w.dumps(base))
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Daemon:
        # cwd: `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH; started from a
        # checkout, the daemon would import that checkout's tachyond even when PYTHONPATH names another tree
        # (a "before" run of an older tree would then measure the new code).
        self.proc = subprocess.Popen([sys.executable, "-m", "tachyond", "--config", str(self.dir / "tachyond.toml")],
                                     stderr=open(self.dir / "stderr", "wb"), stdout=subprocess.DEVNULL, cwd=self.dir)
        from tachyon_ctl.client import Client, DaemonNotRunning

        for _ in range(600):
            try:
                with Client(self.socket) as c:
                    c.call("daemon.info")
                    return self
            except (DaemonNotRunning, OSError):
                time.sleep(0.05)
        raise RuntimeError((self.dir / "stderr").read_text())

    def __exit__(self, *exc: Any) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
        shutil.rmtree(self.dir, ignore_errors=True)

    def call(self, method: str, params: Any = None) -> Any:
        from tachyon_ctl.client import Client

        with Client(self.socket) as c:
            return c.call(method, params)

    def batch(self, calls: list[tuple[str, Any]]) -> list[Any]:
        """Independent calls in one JSON-RPC batch (the daemon may run them in any order)."""
        from tachyon_ctl.client import Client

        with Client(self.socket) as c:
            return c.batch(calls)


async def load(socket_path: str, clients: int, duration_s: float, make_request: Callable[[int, int], dict[str, Any]],
               pipeline: int = 1) -> dict[str, Any]:
    """``clients`` connections, each sending requests one after another (or ``pipeline`` at a time)."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    done = 0
    deadline = trio.current_time() + duration_s

    async def client(cid: int) -> None:
        nonlocal done
        stream = await trio.open_unix_socket(socket_path)
        buf = b""
        n = 0
        async with stream:
            while trio.current_time() < deadline:
                t0 = time.perf_counter()
                reqs = []
                for _ in range(pipeline):
                    req = make_request(cid, n)
                    req.update(jsonrpc="2.0", id=n)
                    n += 1
                    reqs.append(json.dumps(req).encode() + b"\n")
                await stream.send_all(b"".join(reqs))
                got = 0
                while got < pipeline:
                    while b"\n" not in buf:
                        buf += await stream.receive_some(1 << 16)
                    line, _, buf = buf.partition(b"\n")
                    msg = json.loads(line)
                    if "error" in msg:
                        key = f"{msg['error']['code']}: {msg['error']['message'][:60]}"
                        errors[key] = errors.get(key, 0) + 1
                    got += 1
                latencies.append((time.perf_counter() - t0) * 1000)
                done += pipeline

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for cid in range(clients):
            nursery.start_soon(client, cid)
    elapsed = time.perf_counter() - t0
    return {"clients": clients, "calls": done, "seconds": round(elapsed, 3), "calls_per_s": round(done / elapsed),
            "p50_ms": round(pct(latencies, 50), 3), "p99_ms": round(pct(latencies, 99), 3), "errors": errors}


def native_loadgen() -> Path | None:
    """bench/loadgen.c compiled with ``cc -O2`` into bench/.build (rebuilt when the source is newer), or None
    when this machine has no C compiler (the benchmarks then say so and use the Python load generator)."""
    src = ROOT / "bench" / "loadgen.c"
    exe = ROOT / "bench" / ".build" / "loadgen"
    if exe.exists() and exe.stat().st_mtime >= src.stat().st_mtime:
        return exe
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return None
    exe.parent.mkdir(exist_ok=True)
    subprocess.run([cc, "-O2", "-Wall", "-o", str(exe), str(src)], check=True)
    return exe


PIPELINE_DEPTH = 8  # requests in flight per connection in the pipelined rows


def load_native(socket_path: str, clients: int, calls_per_client: int,
                make_request: Callable[[int, int], dict[str, Any]], pipeline: int = 1) -> dict[str, Any] | None:
    """Like :func:`load`, but the requests are written beforehand and sent by the native load generator,
    so nearly all of this machine's CPU goes to the daemon. Each client sends ``calls_per_client`` calls,
    ``pipeline`` of them in flight at a time (1: one after another). None when no C compiler is available."""
    exe = native_loadgen()
    if exe is None:
        return None
    with tempfile.NamedTemporaryFile("wb", prefix="tyb-reqs-", suffix=".jsonl") as fh:
        for n in range(calls_per_client):
            for cid in range(clients):
                req = make_request(cid, n)
                req.update(jsonrpc="2.0", id=n)
                fh.write(json.dumps(req).encode() + b"\n")
        fh.flush()
        out = subprocess.run([str(exe), "-d", str(pipeline), socket_path, str(clients), fh.name], check=True,
                             capture_output=True, text=True).stdout
    result = json.loads(out)
    return {"clients": clients, "pipeline": pipeline, "load_generator": "native (bench/loadgen.c)", **result}


def load_native_http(host: str, port: int, connections: int, requests: list[bytes],
                     pipeline: int = 1) -> dict[str, Any] | None:
    """HTTP/1.1 keep-alive load from the native load generator: ``requests`` (whole requests, head and body)
    spread over ``connections``, ``pipeline`` in flight on each. None when no C compiler is available."""
    exe = native_loadgen()
    if exe is None:
        return None
    with tempfile.NamedTemporaryFile("wb", prefix="tyb-http-", suffix=".bin") as fh:
        for req in requests:
            fh.write(len(req).to_bytes(4, "big") + req)
        fh.flush()
        out = subprocess.run([str(exe), "-d", str(pipeline), "-h", f"{host}:{port}", str(connections), fh.name],
                             check=True, capture_output=True, text=True).stdout
    result = json.loads(out)
    return {"connections": connections, "pipeline": pipeline, "load_generator": "native HTTP (bench/loadgen.c)",
            **result}
