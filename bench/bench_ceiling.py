"""The stack's own ceiling on this machine: what trio and hypercorn serve with no tachyond code at all.

Two servers, each in its own process, each driven by a native load generator so the client costs almost
nothing:
- a bare trio Unix-socket server that reads JSON-RPC lines, parses each, and answers ``{"result": true}``
  (no registry, no validation, no wallet), driven by bench/loadgen.c with 1 and 32 connections, and with 32
  connections pipelined (PIPELINE_DEPTH requests in flight each);
- hypercorn serving a trivial ASGI app (read the body, answer 200 ``{}``) on loopback, with 32 keep-alive
  connections, once with hypercorn's trio worker (what tachyond runs) and once with its asyncio worker, for
  comparison; driven by bench/loadgen.c's HTTP mode with the same ~1.5 KB signed webhook POSTs that
  bench_webhooks.py sends (so the webhook ratio compares like with like), and by ``wrk`` when installed.
These numbers bound what any tachyond method or webhook can reach here, and are the "bare" baselines of
the ratios `make bench` prints (run_all.py).
Usage: python bench/bench_ceiling.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from common import PIPELINE_DEPTH, emit, load_native, load_native_http

TRIO_SERVER = r'''
import json, os, sys, trio
async def handle(stream):
    buf = b""
    async with stream:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            buf += data
            out = []
            while b"\n" in buf:
                line, _, buf = buf.partition(b"\n")
                req = json.loads(line)
                out.append(json.dumps({"jsonrpc": "2.0", "id": req.get("id"), "result": True}).encode() + b"\n")
            await stream.send_all(b"".join(out))
async def main(path):
    sock = trio.socket.socket(trio.socket.AF_UNIX)
    await sock.bind(path)
    sock.listen(128)
    await trio.serve_listeners(handle, [trio.SocketListener(sock)])
trio.run(main, sys.argv[1])
'''

ASGI_SERVER = r'''
import sys
from hypercorn.config import Config
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    while True:
        message = await receive()
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})
config = Config()
config.bind = [f"127.0.0.1:{sys.argv[2]}"]
config.accesslog = None
if sys.argv[1] == "trio":
    import trio
    from hypercorn.trio import serve
    trio.run(serve, app, config)
else:
    import asyncio
    from hypercorn.asyncio import serve
    asyncio.run(serve(app, config))
'''


def wait_for(predicate, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def wrk(url: str, connections: int, seconds: float) -> dict:
    out = subprocess.run(["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "requests_per_s": round(rate),
        "p99_ms": round(float(p99.group(1)) * scale[p99.group(2)], 3) if p99 else None,
        "non_2xx": int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    per_client = 300 if args.quick else 2000
    with tempfile.TemporaryDirectory(prefix="tyb-ceiling-") as tmp:
        path = os.path.join(tmp, "echo.sock")
        server = subprocess.Popen([sys.executable, "-c", TRIO_SERVER, path])
        try:
            wait_for(lambda: os.path.exists(path), "the trio echo server")
            for clients, depth in ((1, 1), (32, 1), (32, PIPELINE_DEPTH)):
                r = load_native(path, clients, per_client * (4 if clients == 1 else depth),
                                lambda c, n: {"method": "daemon.info", "params": {}}, depth)
                if r is None:
                    emit({"bench": "ceiling_trio_jsonrpc", "skipped": "no C compiler for bench/loadgen.c"})
                    break
                emit({"bench": "ceiling_trio_jsonrpc", **r})
        finally:
            server.kill()
            server.wait()
    from bench_webhooks import event_body, http_request

    for worker in ("trio", "asyncio"):
        port = free_port()
        server = subprocess.Popen([sys.executable, "-c", ASGI_SERVER, worker, str(port)], stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda port=port: port_open(port), f"hypercorn ({worker})")
            requests = [http_request(f"127.0.0.1:{port}", event_body("tw_bench", n))
                        for n in range(2000 if args.quick else 8000)]
            r = load_native_http("127.0.0.1", port, 32, requests)
            if r is not None:
                emit({"bench": "ceiling_hypercorn", "worker": worker, **r,
                      "requests_per_s": r["calls_per_s"]})
            if shutil.which("wrk") is not None:
                r = wrk(f"http://127.0.0.1:{port}/", 32, 2 if args.quick else 6)
                emit({"bench": "ceiling_hypercorn", "worker": worker, "connections": 32, "load_generator": "wrk",
                      "request": "GET /", **r})
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
