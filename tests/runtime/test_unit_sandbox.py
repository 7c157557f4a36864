"""config/tachyond.service: `scripts/check-unit` (verify clean, exposure <= 2.5), and tachyond starts and works
under the unit's seccomp filters (SystemCallFilter, MemoryDenyWriteExecute, RestrictAddressFamilies),
loaded by tests/fixtures/unit_sandbox_exec.py as systemd would load them, with Type=notify's READY=1."""

from __future__ import annotations

import ctypes.util
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, DaemonProc, require_tool, write_config
from test_dex_helpers import PASSWORD, dex_document

UNIT = ROOT / "config" / "tachyond.service"
LAUNCHER = ROOT / "tests" / "fixtures" / "unit_sandbox_exec.py"


def test_check_unit_script_passes_on_the_shipped_unit_and_fails_a_weak_one(tmp_path):
    require_tool("systemd-analyze")
    ok = subprocess.run([str(ROOT / "scripts" / "check-unit")], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    score = float(ok.stdout.split("exposure ")[1].split()[0])
    assert score <= 2.5
    weak = tmp_path / "tachyond.service"
    weak.write_text("\n".join(line for line in UNIT.read_text().splitlines()
                              if not line.startswith(("SystemCallFilter", "CapabilityBoundingSet", "PrivateUsers",
                                                      "ProtectProc", "ProcSubset", "PrivateDevices"))))
    bad = subprocess.run([str(ROOT / "scripts" / "check-unit"), str(weak)], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1 and "is above 2.5" in bad.stderr


def test_daemon_starts_notifies_and_serves_under_the_units_syscall_filter(sockdir):
    require_tool("systemd-analyze")
    if ctypes.util.find_library("seccomp") is None:
        pytest.fail("libseccomp (a dependency of systemd) is needed to load the unit's filters")
    notify_path = str(sockdir / "notify.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(notify_path)
    rx.settimeout(30)
    doc = dex_document(sockdir, "sqlite")
    d = DaemonProc(sockdir, doc, env={"NOTIFY_SOCKET": notify_path})
    config = write_config(sockdir, doc)
    d._stderr = open(d.stderr_path, "ab")
    d._stdout = open(d.stdout_path, "ab")
    try:
        d.proc = subprocess.Popen([sys.executable, str(LAUNCHER), str(UNIT), "--", sys.executable, "-m", "tachyond",
                                   "--config", str(config)], cwd=sockdir, env=d.env, stdout=d._stdout,
                                  stderr=d._stderr, stdin=subprocess.DEVNULL)
        ready = rx.recv(4096).decode()
        while "READY=1" not in ready:
            ready = rx.recv(4096).decode()
        assert "STATUS=serving on" in ready, d.stderr()
        assert d.proc.poll() is None
        assert "Seccomp:\t2" in Path(f"/proc/{d.proc.pid}/status").read_text()  # filtered, as under systemd
        d.call("wallet.create", {"password": PASSWORD})
        d.call("wallet.lock")
        d.call("wallet.unlock", {"password": PASSWORD})
        d.call("ledger.deposit", {"token": "USDC", "amount": "100", "reference": "r1"})
        placed = d.call("dex.place_order", {"market": "ZEC/USDC", "side": "buy", "type": "limit", "qty": "1",
                                            "price": "10.00"})
        assert placed["status"] == "open"
        d.call("wallet.backup", {"path": str(sockdir / "backup.db")})
        http = d.call("daemon.info")["http"][0]
        base = http if http.startswith("http") else f"http://{http}"
        with urllib.request.urlopen(f"{base}/healthz", timeout=10) as resp:
            assert resp.status == 200
        d.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        messages = []
        while time.monotonic() < deadline and not any("STOPPING=1" in m for m in messages):
            messages.append(rx.recv(4096).decode())
        assert d.proc.wait(30) == 0, d.stderr()
        log = d.stderr()
        for trouble in ("Operation not permitted", "core dumps could not", "Traceback", "Bad system call"):
            assert trouble not in log, log
    finally:
        rx.close()
        d.kill()
        d._stderr.close()
        d._stdout.close()
