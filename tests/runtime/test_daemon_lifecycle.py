"""The daemon as a process: --dev, graceful stop under load, systemd notify, socket ownership, bad configs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import DaemonProc, base_document, run_ctl, write_config

from tachyon_ctl.client import RpcError


def test_dev_mode_starts_and_ctl_status_reaches_it(sockdir):
    d = DaemonProc(sockdir, {}, args=["--dev"], cwd=sockdir)
    d.start(timeout_s=60)
    try:
        r = run_ctl("--json", "status", socket_path=str(sockdir / ".tachyon-dev" / "rpc.sock"))
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)
        assert info["dev"] is True and info["version"]
        env_line = f"export TACHYON_SOCKET={(sockdir / '.tachyon-dev' / 'rpc.sock').resolve()}"
        deadline = time.monotonic() + 10
        while env_line not in d.stdout() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert d.stdout().splitlines() == [env_line]  # once, alone on stdout, ready to paste
        assert env_line not in d.stderr()
        assert "NOT FOR REAL MONEY" in d.stderr()
        r2 = run_ctl("status", env={"TACHYON_SOCKET": str(sockdir / ".tachyon-dev" / "rpc.sock")})
        assert r2.returncode == 0
        # The embedded default: wallet created and unlocked, the maker's asks resting on both markets.
        deadline = time.monotonic() + 30
        books: list = []
        while time.monotonic() < deadline:
            try:  # seeding creates the wallet after the socket listens: until then the DEX answers an error
                books = [d.call("dex.order_book", {"market": m}) for m in ("ZEC/USDC", "BASE/USDC")]
            except RpcError:
                books = []
            if books and all(b["asks"] for b in books):
                break
            time.sleep(0.2)
        assert all(b["asks"] and not b["bids"] for b in books), books
        info = d.call("daemon.info")
        assert info["wallet"] == "unlocked" and info["onramp_providers"] == ["stripe"]
        assert set(info["markets"]) == {"ZEC/USDC", "BASE/USDC"}
        maker = {b["token"]: b for b in d.call("ledger.balances", {"account": "maker"})}
        assert maker["ZEC"]["locked_minor"] > 0 and maker["BASE"]["locked_minor"] > 0
        # make run pays through the daemon's embedded page, which mounts the emulator's stand-in widget.
        session = d.call("onramp.create_session", {"destination_address": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
                                                   "amount": "5"})
        assert session["url_kind"] == "embedded" and session["url"] == f"http://127.0.0.1:8787/onramp/{session['id']}"
        import httpx

        page = httpx.get(session["url"], timeout=10)
        assert page.status_code == 200 and 'src="http://127.0.0.1:12111/crypto-onramp-outer.js"' in page.text
        assert httpx.get("http://127.0.0.1:12111/crypto-onramp-outer.js", timeout=10).status_code == 200
    finally:
        assert d.stop() == 0
    assert not (sockdir / ".tachyon-dev" / "rpc.sock").exists()



def _log_path() -> str:
    """Where the test plugin records its hook calls, in a fresh temp dir."""
    import tempfile

    return os.path.join(tempfile.mkdtemp(prefix="ty-log-"), "plugin.log")


def _plugin_log(d) -> str:
    try:
        with open(d.env["TACHYON_TESTPLUGIN_LOG"]) as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


def _wait_for(condition, what: str, timeout_s: float = 20) -> None:
    """Poll until ``condition()`` holds (the event a test waits for, instead of a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)

