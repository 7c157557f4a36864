"""Every example of the JSON-RPC 2.0 specification, answered exactly as the specification shows.

The specification's methods (subtract, sum, update, notify_hello, notify_sum, get_data) are served by the
test plugin under its namespace ``spec.``; the answers do not name methods, so they are the spec's own.
"""

from __future__ import annotations

import json

import pytest
from conftest import base_document


@pytest.fixture(scope="module")
def spec_daemon(tmp_path_factory):
    import shutil
    import tempfile
    from pathlib import Path

    from conftest import DaemonProc

    d = Path(tempfile.mkdtemp(prefix="ty-", dir="/tmp"))
    proc = DaemonProc(d, base_document(d), test_plugin=True).start()
    yield proc
    proc.kill()
    shutil.rmtree(d, ignore_errors=True)


def send(daemon, text: str):
    """One line in; the parsed answer line, or None when the daemon sends nothing."""
    line = text.replace("\n", " ").encode() + b"\n"
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.5)
        s.connect(daemon.socket)
        s.sendall(line)
        buf = b""
        try:
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except TimeoutError:
            return None
    return json.loads(buf) if buf else None


def spec(text: str) -> str:
    """The specification's method names, under the test plugin's namespace."""
    for name in ("subtract", "update", "sum", "notify_hello", "notify_sum", "get_data"):
        text = text.replace(f'"method": "{name}"', f'"method": "spec.{name}"')
    return text


CASES = [
    (
        '{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}',
        {"jsonrpc": "2.0", "result": 19, "id": 1},
    ),
    (
        '{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}',
        {"jsonrpc": "2.0", "result": -19, "id": 2},
    ),
    (
        '{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}',
        {"jsonrpc": "2.0", "result": 19, "id": 3},
    ),
    (
        '{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, "id": 4}',
        {"jsonrpc": "2.0", "result": 19, "id": 4},
    ),
    ('{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}', None),
    ('{"jsonrpc": "2.0", "method": "foobar"}', None),
    (
        '{"jsonrpc": "2.0", "method": "foobar", "id": "1"}',
        {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"},
    ),
    (
        '{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]',
        {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None},
    ),
    (
        '{"jsonrpc": "2.0", "method": 1, "params": "bar"}',
        {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None},
    ),
    (
        '[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"}, {"jsonrpc": "2.0", "method"]',
        {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None},
    ),
    ("[]", {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}),
    ("[1]", [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}]),
    ("[1,2,3]", [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}] * 3),
    (
        """[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
    ]""",
        [
            {"jsonrpc": "2.0", "result": 7, "id": "1"},
            {"jsonrpc": "2.0", "result": 19, "id": "2"},
            {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None},
            {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"},
            {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"},
        ],
    ),
    (
        """[
        {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}
    ]""",
        None,
    ),
]


@pytest.mark.parametrize("request_text,expected", CASES, ids=[f"example{i}" for i in range(len(CASES))])
def test_specification_example(spec_daemon, request_text, expected):
    assert send(spec_daemon, spec(request_text)) == expected


def test_invalid_params_name_the_param(spec_daemon):
    missing = send(spec_daemon, '{"jsonrpc": "2.0", "method": "spec.subtract", "params": {"minuend": 1}, "id": 7}')
    assert missing["error"]["code"] == -32602 and "subtrahend" in missing["error"]["message"]
    unknown = send(
        spec_daemon,
        '{"jsonrpc": "2.0", "method": "spec.subtract", "params": {"minuend": 1, "subtrahend": 2, "bogus": 3}, "id": 8}',
    )
    assert unknown["error"]["code"] == -32602 and "bogus" in unknown["error"]["message"]
    mistyped = send(
        spec_daemon,
        '{"jsonrpc": "2.0", "method": "spec.subtract", "params": {"minuend": "1", "subtrahend": 2}, "id": 9}',
    )
    assert mistyped["error"]["code"] == -32602 and "minuend" in mistyped["error"]["message"]
    too_many = send(spec_daemon, '{"jsonrpc": "2.0", "method": "daemon.info", "params": [1], "id": 10}')
    assert too_many["error"]["code"] == -32602


def test_many_requests_in_flight_on_one_connection(spec_daemon):
    """A slow call does not hold up a quick one sent after it on the same connection."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(spec_daemon.socket)
        s.sendall(b'{"jsonrpc":"2.0","method":"test.sleep","params":[1.0],"id":"slow"}\n'
                  b'{"jsonrpc":"2.0","method":"daemon.info","id":"quick"}\n')
        buf = b""
        while buf.count(b"\n") < 2:
            buf += s.recv(65536)
    first, second = (json.loads(line) for line in buf.splitlines())
    assert first["id"] == "quick" and second["id"] == "slow" and second["result"] == {"slept": 1.0}


def test_pipelined_requests_each_get_their_answer_once(spec_daemon):
    """A client writes 300 requests (mixed: quick, failing, a notification, non-ASCII ids) before reading:
    every request with an id is answered exactly once, each answer a whole line, none for the notification."""
    import socket

    reqs, expected = [], {}
    for i in range(300):
        if i % 50 == 7:
            reqs.append({"jsonrpc": "2.0", "method": "daemon.info"})   # a notification: no answer
            continue
        rid = f"é-{i}" if i % 3 else i
        if i % 10 == 3:
            reqs.append({"jsonrpc": "2.0", "method": "nope.nothing", "id": rid})
            expected[json.dumps(rid)] = "error"
        else:
            reqs.append({"jsonrpc": "2.0", "method": "spec.subtract", "params": [i, 1], "id": rid})
            expected[json.dumps(rid)] = i - 1
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect(spec_daemon.socket)
        s.sendall(b"".join(json.dumps(r).encode() + b"\n" for r in reqs))
        buf = b""
        while buf.count(b"\n") < len(expected):
            chunk = s.recv(65536)
            assert chunk, "the daemon closed the connection"
            buf += chunk
        s.sendall(b'{"jsonrpc":"2.0","method":"daemon.info","id":"last"}\n')
        while not buf.endswith(b'"id":"last"}\n'):
            buf += s.recv(65536)
    answers = [json.loads(line) for line in buf.splitlines()[:-1]]
    got = {json.dumps(a["id"]): a.get("result", "error" if "error" in a else None) for a in answers}
    assert len(answers) == len(expected) and got == expected


def test_a_client_that_never_reads_is_not_read_without_bound(spec_daemon):
    """A client pipelining quick calls (answered in the connection's task) and calls with a task of their own,
    and never reading its answers: once the answers back up, the daemon stops reading it, so the client's
    writes block after the sockets' buffers fill instead of queueing answers in the daemon without end."""
    import socket
    import time

    chunk = (b'{"jsonrpc":"2.0","method":"test.sleep","params":[0],"id":1}\n'
             + b'{"jsonrpc":"2.0","method":"daemon.info","id":2}\n' * 100)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(spec_daemon.socket)
        s.setblocking(False)
        sent, stalled_since = 0, None
        while sent < 64 << 20:
            try:
                sent += s.send(chunk)
                stalled_since = None
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 3:
                    break   # the daemon stopped reading this client
                time.sleep(0.01)
    assert sent < 64 << 20, "the daemon kept reading (and queueing answers for) a client that never reads"
    assert spec_daemon.call("daemon.info")["version"]   # and it serves the others
