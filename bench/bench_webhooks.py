"""Durable verified webhook events per second: signed Stripe events POSTed to a real tachyond over keep-alive HTTP.

Each event has its own event id and session id and carries this wallet's tag, so every one is verified,
sealed to the wallet key and committed to the inbox before its 200. The wallet is locked during the run
(webhooks must be recorded while locked, and the confirmation worker then stays idle), so the number is the
receive path alone: HTTP, signature check, X25519 seal, group-committed SQLite write.
Numbers: events/s over HTTP with the trio client (the result) and with wrk (a native client, when installed);
an unknown provider's 404 (answered before the body is read, so the connection closes and every request
opens a new one: a connection-setup figure, not keep-alive; bench_ceiling.py has the keep-alive ceiling);
and events/s through OnrampService.receive_webhook in process (no HTTP), to show where time goes.
Usage: python bench/bench_webhooks.py [--events N] [--connections C] [--quick]
       python bench/bench_webhooks.py --interleave OTHER_TREE [--rounds R] [--events N]
  (--interleave: a bare hypercorn trio worker, a daemon running OTHER_TREE's code (say a `git archive` of an
  older commit) and one running this tree's, driven in turn by bench/loadgen.c round after round, so that
  both ratios see the same machine load; prints each round and the medians, with the CPU each server used
  per request from /proc)
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plugins"))
from common import Daemon, emit, load_native_http, pct  # noqa: E402

WHSEC = "whsec_bench_" + secrets.token_hex(8)
TARGET_PER_S = 2000


def event_body(wallet_id: str, n: int) -> bytes:
    """A Stripe-shaped, pretty-printed crypto.onramp_session_updated event (~1.5 KB), unique ids."""
    session_id = f"cos_bench{n:010d}{secrets.token_hex(4)}"
    session = {
        "id": session_id, "object": "crypto.onramp_session", "client_secret": f"{session_id}_secret_x",
        "created": int(time.time()), "kyc_details_provided": False, "livemode": False,
        "metadata": {"tachyon_wallet": wallet_id}, "redirect_url": None, "status": "fulfillment_complete",
        "transaction_details": {
            "destination_amount": "10.00", "destination_currency": "usdc", "destination_network": "ethereum",
            "destination_currencies": ["usdc"], "destination_networks": ["ethereum"],
            "fees": {"network_fee_amount": "0.01", "transaction_fee_amount": "0.16"},
            "lock_wallet_address": True, "settlement_speed": "instant", "source_amount": "10.00",
            "source_currency": "usd", "transaction_id": "0x" + secrets.token_hex(32),
            "wallet_address": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "wallet_addresses": {"ethereum": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"}},
    }
    event = {"id": f"evt_bench{n:010d}{secrets.token_hex(4)}", "object": "event", "api_version": "2026-10-28.endive",
             "created": int(time.time()), "data": {"object": session}, "livemode": False, "pending_webhooks": 1,
             "request": {"id": None, "idempotency_key": None}, "type": "crypto.onramp_session_updated"}
    return json.dumps(event, indent=2).encode()


def http_request(host: str, body: bytes) -> bytes:
    t = int(time.time())
    sig = hmac.new(WHSEC.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    head = (f"POST /webhook/stripe HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Stripe-Signature: t={t},v1={sig}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def read_response(stream: trio.SocketStream, buf: bytearray) -> tuple[int, bytes, bool]:
    while b"\r\n\r\n" not in buf:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    close = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        elif name.strip().lower() == b"connection" and value.strip().lower() == b"close":
            close = True
    while len(rest) < length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        rest += chunk
    buf[:] = rest[length:]
    return status, rest[:length], close


async def load(host: str, port: int, requests: list[bytes], connections: int) -> dict:
    latencies_ms: list[float] = []
    answers: dict[str, int] = {}
    queue = iter(requests)

    async def worker() -> None:
        stream = await trio.open_tcp_stream(host, port)
        buf = bytearray()
        try:
            for req in queue:
                t0 = time.perf_counter()
                await stream.send_all(req)
                status, body, close = await read_response(stream, buf)
                latencies_ms.append((time.perf_counter() - t0) * 1000)
                key = f"{status} {body.decode()[:40]}"
                answers[key] = answers.get(key, 0) + 1
                if close:  # refusals answered before the body is read close the connection: open another
                    await stream.aclose()
                    stream = await trio.open_tcp_stream(host, port)
                    buf = bytearray()
        finally:
            await stream.aclose()

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(worker)
    elapsed_s = time.perf_counter() - t0
    return {"elapsed_s": elapsed_s, "latencies_ms": latencies_ms, "answers": answers}


def metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


async def receive_in_process(secrets_dir: str, events: int, concurrency: int) -> float:
    """Events/s through OnrampService.receive_webhook itself (verify, seal, group commit), without HTTP."""
    import types

    from tachyon_stripe import _factory

    from tachyond.config import from_mapping
    from tachyond.ledger.service import Ledger
    from tachyond.onramp.service import OnrampService
    from tachyond.plugins import Plugins
    from tachyond.runtime.metrics import Metrics
    from tachyond.wallet.wallet import Wallet

    cfg = from_mapping({"daemon": {"data_dir": f"{secrets_dir}/data", "socket": f"{secrets_dir}/rpc.sock"},
                        "tokens": [{"symbol": "USDC", "decimals": 6}],
                        "onramp": {"stripe": stripe_table(secrets_dir)}})
    # The service gets what it uses: the wallet, ledger, metrics and provider are the real ones.
    d = types.SimpleNamespace(wallet=Wallet(cfg.daemon.data_dir))
    d.ledger = Ledger(d.wallet, cfg.token_map())
    service = OnrampService(d.wallet, d.ledger, lambda: cfg, Metrics(), Plugins(), {"stripe": ("stripe", _factory)},
                            {}, list)
    async with d.wallet:
        wallet_id = (await d.wallet.create("bench-password"))["public_id"]
        await d.wallet.lock()
        signed = []
        for n in range(events):
            body = event_body(wallet_id, n)
            t = int(time.time())
            sig = hmac.new(WHSEC.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
            signed.append((body, {"Stripe-Signature": f"t={t},v1={sig}"}))
        queue = iter(signed)

        async def worker() -> None:
            for body, headers in queue:
                status, answer = await service.receive_webhook("stripe", body, headers, "127.0.0.1")
                assert status == 200 and answer == {"received": True}, answer

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        return events / (time.perf_counter() - t0)


def stripe_table(secrets_dir: str) -> dict:
    # api_base is never called: the wallet stays locked, so the confirmation worker does not run.
    return {"secret_key_file": f"{secrets_dir}/sk", "webhook_secret_file": f"{secrets_dir}/whsec",
            "api_base": "http://127.0.0.1:9", "reconcile_interval_s": 86400}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10000)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="2,000 events")
    ap.add_argument("--interleave", metavar="OTHER_TREE", help="compare with OTHER_TREE's code, round by round")
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    events = 2000 if args.quick else args.events
    if args.interleave:
        interleaved(Path(args.interleave).resolve(), args.rounds, min(events, 4000), args.connections)
        return
    with tempfile.TemporaryDirectory(prefix="tyb-secrets-") as secrets_dir:
        (Path(secrets_dir) / "sk").write_text("sk_test_bench_0123456789")
        (Path(secrets_dir) / "whsec").write_text(WHSEC)
        in_process_per_s = trio.run(receive_in_process, secrets_dir, events, args.connections * 2)
        daemon = Daemon({"tokens": [{"symbol": "USDC", "decimals": 6, "networks": ["ethereum"]}],
                         "http": {"listen": ["127.0.0.1:0"], "rate_limit_per_s": 1_000_000},
                         "onramp": {"stripe": stripe_table(secrets_dir)}})
        run(daemon, events, args.connections, in_process_per_s)


def run(d: Daemon, events: int, connections: int, in_process_per_s: float) -> None:
    import httpx

    with d:
        wallet_id = d.call("wallet.create", {"password": "bench-password"})["public_id"]
        d.call("wallet.lock")
        base = d.call("daemon.info")["http"][0]
        host, port = base.removeprefix("http://").rsplit(":", 1)
        # The HTTP stack alone: an unknown provider is answered 404 before the body is read or verified.
        baseline_reqs = [http_request(f"{host}:{port}", event_body(wallet_id, n)).replace(
            b"/webhook/stripe", b"/webhook/nosuch", 1) for n in range(min(events, 2000))]
        baseline = trio.run(load, host, int(port), baseline_reqs, connections)
        requests = [http_request(f"{host}:{port}", event_body(wallet_id, n)) for n in range(events)]
        result = trio.run(load, host, int(port), requests, connections)
        text = httpx.get(base + "/metrics", timeout=30).text
        enqueued = metric(text, "tachyon_webhook_events_enqueued_total")
        ok = result["answers"].get('200 {"received": true}', 0)
        lat = result["latencies_ms"]
        per_s = ok / result["elapsed_s"]
        emit({"bench": "webhooks_durable", "events": events, "connections": connections,
              "accepted": ok, "enqueued_metric": int(enqueued), "answers": result["answers"],
              "seconds": round(result["elapsed_s"], 3), "events_per_s": round(per_s),
              "p50_ms": round(pct(lat, 50), 3), "p99_ms": round(pct(lat, 99), 3),
              "http_404_baseline_per_s": round(len(baseline_reqs) / baseline["elapsed_s"]),
              "in_process_receive_per_s": round(in_process_per_s),
              "target_per_s": TARGET_PER_S, "meets_target_over_http": per_s >= TARGET_PER_S,
              "meets_target_in_process": in_process_per_s >= TARGET_PER_S,
              "wallet": "locked", "body_bytes": len(event_body(wallet_id, 0)), "load_avg_1m": os.getloadavg()[0]})
        if ok != events or int(enqueued) != events:
            sys.exit(f"only {ok} of {events} events were accepted ({int(enqueued)} enqueued)")
        native_run(host, port, base, wallet_id, connections, events)
        wrk_run(d, host, port, base, wallet_id, connections, quick=events <= 2000)


def native_run(host: str, port: str, base: str, wallet_id: str, connections: int, events: int) -> None:
    """The same webhook path driven by bench/loadgen.c's HTTP mode, as bench_ceiling.py drives the bare
    hypercorn worker with the same requests: the webhook ratio of `make bench` compares these two."""
    import httpx

    requests = [http_request(f"{host}:{port}", event_body(wallet_id, 3_000_000 + n)) for n in range(events)]
    before = metric(httpx.get(base + "/metrics", timeout=30).text, "tachyon_webhook_events_enqueued_total")
    r = load_native_http(host, int(port), connections, requests)
    if r is None:
        emit({"bench": "webhooks_durable_native", "skipped": "no C compiler for bench/loadgen.c"})
        return
    enqueued = metric(httpx.get(base + "/metrics", timeout=30).text, "tachyon_webhook_events_enqueued_total") - before
    emit({"bench": "webhooks_durable_native", **r, "enqueued": int(enqueued),
          "events_per_s": round(enqueued / r["seconds"]), "wallet": "locked"})
    if r["errors"] or int(enqueued) != events:
        sys.exit(f"native run: {r['errors']} errors ({r['first_error']}), {int(enqueued)} of {events} enqueued")


def wrk_run(d: Daemon, host: str, port: str, base: str, wallet_id: str, connections: int, quick: bool) -> None:
    """The same webhook path driven by wrk (native, from Debian), so the client takes almost no CPU."""
    import shutil
    import subprocess

    import httpx

    if shutil.which("wrk") is None:
        emit({"bench": "webhooks_durable_wrk", "skipped": "wrk is not installed (apt-get install wrk)"})
        return
    seconds = 2 if quick else 6
    per_thread = 3000 if quick else 8000   # more than a thread sends in the run, so none repeats
    with tempfile.TemporaryDirectory(prefix="tyb-wrk-") as tmp:
        for thread in (1, 2):
            with open(f"{tmp}/req{thread}.bin", "wb") as fh:
                for n in range(per_thread):
                    req = http_request(f"{host}:{port}", event_body(wallet_id, 1_000_000 * thread + n))
                    fh.write(len(req).to_bytes(4, "big") + req)
        before = metric(httpx.get(base + "/metrics", timeout=30).text, "tachyon_webhook_events_enqueued_total")
        out = subprocess.run(["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency",
                              "-s", str(Path(__file__).resolve().parent / "wrk_requests.lua"), base],
                             env={**os.environ, "REQUESTS_PREFIX": f"{tmp}/req"}, capture_output=True, text=True,
                             check=True).stdout
    text = httpx.get(base + "/metrics", timeout=30).text
    enqueued = metric(text, "tachyon_webhook_events_enqueued_total") - before
    import re

    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    emit({"bench": "webhooks_durable_wrk", "connections": connections, "seconds": seconds,
          "load_generator": "wrk (bench/wrk_requests.lua)", "enqueued": int(enqueued),
          "events_per_s": round(enqueued / seconds),
          "wrk_requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
          "p99_ms": round(float(p99.group(1)) * scale[p99.group(2)], 3) if p99 else None,
          "non_2xx": int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0,
          "target_per_s": TARGET_PER_S, "meets_target": enqueued / seconds >= TARGET_PER_S, "wallet": "locked"})


def interleaved(other: Path, rounds: int, events: int, connections: int) -> None:
    """The ratio to the bare hypercorn trio worker for OTHER_TREE's daemon and this tree's, measured in turn."""
    import statistics
    import subprocess

    import bench_ceiling

    here = Path(__file__).resolve().parent.parent

    def cpu_s(pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    with tempfile.TemporaryDirectory(prefix="tyb-secrets-") as secrets_dir:
        (Path(secrets_dir) / "sk").write_text("sk_test_bench_0123456789")
        (Path(secrets_dir) / "whsec").write_text(WHSEC)
        doc = {"tokens": [{"symbol": "USDC", "decimals": 6, "networks": ["ethereum"]}],
               "http": {"listen": ["127.0.0.1:0"], "rate_limit_per_s": 1_000_000},
               "onramp": {"stripe": stripe_table(secrets_dir)}}
        port = bench_ceiling.free_port()
        bare = subprocess.Popen([sys.executable, "-c", bench_ceiling.ASGI_SERVER, "trio", str(port)],
                                stderr=subprocess.DEVNULL)
        daemons: dict[str, Daemon] = {}
        cwd = os.getcwd()
        try:
            bench_ceiling.wait_for(lambda: bench_ceiling.port_open(port), "hypercorn (trio)")
            for name, tree in (("other", other), ("this", here)):
                # python -m puts the working directory first on sys.path: start each daemon in its tree
                os.environ["PYTHONPATH"] = f"{tree}:{tree / 'plugins'}"
                os.chdir(tree)
                try:
                    daemons[name] = Daemon(doc).__enter__()
                finally:
                    os.environ.pop("PYTHONPATH", None)
                    os.chdir(cwd)
            targets = {"bare": ("127.0.0.1", port, "tw_bench", bare.pid)}
            for name, d in daemons.items():
                wallet_id = d.call("wallet.create", {"password": "bench-password"})["public_id"]
                d.call("wallet.lock")
                host, p = d.call("daemon.info")["http"][0].removeprefix("http://").rsplit(":", 1)
                targets[name] = (host, int(p), wallet_id, d.proc.pid)  # type: ignore[union-attr]
            rows = []
            for r in range(rounds):
                row: dict = {}
                for i, name in enumerate(["bare", "other", "this"][::1 if r % 2 == 0 else -1]):
                    host, p, wallet_id, pid = targets[name]
                    reqs = [http_request(f"{host}:{p}", event_body(wallet_id, 10_000_000 * (i + 1) + 100_000 * r + n))
                            for n in range(events)]
                    before = cpu_s(pid)
                    res = load_native_http(host, p, connections, reqs)
                    if res is None:
                        sys.exit("no C compiler for bench/loadgen.c")
                    if res["errors"]:
                        sys.exit(f"{name}: {res['errors']} errors ({res['first_error']})")
                    row[name] = res["calls_per_s"]
                    row[f"{name}_p99_ms"] = res["p99_ms"]
                    row[f"{name}_cpu_us_per_request"] = round((cpu_s(pid) - before) / events * 1e6)
                row["ratio_other"] = round(row["other"] / row["bare"], 3)
                row["ratio_this"] = round(row["this"] / row["bare"], 3)
                row["load_avg_1m"] = round(os.getloadavg()[0], 2)
                emit({"bench": "webhooks_interleaved_round", "round": r, **row})
                rows.append(row)
            emit({"bench": "webhooks_interleaved", "other_tree": str(other), "rounds": rounds, "events": events,
                  **{f"median_{k}": statistics.median(x[k] for x in rows) for k in (
                      "ratio_other", "ratio_this", "bare", "other", "this", "bare_cpu_us_per_request",
                      "other_cpu_us_per_request", "this_cpu_us_per_request")}})
        finally:
            for d in daemons.values():
                d.__exit__(None, None, None)
            bare.kill()
            bare.wait()


if __name__ == "__main__":
    main()
