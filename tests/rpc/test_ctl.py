"""tachyon-ctl: exit codes, JSON vs tables, help from rpc.discover, the socket from flag or environment."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

from conftest import base_document, run_ctl, write_config


def on_a_terminal(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run tachyon-ctl with stdout on a pseudo-terminal, as a person would see it."""
    master, slave = pty.openpty()
    e = {**os.environ, **(env or {})}
    p = subprocess.Popen(
        [sys.executable, "-m", "tachyon_ctl", *args], stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, env=e
    )
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return p.wait(30), out.decode(errors="replace").replace("\r\n", "\n")


def test_exit_codes(daemon_factory, sockdir):
    d = daemon_factory(test_plugin=True).start()
    ok = run_ctl("status", socket_path=d.socket)
    assert ok.returncode == 0 and json.loads(ok.stdout)["wallet"] == "absent"  # not a tty: JSON
    rpc_error = run_ctl("call", "test.boom", socket_path=d.socket)
    assert rpc_error.returncode == 1 and "testplugin" in rpc_error.stderr
    unknown = run_ctl("call", "nope.nothing", socket_path=d.socket)
    assert unknown.returncode == 1 and "Method not found" in unknown.stderr
    usage = run_ctl("frobnicate", socket_path=d.socket)
    assert usage.returncode == 2
    bad_json = run_ctl("call", "daemon.info", "{not json", socket_path=d.socket)
    assert bad_json.returncode == 2 and "not JSON" in bad_json.stderr
    unreachable = run_ctl("status", socket_path=str(sockdir / "absent.sock"))
    assert unreachable.returncode == 3 and "not running" in unreachable.stderr


def test_call_with_positional_and_named_params(daemon_factory):
    d = daemon_factory(test_plugin=True).start()
    r = run_ctl("call", "spec.subtract", "[10, 4]", socket_path=d.socket)
    assert r.returncode == 0 and json.loads(r.stdout) == 6
    r = run_ctl("--json", "call", "spec.subtract", '{"minuend": 1, "subtrahend": 4}', socket_path=d.socket)
    assert json.loads(r.stdout) == -3


def test_socket_from_environment(daemon_factory):
    d = daemon_factory().start()
    r = run_ctl("status", env={"TACHYON_SOCKET": d.socket})
    assert r.returncode == 0 and json.loads(r.stdout)["version"]


def test_human_output_on_a_terminal(daemon_factory):
    d = daemon_factory(test_plugin=True).start()
    code, out = on_a_terminal("--socket", d.socket, "plugins")
    assert code == 0
    header = out.splitlines()[0].split()
    assert header == ["NAME", "VERSION", "BUILTIN", "HOOKS"]
    assert any(line.startswith("testplugin") and " no " in line for line in out.splitlines())
    code, out = on_a_terminal("--socket", d.socket, "status")
    assert code == 0 and any(line.startswith("wallet") and "absent" in line for line in out.splitlines())
    code, out = on_a_terminal("--socket", d.socket, "--json", "status")
    assert json.loads(out)["wallet"] == "absent"


def test_help_is_rendered_from_rpc_discover(daemon_factory):
    d = daemon_factory(test_plugin=True).start()
    code, out = on_a_terminal("--socket", d.socket, "help")
    assert code == 0 and "daemon.info" in out and "spec.subtract" in out
    code, out = on_a_terminal("--socket", d.socket, "help", "spec.subtract")
    assert code == 0 and "minuend" in out and "testplugin" in out
    code, out = on_a_terminal("--socket", d.socket, "help", "no.such")
    assert code == 2


