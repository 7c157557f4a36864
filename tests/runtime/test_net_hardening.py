"""Nothing from outside stops the daemon: slow HTTP clients, idle and busy socket clients, descriptor
exhaustion and oversized batches, against a real tachyond process on real sockets (docs/security.md)."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import DaemonProc, base_document, self_signed_cert
from test_webhooks import event_body, sign

from tachyon_ctl.client import Client

WHSEC = "whsec_net_hardening_secret"
SLOW_HEAD = (b"POST /webhook/stripe HTTP/1.1\r\nHost: tachyond\r\nContent-Type: application/json\r\n"
             b"Stripe-Signature: t=1,v1=00\r\nContent-Length: 100\r\n\r\n{")


class LimitedDaemon(DaemonProc):
    """A tachyond whose RLIMIT_NOFILE (soft and hard) is set before it runs, when ``nofile`` is given."""

    def __init__(self, *a: Any, nofile: int | None = None, **kw: Any):
        super().__init__(*a, **kw)
        self.nofile = nofile

    def start(self, *, wait: bool = True, timeout_s: float = 30) -> LimitedDaemon:
        self._stderr = open(self.stderr_path, "ab")
        self._stdout = open(self.stdout_path, "ab")
        nofile = self.nofile

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen([sys.executable, "-m", "tachyond", *self.args], cwd=self.cwd, env=self.env,
                                     stdout=self._stdout, stderr=self._stderr, stdin=subprocess.DEVNULL,
                                     preexec_fn=limit)
        if wait:
            self.wait_ready(timeout_s)
        return self

    def open_fds(self) -> int:
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def peak_rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    def wait_log(self, text: str, timeout_s: float = 30) -> None:
        """Wait until ``text`` appears in the daemon's stderr (the event, not a sleep)."""
        deadline = time.monotonic() + timeout_s
        while text not in self.stderr():
            assert self.proc is not None and self.proc.poll() is None, f"tachyond exited:\n{self.stderr()}"
            assert time.monotonic() < deadline, f"{text!r} not logged within {timeout_s}s:\n{self.stderr()[-3000:]}"
            time.sleep(0.05)


@pytest.fixture
def limited(sockdir: Path) -> Iterator[Any]:
    procs: list[LimitedDaemon] = []

    def make(http: dict | None = None, daemon: dict | None = None, *, nofile: int | None = None,
             test_plugin: bool = False) -> LimitedDaemon:
        (sockdir / "sk").write_text("sk_test_net_hardening_0123")
        (sockdir / "whsec").write_text(WHSEC)
        doc = base_document(sockdir, http=http or {}, daemon=daemon or {}, tokens=[{"symbol": "USDC", "decimals": 6}],
                            onramp={"stripe": {"secret_key_file": str(sockdir / "sk"),
                                               "webhook_secret_file": str(sockdir / "whsec"),
                                               # nothing listens there: the provider is only verifying webhooks
                                               "api_base": "http://127.0.0.1:9", "reconcile_interval_s": 3600,
                                               "max_network_retries": 0, "timeout_s": 1}})
        d = LimitedDaemon(sockdir, doc, nofile=nofile, test_plugin=test_plugin)
        procs.append(d)
        return d

    yield make
    for p in procs:
        p.kill()
        for fh in (getattr(p, "_stderr", None), getattr(p, "_stdout", None)):
            if fh is not None:
                fh.close()


def http_url(d: DaemonProc, index: int = 0) -> str:
    return d.call("daemon.info")["http"][index]


def host_port(url: str) -> tuple[str, int]:
    host, port = url.split("://")[1].rsplit(":", 1)
    return host, int(port)


def slow_connections(url: str, sources: list[str], per_source: int) -> list[socket.socket]:
    """Connections that send a webhook's headers and the first byte of its body, then nothing."""
    addr = host_port(url)
    out = []
    for src in sources:
        for _ in range(per_source):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((src, 0))
            s.settimeout(10)
            s.connect(addr)
            s.sendall(SLOW_HEAD)
            out.append(s)
    return out


def idle_rpc_connections(path: str, count: int) -> list[socket.socket]:
    out = []
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(path)
        out.append(s)
    return out