def test_sigterm_while_20_clients_are_mid_call(daemon_factory):
    d = daemon_factory(test_plugin=True, env={"TACHYON_TESTPLUGIN_LOG": _log_path()}).start()
    outcomes: list[str] = []
    lock = threading.Lock()
    started = threading.Barrier(21)

    def client(i: int) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(d.socket)
            started.wait()
            s.sendall(json.dumps({"jsonrpc": "2.0", "method": "test.sleep", "params": [1.5], "id": i}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        with lock:
            if not buf:
                outcomes.append("closed")
            else:
                msg = json.loads(buf)
                assert msg["id"] == i
                outcomes.append(
                    "answered" if msg.get("result") == {"slept": 1.5} else f"refused {msg['error']['code']}"
                )

    threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    started.wait()
    _wait_for(lambda: _plugin_log(d).count('"sleep_started"') == 20, "20 calls in flight")
    d.signal(signal.SIGTERM)
    for t in threads:
        t.join(30)
    assert d.wait(30) == 0
    assert len(outcomes) == 20
    # In-flight calls are drained, not dropped: every one of them is answered.
    assert outcomes == ["answered"] * 20, outcomes
    assert not os.path.exists(d.socket)


def test_calls_arriving_during_the_drain_are_refused_cleanly(daemon_factory):
    d = daemon_factory(test_plugin=True, env={"TACHYON_TESTPLUGIN_LOG": _log_path()}).start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(d.socket)
        s.sendall(b'{"jsonrpc":"2.0","method":"test.sleep","params":[1.5],"id":"slow"}\n')
        _wait_for(lambda: '"sleep_started"' in _plugin_log(d), "the slow call in flight")
        d.signal(signal.SIGTERM)
        _wait_for(lambda: "stopping: " in d.stderr(), "the daemon draining")
        s.sendall(b'{"jsonrpc":"2.0","method":"spec.get_data","id":"late"}\n')
        buf = b""
        while buf.count(b"\n") < 2:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    answers = {m["id"]: m for m in map(json.loads, buf.splitlines())}
    assert answers["slow"]["result"] == {"slept": 1.5}
    assert answers["late"]["error"]["code"] == -32050 and "stopping" in answers["late"]["error"]["message"]
    assert d.wait(30) == 0


def test_sigint_and_daemon_stop_exit_zero(daemon_factory):
    d = daemon_factory().start()
    d.signal(signal.SIGINT)
    assert d.wait(30) == 0
    d2 = daemon_factory().start()
    assert run_ctl("stop", socket_path=d2.socket).returncode == 0
    assert d2.wait(30) == 0 and not os.path.exists(d2.socket)


def test_systemd_notify_datagrams(daemon_factory, sockdir):
    notify_path = str(sockdir / "notify.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(notify_path)
    rx.settimeout(20)
    d = daemon_factory(env={"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "200000"})
    d.start()
    messages = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and sum("WATCHDOG=1" in m for m in messages) < 2:
        messages.append(rx.recv(4096).decode())
    d.signal(signal.SIGTERM)
    while not any("STOPPING=1" in m for m in messages):
        messages.append(rx.recv(4096).decode())
    assert d.wait(30) == 0
    rx.close()
    ready = next(m for m in messages if "READY=1" in m)
    assert "STATUS=serving on" in ready and f"MAINPID={d.proc.pid}" in ready
    assert sum("WATCHDOG=1" in m for m in messages) >= 2
    assert messages.index(ready) < max(i for i, m in enumerate(messages) if "WATCHDOG=1" in m)


def test_second_daemon_on_a_live_socket_is_refused(daemon_factory, sockdir):
    first = daemon_factory().start()
    second = DaemonProc(sockdir, first.doc)
    second.stderr_path = sockdir / "second.stderr"
    second.start(wait=False)
    assert second.wait(30) == 1
    assert "already running" in second.stderr()
    assert first.call("daemon.info")["version"]


def test_stale_socket_file_is_removed(daemon_factory, sockdir):
    d = daemon_factory().start()
    d.kill()
    assert os.path.exists(d.socket)  # SIGKILL leaves the file behind
    d2 = daemon_factory(d.doc).start()
    assert d2.call("daemon.info")["version"]


@pytest.mark.parametrize(
    "patch,key",
    [
        ({"daemon": {"bindd": "x"}}, "daemon.bindd"),
        ({"daemon": {"log_level": 3}}, "daemon.log_level"),
        ({"http": {"listen": ["127.0.0.1:99999"]}}, "http.listen[0]"),
        ({"http": {"listen": ["not-an-address"]}}, "http.listen[0]"),
        (
            {
                "tokens": [{"symbol": "USDC", "decimals": 6}],
                "markets": [{"symbol": "ZEC/USDC", "tick": "0.01", "lot": "1", "min_notional": "1"}],
            },
            "markets[0].symbol",
        ),
        (
            {
                "tokens": [{"symbol": "USDC", "decimals": 2}, {"symbol": "ZEC", "decimals": 8}],
                "markets": [{"symbol": "ZEC/USDC", "tick": "0.01", "lot": "0.0001", "min_notional": "1"}],
            },
            "markets[0].lot",
        ),
        (
            {
                "tokens": [{"symbol": "USDC", "decimals": 6}, {"symbol": "ZEC", "decimals": 8}],
                "markets": [
                    {"symbol": "ZEC/USDC", "engine": "quantum", "tick": "0.01", "lot": "0.0001", "min_notional": "1"}
                ],
            },
            "markets[0].engine",
        ),
    ],
)
def test_bad_config_stops_start_with_the_dotted_key(sockdir, patch, key):
    doc = base_document(sockdir)
    for section, value in patch.items():
        doc[section] = {**doc[section], **value} if isinstance(value, dict) and section in doc else value
    path = write_config(sockdir, doc)
    r = subprocess.run(
        [sys.executable, "-m", "tachyond", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode in (1, 2)
    lines = [line for line in r.stderr.splitlines() if line.startswith("tachyond:")]
    assert len(lines) == 1 and key in lines[0], r.stderr
    check = subprocess.run([sys.executable, "-m", "tachyond", "--check-config", "--config", str(path)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode != 0 and key in check.stderr


def test_print_default_config_round_trips(sockdir):
    r = subprocess.run(
        [sys.executable, "-m", "tachyond", "--print-default-config"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0
    import tomllib

    doc = tomllib.loads(r.stdout)
    assert doc["daemon"]["socket_mode"] == "0600" and doc["onramp"]["stripe"]["secret_key_env"] == "STRIPE_SECRET_KEY"
    path = sockdir / "default.toml"
    path.write_text(r.stdout)
    check = subprocess.run(
        [sys.executable, "-m", "tachyond", "--check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "STRIPE_SECRET_KEY": "sk_test_check", "STRIPE_WEBHOOK_SECRET": "whsec_check"},
    )
    assert check.returncode == 0, check.stderr
    assert "sk_test_check" not in check.stdout + check.stderr


def test_missing_config_file_is_one_clear_line(sockdir):
    r = subprocess.run(
        [sys.executable, "-m", "tachyond", "--config", str(sockdir / "nope.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "does not exist" in r.stderr


def _one_line_failure(path, expect_code: int, expect_text: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "tachyond", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == expect_code, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tachyond: ") and expect_text in lines[0], r.stderr


def test_busy_http_port_is_one_line(sockdir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = write_config(sockdir, base_document(sockdir, http={"listen": [f"127.0.0.1:{port}"]}))
        _one_line_failure(path, 1, "http.listen")


def test_wrong_password_file_is_one_line(sockdir):
    import trio

    from tachyond.wallet.wallet import Wallet

    async def create() -> None:
        async with Wallet(sockdir / "data") as w:
            await w.create("the right one")

    trio.run(create)
    (sockdir / "pw").write_text("not it\n")
    path = write_config(sockdir, base_document(sockdir, wallet={"password_file": str(sockdir / "pw")}))
    _one_line_failure(path, 1, "wallet.password_file: wrong password")


def test_provider_table_without_its_plugin_is_a_config_error(sockdir):
    path = write_config(sockdir, base_document(sockdir, onramp={"paypal": {"x": 1}}))
    _one_line_failure(path, 2, "onramp.paypal")
    path = write_config(sockdir, base_document(sockdir, engines={"quantum": {}}))
    _one_line_failure(path, 2, "engines.quantum")
    path = write_config(sockdir, base_document(sockdir, engines={"sqlite": {"bogus": 1}}))
    _one_line_failure(path, 2, "engines.sqlite.bogus")
    path = write_config(sockdir, base_document(sockdir, engines={"memory": {"log_limit": 0}}))
    _one_line_failure(path, 2, "engines.memory.log_limit")


def test_unreadable_tls_files_name_their_key(sockdir):
    (sockdir / "key.pem").write_text("not checked before the certificate")
    doc = base_document(sockdir, http={"listen": ["127.0.0.1:0"], "certfile": str(sockdir / "missing.pem"),
                                       "keyfile": str(sockdir / "key.pem")})
    _one_line_failure(write_config(sockdir, doc), 2, "http.certfile: cannot read")


def test_data_dir_that_cannot_be_created_names_the_key(sockdir):
    (sockdir / "a-file").write_text("data_dir cannot live under a regular file, even for root")
    doc = base_document(sockdir)
    doc["daemon"]["data_dir"] = str(sockdir / "a-file" / "data")
    _one_line_failure(write_config(sockdir, doc), 1, "daemon.data_dir: cannot create")