def test_ctl_imports_only_the_standard_library():
    code = (
        "import sys\nbefore=set(sys.modules)\nimport tachyon_ctl.cli\n"
        "new=[m for m in set(sys.modules)-before if not m.startswith(('tachyon_ctl','encodings'))]\n"
        "import sysconfig\nstd=sysconfig.get_paths()['stdlib']\n"
        "bad=[m for m in new if getattr(sys.modules[m],'__file__',None) and not sys.modules[m].__file__.startswith(std)]\n"  # noqa: E501 (one line on purpose)
        "print(bad)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


def test_password_is_never_an_argument():
    r = run_ctl("wallet", "unlock", "--password", "hunter2")
    assert r.returncode == 2


def test_options_after_the_command(daemon_factory):
    d = daemon_factory().start()
    code, out = on_a_terminal("status", "--json", "--socket", d.socket)
    assert code == 0 and json.loads(out)["version"]
    code, out = on_a_terminal("dex", "markets", "--socket", d.socket, "--json")
    assert code == 0 and json.loads(out) == []


def test_a_socket_that_does_not_speak_json_rpc_is_exit_3(sockdir):
    import socket
    import threading

    path = str(sockdir / "not-tachyond.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen()

    def serve():
        conn, _ = srv.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n\n")
        conn.close()

    t = threading.Thread(target=serve)
    t.start()
    r = run_ctl("status", socket_path=path)
    t.join(10)
    srv.close()
    assert r.returncode == 3 and "not JSON-RPC" in r.stderr and "Traceback" not in r.stderr


def test_client_batch_sends_independent_calls_in_one_json_rpc_batch(daemon_factory):
    from tachyon_ctl.client import Client, RpcError

    d = daemon_factory().start()
    with Client(d.socket) as c:
        info, tokens, methods = c.batch([("daemon.info", None), ("tokens.list", None), ("rpc.discover", {})])
        assert info["wallet"] == "absent" and isinstance(tokens, list) and "methods" in methods
        try:
            c.batch([("daemon.info", None), ("nope.nothing", None), ("tokens.list", None)])
        except RpcError as exc:
            assert exc.code == -32601 and exc.data["index"] == 1
        else:
            raise AssertionError("a failed call in a batch must raise")
        assert c.batch([]) == []
        assert c.call("daemon.info")["wallet"] == "absent"  # the connection still serves single calls


def test_config_on_a_terminal_puts_the_value_last_and_says_how_the_last_reload_went(daemon_factory, sockdir):
    doc = base_document(sockdir, tokens=[{"symbol": "USDC", "decimals": 6}, {"symbol": "ZEC", "decimals": 8}],
                        markets=[{"symbol": "ZEC/USDC", "engine": "memory", "tick": "0.01", "lot": "0.0001",
                                  "min_notional": "1", "maker_fee_bps": 10, "taker_fee_bps": 20}])
    d = daemon_factory(doc).start()
    code, text = on_a_terminal("--socket", d.socket, "config")
    assert code == 0, text
    lines = text.splitlines()
    assert lines[0] == f"# {sockdir / 'tachyond.toml'}: 0 reload(s) applied"
    assert lines[1].split() == ["KEY", "FROM", "VALUE"]
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in lines[2:]}
    assert rows["daemon.socket"] == ["file", d.socket]
    assert rows["daemon.log_format"] == ["default", "text"]
    assert rows["markets[0]"][0] == "file" and rows["markets[0]"][1].startswith('{"symbol":"ZEC/USDC"')
    # A refused reload (a restart-only key changed) is in the header, not only in the daemon's log.
    write_config(sockdir, dict(doc, daemon={**doc["daemon"], "socket": str(sockdir / "other.sock")}))
    code, text = on_a_terminal("--socket", d.socket, "reload")
    assert code == 1 and "daemon.socket: changing this needs a restart" in text
    code, text = on_a_terminal("--socket", d.socket, "config")
    assert code == 0 and text.splitlines()[0].startswith(
        f"# {sockdir / 'tachyond.toml'}: 0 reload(s) applied; last reload (daemon.reload RPC, ")
    assert "REFUSED: daemon.socket: changing this needs a restart" in text.splitlines()[0]