def closed_by_peer(s: socket.socket, timeout_s: float) -> bool:
    """True when the daemon closed ``s`` (EOF or reset) within ``timeout_s``; answers are read past."""
    s.settimeout(timeout_s)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def verified_webhook(url: str, *, source: str = "127.0.0.1", timeout_s: float = 1.0,
                     headers: dict[str, str] | None = None) -> httpx.Response:
    session = {"id": "cos_net_hardening", "object": "crypto.onramp_session", "status": "fulfillment_complete",
               "metadata": {"tachyon_wallet": "tw_elsewhere"}}
    body = event_body(session)
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=timeout_s) as client:
        return client.post(url + "/webhook/stripe", content=body, headers={
            "Content-Type": "application/json", "Stripe-Signature": sign(body, WHSEC), **(headers or {})})


def rpc_info(d: DaemonProc, timeout_s: float = 1.0) -> dict:
    with Client(d.socket, timeout_s=timeout_s) as c:
        return c.call("daemon.info")


def metric(url: str, name: str, **labels: str) -> float:
    return metric_value(httpx.get(url + "/metrics", timeout=10).text, name, **labels)


def metric_value(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    prefix = f"{name}{{{want}}} " if labels else f"{name} "
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


# --- slow and idle clients -------------------------------------------------------------------------

def test_a_thousand_slow_http_and_idle_socket_clients_neither_stop_nor_stall_the_daemon(limited):
    """1,000 HTTP connections that send headers and `{` then nothing, and 1,000 idle socket connections:
    RPC and verified webhooks are answered within 1 s meanwhile; the slow requests are closed at
    http.request_timeout_s, idle socket connections at the per-uid cap (the oldest idle ones make room) and
    at rpc_idle_timeout_s; the daemon never exits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:   # this process holds 2,000 sockets and more
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 4096, "the hard RLIMIT_NOFILE is below 4096"
    d = limited(http={"request_timeout_s": 8}, daemon={"rpc_idle_timeout_s": 8}).start()
    url = http_url(d)
    sources = [f"127.0.0.{i}" for i in range(10, 20)]   # 100 each: under the per-address cap of 102
    slow = slow_connections(url, sources, 100)
    idle = idle_rpc_connections(d.socket, 1000)
    try:
        # the socket keeps at most max_rpc_connections_per_uid (256) of this uid: the oldest idle went first
        t0 = time.monotonic()
        assert all(closed_by_peer(s, 10) for s in idle[:744])
        print(f"1,000 socket connections accepted, 744 evicted in {time.monotonic() - t0:.2f}s")
        assert metric(url, "tachyon_http_connections_open", listener="public") >= 1000
        assert metric(url, "tachyon_http_connections_refused_total", listener="public", reason="per_address") == 0
        # while all of them are open: a socket client and a verified webhook, each answered within 1 s
        t0 = time.monotonic()
        assert rpc_info(d, timeout_s=1.0)["version"]
        t1 = time.monotonic()
        r = verified_webhook(url, source="127.0.0.50", timeout_s=1.0)
        print(f"rpc {t1 - t0:.3f}s, webhook {time.monotonic() - t1:.3f}s")
        assert r.status_code == 200 and "ignored" in r.json()
        # the slow requests are closed at their deadline (8 s after their first byte), every one of them
        assert all(closed_by_peer(s, 15) for s in slow)
        assert metric(url, "tachyon_http_request_timeouts_total", listener="public") == 1000
        # the idle socket connections left are closed after rpc_idle_timeout_s
        assert all(closed_by_peer(s, 15) for s in idle[744:])
        assert metric(url, "tachyon_rpc_connections_closed_idle_total", reason="idle_timeout") >= 1
        assert metric(url, "tachyon_rpc_connections_closed_idle_total", reason="evicted") >= 744
        assert d.proc.poll() is None
        assert rpc_info(d, timeout_s=1.0)["version"]
        assert verified_webhook(url, source="127.0.0.50").status_code == 200
        assert "Traceback" not in d.stderr()
    finally:
        close_all(slow + idle)


def test_http_connections_are_capped_in_total_and_per_address(limited):
    """max_connections = 10: one address may hold 1 (a tenth), ten addresses 10; the next is closed at once.
    The admin listener (admin_listen) has caps of its own, so /metrics answers throughout."""
    d = limited(http={"max_connections": 10, "request_timeout_s": 60, "admin_listen": ["127.0.0.1:0"]}).start()
    url, admin = http_url(d, 0), http_url(d, 1)
    first = slow_connections(url, ["127.0.0.21"], 1)
    second = slow_connections(url, ["127.0.0.21"], 1)           # the same address: over its cap of 1
    rest: list[socket.socket] = []
    try:
        assert closed_by_peer(second[0], 5)
        assert metric(admin, "tachyon_http_connections_open", listener="public") == 1
        rest = slow_connections(url, [f"127.0.0.{i}" for i in range(22, 31)], 1)   # 10 open in all
        over = slow_connections(url, ["127.0.0.31"], 1)
        assert closed_by_peer(over[0], 5)
        assert metric(admin, "tachyon_http_connections_open", listener="public") == 10
        assert metric(admin, "tachyon_http_connections_refused_total", listener="public", reason="per_address") == 1
        assert metric(admin, "tachyon_http_connections_refused_total", listener="public", reason="total") == 1
        close_all(first + rest)
        # room again: a verified webhook goes through
        assert verified_webhook(url, source="127.0.0.32", timeout_s=5).status_code == 200
    finally:
        close_all(first + second + rest)


def test_a_body_trickled_one_byte_at_a_time_is_cut_at_the_deadline(limited):
    """A body that keeps arriving, one byte at a time, still has to be complete within request_timeout_s."""
    d = limited(http={"request_timeout_s": 2}).start()
    url = http_url(d)
    [s] = slow_connections(url, ["127.0.0.40"], 1)
    try:
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 10:
            try:
                s.sendall(b" ")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if closed_by_peer(s, 0.3):
                closed = True
                break
        assert closed, "a trickled body kept its connection open past the deadline"
        assert metric(url, "tachyon_http_request_timeouts_total", listener="public") == 1
    finally:
        s.close()


def test_the_descriptor_limit_reached_on_purpose_is_survived(limited):
    """RLIMIT_NOFILE of the daemon set low: HTTP connections use up its descriptors, so accept() fails with
    EMFILE on the webhook listener and on the RPC socket. The daemon logs it, keeps running, and answers the
    waiting socket client and new webhooks once the connections close."""
    d = limited(http={"request_timeout_s": 120}, nofile=128).start()
    url = http_url(d)
    room = 128 - d.open_fds()
    assert room > 10, room
    # more connections than descriptors left: the last ones wait in the listen backlog
    hogs = slow_connections(url, [f"127.0.0.{i}" for i in range(60, 60 + room // 20 + 2)], 20)
    try:
        d.wait_log("EMFILE")   # hypercorn's listener first (old code: trio's own log line)
        waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        waiting.settimeout(30)
        waiting.connect(d.socket)                        # queued in the backlog: the daemon cannot accept it
        waiting.sendall(b'{"jsonrpc":"2.0","id":7,"method":"daemon.info"}\n')
        d.wait_log("rpc: accept() failed with EMFILE")
        assert "http: accept() failed with EMFILE" in d.stderr() and "Traceback" not in d.stderr()
        assert d.proc.poll() is None
        close_all(hogs)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = waiting.recv(65536)
            assert chunk, "the daemon closed the waiting connection"
            answer += chunk
        assert json.loads(answer)["id"] == 7
        waiting.close()
        assert verified_webhook(url, source="127.0.0.59", timeout_s=10).status_code == 200
        assert rpc_info(d, timeout_s=10)["version"]
        assert metric(url, "tachyon_accept_errors_total", server="http", errno="EMFILE") >= 1
        assert metric(url, "tachyon_accept_errors_total", server="rpc", errno="EMFILE") >= 1
        assert d.proc.poll() is None
    finally:
        close_all(hogs)


# --- RPC batches and connection caps ---------------------------------------------------------------

_PENDING: dict[int, bytes] = {}   # what was read past a line, per socket


def read_line(s: socket.socket) -> bytes:
    """One line off ``s``; bytes read past it are kept for the next call on the same socket."""
    buf = _PENDING.pop(id(s), b"")
    while b"\n" not in buf:
        chunk = s.recv(1 << 20)
        assert chunk, "connection closed"
        buf += chunk
    line, rest = buf.split(b"\n", 1)
    if rest:
        _PENDING[id(s)] = rest
    return line + b"\n"


def test_a_batch_over_the_cap_is_one_invalid_request_at_once_and_the_client_goes_on(limited):
    d = limited().start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(d.socket)
        s.sendall(b'{"jsonrpc":"2.0","id":0,"method":"daemon.info"}\n')
        assert json.loads(read_line(s))["id"] == 0
        before = d.peak_rss_kib()
        for members in (200_000, 1001):                     # 200,000 is ~400 KiB, under the 1 MiB line cap
            s.sendall(b"[" + b",".join([b"1"] * members) + b"]\n")
            answer = json.loads(read_line(s))
            assert answer == {"jsonrpc": "2.0", "id": None, "error": {
                "code": -32600, "message": "Invalid Request: a batch may hold at most 1,000 calls"}}
        # the same connection goes on, and a batch of exactly 1,000 is answered member by member
        batch = [{"jsonrpc": "2.0", "id": i, "method": "daemon.info"} for i in range(1000)]
        s.sendall(json.dumps(batch).encode() + b"\n")
        answers = json.loads(read_line(s))
        assert sorted(a["id"] for a in answers) == list(range(1000))
        # bounded memory: the oversized batches built no objects per member (a 200,000-member batch of tasks
        # costs hundreds of MiB)
        assert d.peak_rss_kib() - before < 64 * 1024


def test_each_call_of_a_batch_counts_toward_the_in_flight_limit(limited):
    """256 slow calls in one batch fill the connection's in-flight limit (256): the call sent after it is read
    only when the batch is answered."""
    d = limited(test_plugin=True).start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(d.socket)
        batch = [{"jsonrpc": "2.0", "id": i, "method": "test.sleep", "params": {"seconds": 1}} for i in range(256)]
        s.sendall(json.dumps(batch).encode() + b"\n" + b'{"jsonrpc":"2.0","id":"after","method":"daemon.info"}\n')
        first = json.loads(read_line(s))
        assert isinstance(first, list) and len(first) == 256
        assert json.loads(read_line(s))["id"] == "after"


def test_socket_connections_busy_at_the_uid_cap_refuse_the_next_one_clearly(limited):
    """At max_rpc_connections_per_uid with every connection busy (a call in flight), a new connection of
    that uid gets one error line naming the cap; once one finishes, it is served again."""
    d = limited(daemon={"max_rpc_connections_per_uid": 3}, test_plugin=True).start()
    busy = []
    try:
        for i in range(3):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(30)
            s.connect(d.socket)
            # the sleep, then a quick call: its answer says the sleep is in flight
            s.sendall(json.dumps({"jsonrpc": "2.0", "id": i, "method": "test.sleep", "params": {"seconds": 4}}).encode()
                      + b"\n" + b'{"jsonrpc":"2.0","id":"quick","method":"daemon.info"}\n')
            assert json.loads(read_line(s))["id"] == "quick"
            busy.append(s)
        refused = json.loads(d.raw(b'{"jsonrpc":"2.0","id":1,"method":"daemon.info"}\n'))
        assert refused["id"] is None and refused["error"]["code"] == -32000
        assert "max_rpc_connections_per_uid = 3" in refused["error"]["message"]
        assert json.loads(read_line(busy[0]))["id"] == 0     # the sleep ends: that connection is idle again
        assert rpc_info(d, timeout_s=10)["version"]          # ... and makes room for a new one
        assert closed_by_peer(busy[0], 10)                   # the idle one it replaced
    finally:
        close_all(busy)


# --- the rate limiter, trusted proxies, the admin listener -----------------------------------------

def test_the_rate_limiter_table_is_bounded_with_twenty_thousand_sources():
    from tachyond.http import RateLimiter, limit_key

    limiter = RateLimiter(5, max_clients=10_000)
    sources = [f"2001:db8:{i >> 16:x}:{i & 0xffff:x}::1" for i in range(20_000)]   # 20,000 distinct /64s
    assert len({limit_key(s) for s in sources}) == 20_000
    for s in sources:
        assert limiter.allow(limit_key(s), now=100.0)
    assert len(limiter.buckets) == 10_000
    # the most recent 10,000 are the ones kept, with their spent token
    assert limit_key(sources[-1]) in limiter.buckets and limit_key(sources[0]) not in limiter.buckets
    # a client over its budget (burst 10) is refused, and stays tracked
    hot = limit_key("2001:db8:ffff:1::1")
    assert [limiter.allow(hot, now=200.0) for _ in range(11)] == [True] * 10 + [False]
    for s in sources[:5000]:
        limiter.allow(limit_key(s), now=200.0)
    assert len(limiter.buckets) == 10_000 and not limiter.allow(hot, now=200.0)
    # one host's addresses in a /64 share a bucket
    assert limit_key("2001:db8:1:2::1") == limit_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert limit_key("::ffff:192.0.2.1") == "192.0.2.1" and limit_key("192.0.2.1") == "192.0.2.1"


def test_x_forwarded_for_is_believed_only_from_trusted_proxies():
    from ipaddress import ip_network

    from tachyond.http import client_address

    trusted = [ip_network("10.0.0.0/8"), ip_network("127.0.0.1/32")]

    def scope(peer: str, *xff: str) -> dict:
        return {"client": (peer, 5555), "headers": [(b"x-forwarded-for", v.encode()) for v in xff]}

    assert client_address(scope("203.0.113.9", "198.51.100.1"), trusted) == "203.0.113.9"   # untrusted peer
    assert client_address(scope("127.0.0.1", "198.51.100.1"), trusted) == "198.51.100.1"
    # the client may write anything on the left; the rightmost untrusted hop is what our proxy saw
    assert client_address(scope("127.0.0.1", "3.18.12.63, 198.51.100.1"), trusted) == "198.51.100.1"
    assert client_address(scope("127.0.0.1", "3.18.12.63", "198.51.100.1, 10.1.2.3"), trusted) == "198.51.100.1"
    assert client_address(scope("127.0.0.1", "10.9.9.9, 10.1.2.3"), trusted) == "10.9.9.9"   # all trusted
    assert client_address(scope("127.0.0.1"), trusted) == "127.0.0.1"
    assert client_address(scope("127.0.0.1", "not-an-ip"), trusted) == "not-an-ip"
    assert client_address(scope("127.0.0.1", "198.51.100.1"), []) == "127.0.0.1"              # none trusted


def test_trusted_proxies_decide_allow_ips_and_the_rate_limit_on_a_real_daemon(limited):
    d = limited(http={"trusted_proxies": ["127.0.0.1/32"], "allow_ips": ["203.0.113.0/24"],
                      "rate_limit_per_s": 1}).start()
    url = http_url(d)

    def hook(source: str, xff: str | None) -> httpx.Response:
        return verified_webhook(url, source=source, timeout_s=10, headers={"X-Forwarded-For": xff} if xff else None)

    assert hook("127.0.0.1", "6.6.6.6, 203.0.113.7").status_code == 200    # the proxy saw 203.0.113.7
    refused = hook("127.0.0.1", "203.0.113.7, 6.6.6.6")                     # the proxy saw 6.6.6.6
    assert refused.status_code == 403 and refused.json()["error"] == "6.6.6.6 is not in http.allow_ips"
    spoofed = hook("127.0.0.2", "203.0.113.7")                              # not through the proxy
    assert spoofed.status_code == 403 and spoofed.json()["error"] == "127.0.0.2 is not in http.allow_ips"
    assert hook("127.0.0.1", None).status_code == 403                       # the proxy itself is no client
    # the rate limit counts the client behind the proxy: 203.0.113.7 spends its burst of 2 (1/s refill) ...
    statuses = [hook("127.0.0.1", "203.0.113.7").status_code for _ in range(6)]
    assert 429 in statuses and set(statuses) == {200, 429}
    # ... while another client behind the same proxy has not
    assert hook("127.0.0.1", "203.0.113.8").status_code == 200


def test_healthz_and_metrics_move_to_admin_listen_and_are_rate_limited(limited):
    d = limited(http={"admin_listen": ["127.0.0.1:0"], "rate_limit_per_s": 1}).start()
    url, admin = http_url(d, 0), http_url(d, 1)
    assert httpx.get(url + "/healthz", timeout=10).status_code == 404
    assert httpx.get(url + "/metrics", timeout=10).status_code == 404
    assert verified_webhook(url, timeout_s=10).status_code == 200               # webhooks stay on listen
    assert verified_webhook(admin, timeout_s=10).status_code == 404             # and only there
    ok = httpx.get(admin + "/healthz", timeout=10)
    assert ok.status_code == 200 and ok.json()["status"] == "ok"
    assert httpx.get(admin + "/metrics", timeout=10).status_code == 200
    statuses = [httpx.get(admin + "/healthz", timeout=10).status_code for _ in range(6)]   # burst 2, 1/s
    assert 429 in statuses and set(statuses) <= {200, 429}
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.3"), timeout=10) as other:
        assert other.get(admin + "/healthz").status_code == 200                 # per client
        text = other.get(admin + "/metrics").text
    assert metric_value(text, "tachyon_http_rate_limited_total", route="/healthz") == statuses.count(429)


def test_connection_and_deadline_keys_are_validated():
    from tachyond.config import ConfigError, from_mapping

    def bad(section: str, **kv: Any) -> str:
        with pytest.raises(ConfigError) as info:
            from_mapping({"daemon": {"data_dir": "/tmp/x", **(kv if section == "daemon" else {})},
                          **({"http": kv} if section == "http" else {})})
        return str(info.value)

    assert bad("http", request_timeout_s=0).startswith("http.request_timeout_s: must be between 1 and 3600")
    assert bad("http", max_connections=0) == "http.max_connections: must be at least 1, not 0"
    assert bad("http", trusted_proxies=["10.0.0.0/33"]).startswith(
        "http.trusted_proxies[0]: '10.0.0.0/33' is not an IP network"
    )
    assert bad("http", admin_listen=["8788"]).startswith("http.admin_listen[0]: '8788' is not HOST:PORT")
    assert bad("daemon", max_rpc_connections_per_uid=0).startswith(
        "daemon.max_rpc_connections_per_uid: must be at least 1"
    )
    assert bad("daemon", rpc_idle_timeout_s=-1).startswith("daemon.rpc_idle_timeout_s: must be zero or more")
    cfg = from_mapping({"daemon": {"data_dir": "/tmp/x"}, "http": {"max_connections": 25}})
    assert cfg.http.request_timeout_s == 10 and cfg.http.max_connections_per_address == 2
    assert cfg.daemon.max_rpc_connections == 1024 and cfg.daemon.max_rpc_connections_per_uid == 256


def test_over_tls_http11_only_and_a_stalled_handshake_is_cut_at_the_deadline(limited, sockdir):
    """With certfile/keyfile: webhooks are served over TLS (HTTP/1.1; h2 is not offered), and a client
    that connects and never completes the handshake is closed at request_timeout_s."""
    import ssl

    cert, key = self_signed_cert(sockdir)
    d = limited(http={"certfile": str(cert), "keyfile": str(key), "request_timeout_s": 2}).start()
    url = http_url(d)
    assert url.startswith("https://")
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(host_port(url), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.selected_alpn_protocol() == "http/1.1"
    with httpx.Client(verify=ctx, timeout=10) as client:
        session = {"id": "cos_tls", "object": "crypto.onramp_session", "metadata": {"tachyon_wallet": "tw_x"}}
        body = event_body(session)
        r = client.post(url + "/webhook/stripe", content=body,
                        headers={"Content-Type": "application/json", "Stripe-Signature": sign(body, WHSEC)})
        assert r.status_code == 200 and r.http_version == "HTTP/1.1"
    [stalled] = [socket.create_connection(host_port(url), timeout=10)]   # TCP only: no ClientHello
    try:
        assert closed_by_peer(stalled, 15)
    finally:
        stalled.close()
    assert d.proc.poll() is None
