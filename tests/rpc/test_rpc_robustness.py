"""Bad input on the socket never touches other clients: oversized lines, garbage, half requests, other uids."""

from __future__ import annotations

import grp
import json
import os
import pwd
import socket
import subprocess
import sys
import threading

import pytest
from conftest import base_document, require_root, run_ctl


def test_two_mib_line_gets_invalid_request_and_close_while_others_are_served(daemon_factory):
    d = daemon_factory().start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect(d.socket)
        chunk = b"x" * 65536
        answer = b""
        try:
            for _ in range(32):
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                answer += data
        except ConnectionResetError:
            pass
    msg = json.loads(answer.splitlines()[0])
    assert msg["error"]["code"] == -32600 and msg["id"] is None
    assert d.call("daemon.info")["version"]


def test_random_bytes_are_a_parse_error_and_the_daemon_goes_on(daemon_factory):
    d = daemon_factory().start()
    garbage = os.urandom(4096).replace(b"\n", b"") + b"\n"
    msg = json.loads(d.raw(garbage))
    assert msg == {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}
    assert d.call("daemon.info")["wallet"] == "absent"


def test_half_written_request_then_disconnect(daemon_factory):
    d = daemon_factory().start()
    for _ in range(20):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(d.socket)
            s.sendall(b'{"jsonrpc": "2.0", "method": "daemon.in')
    with d.client() as c:
        assert c.call("daemon.info")["uptime_s"] >= 0


def test_concurrent_clients_with_a_misbehaving_one(daemon_factory):
    """While one client streams garbage, 16 others get their answers."""
    d = daemon_factory().start()
    stop = threading.Event()

    def vandal():
        while not stop.is_set():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(d.socket)
                    s.sendall(os.urandom(1000) + b"\n" + b"{" * 1000)
            except OSError:
                pass

    t = threading.Thread(target=vandal)
    t.start()
    results = []

    def good():
        with d.client() as c:
            results.extend(c.call("daemon.info")["version"] for _ in range(20))

    workers = [threading.Thread(target=good) for _ in range(16)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    stop.set()
    t.join(10)
    assert len(results) == 16 * 20


def _nobody():
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        pytest.fail("the system has no 'nobody' user")
    return pw.pw_uid, pw.pw_gid


def _call_as(uid: int, gid: int, groups: list[int], socket_path: str) -> dict:
    """daemon.info over the socket from a child that dropped to uid/gid (imports done before the drop)."""
    code = ("import os,socket,json\n"
            f"os.setgroups({groups!r}); os.setgid({gid}); os.setuid({uid})\n"
            "s=socket.socket(socket.AF_UNIX); s.settimeout(10)\n"
            f"s.connect({socket_path!r})\n"
            "s.sendall(b'{\"jsonrpc\":\"2.0\",\"method\":\"daemon.info\",\"id\":1}\\n')\n"
            "buf=b''\n"
            "while not buf.endswith(b'\\n'):\n"
            "    c=s.recv(65536)\n"
            "    if not c: break\n"
            "    buf+=c\n"
            "print(buf.decode())\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[0])


def _test_group() -> int:
    group = "tachytest"
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        subprocess.run(["groupadd", "--system", group], check=True)
        return grp.getgrnam(group).gr_gid


def test_other_uid_is_refused_by_peer_credentials(daemon_factory, sockdir):
    """nobody can open the socket file (group mode) but SO_PEERCRED refuses it: not us, not root, not the group."""
    require_root()
    gid = _test_group()
    os.chmod(sockdir, 0o755)
    d = daemon_factory(base_document(sockdir, daemon={"socket_mode": "0660", "socket_group": "tachytest"})).start()
    uid, nogroup = _nobody()
    answer = _call_as(uid, nogroup, [gid], d.socket)
    assert "error" in answer and "permission denied" in answer["error"]["message"]
    assert "result" not in answer
    # tachyon-ctl treats the refusal like any unreachable daemon: exit 3, the daemon's reason on stderr.
    code = ("import os, sys\nfrom tachyon_ctl.cli import main, build_parser\nbuild_parser().format_help()\n"
            f"os.setgroups([{gid}]); os.setgid({nogroup}); os.setuid({uid})\n"
            f"sys.exit(main(['--socket', {d.socket!r}, 'status']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 3 and "refused this connection" in r.stderr and "permission denied" in r.stderr, r.stderr
    assert d.call("daemon.info")["version"]


def test_a_member_of_the_socket_group_is_served(daemon_factory, sockdir):
    require_root()
    gid = _test_group()
    os.chmod(sockdir, 0o755)
    d = daemon_factory(base_document(sockdir, daemon={"socket_mode": "0660", "socket_group": "tachytest"})).start()
    assert os.stat(d.socket).st_gid == gid and os.stat(d.socket).st_mode & 0o777 == 0o660
    uid, _ = _nobody()
    answer = _call_as(uid, gid, [gid], d.socket)
    assert answer["result"]["version"]


def test_other_uid_is_refused_by_socket_mode(daemon_factory, sockdir):
    """With the default 0600 the file mode refuses nobody; tachyon-ctl says so and exits 3."""
    require_root()
    os.chmod(sockdir, 0o755)
    d = daemon_factory().start()
    assert os.stat(d.socket).st_mode & 0o777 == 0o600
    uid, nogroup = _nobody()

    # Import as root, then drop: the interpreter lives under root's home, which nobody cannot read.
    code = ("import os, sys\nfrom tachyon_ctl.cli import main, build_parser\nbuild_parser().format_help()\n"
            f"os.setgroups([]); os.setgid({nogroup}); os.setuid({uid})\n"
            f"sys.exit(main(['--socket', {d.socket!r}, 'status']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 3 and "permission denied" in r.stderr


def test_socket_created_with_configured_mode(daemon_factory, sockdir):
    d = daemon_factory(base_document(sockdir, daemon={"socket_mode": "0660"})).start()
    assert os.stat(d.socket).st_mode & 0o777 == 0o660
    assert run_ctl("status", socket_path=d.socket).returncode == 0


@pytest.mark.parametrize("line", [
    b'{"jsonrpc":"2.0","method":"daemon.info","id":1,"params":[' + b"1" * 5000 + b"]}",
    b'{"jsonrpc":"2.0","method":"daemon.info","id":NaN}',
    b'{"jsonrpc":"2.0","method":"daemon.info","id":Infinity}',
    b'\xff\xfe{"jsonrpc":"2.0"}',
])
def test_json_edge_cases_are_parse_errors(daemon_factory, line):
    d = daemon_factory().start()
    msg = json.loads(d.raw(line + b"\n"))
    assert msg == {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}
    assert d.call("daemon.info")["version"]


def test_a_lone_surrogate_id_is_echoed_escaped(daemon_factory):
    d = daemon_factory().start()
    raw = d.raw(b'{"jsonrpc":"2.0","method":"daemon.info","id":"\\ud800"}\n')
    assert raw.endswith(b"\n") and raw.isascii()
    assert json.loads(raw)["id"] == "\ud800"
