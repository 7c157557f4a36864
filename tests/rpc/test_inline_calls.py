"""Calls answered in the connection's own task (methods that cannot reach a checkpoint), the idle timeout and
the start gate, on the real socket server (RpcServer on a real Unix socket, a real Dispatcher and Registry)
in this process; and a real tachyond whose first answer on the socket already names its HTTP listener.

A method whose handler is an ``async def`` without any ``await`` is run to its end where its line is read;
every other method keeps a task of its own, so a slow call never holds up what the client sends after it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tachyond.rpc.dispatch import Dispatcher, Registry, after_answer, current_connection
from tachyond.rpc.protocol import Method, Param
from tachyond.rpc.server import RpcServer


class Client:
    """A raw JSON-RPC client on the socket: writes lines, reads answer lines one at a time."""

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.buf = b""

    async def send(self, *docs: dict[str, Any]) -> None:
        await self.stream.send_all(b"".join(json.dumps(d).encode() + b"\n" for d in docs))

    async def line(self) -> Any:
        """The next line as JSON; None when the daemon closed the connection."""
        while b"\n" not in self.buf:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)


def make_registry(release: trio.Event) -> Registry:
    r = Registry()

    async def slow(p: dict[str, Any]) -> Any:
        await release.wait()
        return "slow"

    async def quick(p: dict[str, Any]) -> Any:
        return {"quick": p.get("n")}

    def plain(p: dict[str, Any]) -> Any:
        return "plain"

    async def fails(p: dict[str, Any]) -> Any:
        raise ValueError("no")

    async def watch(p: dict[str, Any]) -> Any:
        conn = current_connection()
        assert conn is not None
        answered = trio.Event()

        async def stream() -> None:
            await answered.wait()   # the answer goes out before the first notification
            await conn.notify("t.event", {"n": 1})

        conn.start_stream(stream, lambda reason: None)
        after_answer(answered.set)
        return "watching"

    r.add("t.slow", slow)
    r.add("t.quick", quick, [Param("n", "integer", required=False)])
    r.add("t.plain", plain)
    r.add("t.fails", fails)
    r.add("t.watch", watch)
    return r


@pytest.fixture
async def served(sockdir: Path) -> AsyncIterator[tuple[Path, trio.Event, RpcServer]]:
    release = trio.Event()
    server = RpcServer(Dispatcher(make_registry(release)), idle_timeout_s=5)
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        path = await nursery.start(server.serve, sockdir / "rpc.sock", 0o600, None, shutdown)
        yield path, release, server
        release.set()
        shutdown.set()


async def connect(path: Path) -> Client:
    return Client(await trio.open_unix_socket(str(path)))


def test_which_methods_run_in_the_connections_task():
    async def no_await(p):
        return 1

    async def awaits(p):
        await trio.sleep(0)

    async def async_for(p):
        async for _ in p:
            pass

    async def async_with(p):
        async with p:
            pass

    async def comprehension(p):
        return [x async for x in p]

    def plain(p):
        return 1

    def inline(fn: Any) -> bool:
        return Method("m", fn).inline

    assert inline(no_await)
    assert not any(inline(fn) for fn in (awaits, async_for, async_with, comprehension))
    # Not an async def whose own code is known: a call whose result is awaitable gets a task.
    assert not inline(plain) and not inline(functools.partial(no_await))


async def test_calls_that_cannot_wait_are_answered_while_a_slow_one_waits(served):
    """slow, then quick/plain/errors on the same connection: every later answer arrives while slow still waits
    (it waits for an event this test sets only after they all came), then slow's own answer."""
    path, release, _ = served
    with trio.fail_after(10):
        c = await connect(path)
        await c.send({"jsonrpc": "2.0", "method": "t.slow", "id": "slow"},
                     {"jsonrpc": "2.0", "method": "t.quick", "params": {"n": 1}, "id": "quick"},
                     {"jsonrpc": "2.0", "method": "t.quick"},   # a notification: no answer
                     {"jsonrpc": "2.0", "method": "t.plain", "id": "plain"},
                     {"jsonrpc": "2.0", "method": "t.fails", "id": "fails"},
                     {"jsonrpc": "2.0", "method": "t.quick", "params": {"n": "x"}, "id": "bad"},
                     {"jsonrpc": "2.0", "method": "t.nope", "id": "nope"})
        early = [await c.line() for _ in range(5)]
        assert [a["id"] for a in early] == ["quick", "plain", "fails", "bad", "nope"]
        assert early[0]["result"] == {"quick": 1} and early[1]["result"] == "plain"
        assert early[2]["error"]["code"] == -32603
        assert early[3]["error"]["code"] == -32602 and early[4]["error"]["code"] == -32601
        release.set()
        assert await c.line() == {"jsonrpc": "2.0", "result": "slow", "id": "slow"}


async def test_an_inline_calls_after_answer_hooks_run_once_its_answer_is_written(served):
    """A stream started by a call that runs in the connection's task waits for the call's answer hook:
    the answer comes first, then the stream's notification (it would never come if the hook were lost)."""
    path, _, _ = served
    with trio.fail_after(10):
        c = await connect(path)
        await c.send({"jsonrpc": "2.0", "method": "t.watch", "id": 1})
        assert await c.line() == {"jsonrpc": "2.0", "result": "watching", "id": 1}
        assert await c.line() == {"jsonrpc": "2.0", "method": "t.event", "params": {"n": 1}}


async def test_a_batch_of_inline_and_slow_calls_is_one_answer(served):
    path, release, _ = served
    with trio.fail_after(10):
        c = await connect(path)
        await c.send({"jsonrpc": "2.0", "method": "t.slow", "id": "s"})   # in flight while the batch is answered
        await c.stream.send_all(b'[{"jsonrpc":"2.0","method":"t.quick","id":1},'
                                b'{"jsonrpc":"2.0","method":"t.plain"},{"jsonrpc":"2.0","method":"t.plain","id":2}]\n')
        batch = await c.line()
        assert sorted(a["id"] for a in batch) == [1, 2]
        release.set()
        assert (await c.line())["id"] == "s"


async def test_idle_connections_close_after_the_timeout_and_busy_ones_stay(served, autojump_clock):
    """idle_timeout_s = 5 (virtual time): a connection with a call in flight, or half a line sent, stays open
    however long that lasts; one that calls every 4 s stays open; left idle, it is closed; once the busy ones
    are idle, they are closed too."""
    path, release, server = served
    with trio.fail_after(120):
        busy = await connect(path)
        await busy.send({"jsonrpc": "2.0", "method": "t.slow", "id": "slow"})
        partial = await connect(path)
        await partial.stream.send_all(b'{"jsonrpc": "2.0", "method": "t.quick", ')
        await trio.sleep(60)   # virtual: twelve idle timeouts pass for the two connections above
        idle = await connect(path)
        for n in range(3):   # each call starts the idle time over: 4 s apart, the connection stays open
            await idle.send({"jsonrpc": "2.0", "method": "t.quick", "id": n})
            assert (await idle.line())["id"] == n
            await trio.sleep(4)
        assert await idle.line() is None   # then, left alone, it is closed after the timeout
        await partial.stream.send_all(b'"id": "partial"}\n')
        assert (await partial.line())["id"] == "partial"
        release.set()
        assert (await busy.line())["id"] == "slow"
        assert await busy.line() is None and await partial.line() is None
        assert server.caps.slots == {}


async def test_with_wait_for_start_the_socket_answers_only_once_started(sockdir, autojump_clock):
    """The daemon's server waits for started() (called once HTTP listens): a client that connects earlier
    waits in the backlog and is answered once the daemon is up, never before."""
    server = RpcServer(Dispatcher(make_registry(trio.Event())), wait_for_start=True)
    async with trio.open_nursery() as nursery:
        path = await nursery.start(server.serve, sockdir / "rpc.sock", 0o600, None, trio.Event())
        c = await connect(path)
        await c.send({"jsonrpc": "2.0", "method": "t.quick", "id": 1})
        with trio.move_on_after(3600) as waited:   # virtual time: an hour without an answer
            await c.line()
        assert waited.cancelled_caught
        server.started()
        with trio.fail_after(10):
            assert await c.line() == {"jsonrpc": "2.0", "result": {"quick": None}, "id": 1}
        nursery.cancel_scope.cancel()


def test_a_daemons_first_answer_on_the_socket_already_lists_its_http_listeners(sockdir):
    """The socket answers once everything listens: the first daemon.info a client gets names the HTTP binds
    (before, the socket answered while hypercorn was still binding, and daemon.info said "http": [])."""
    import time

    from conftest import DaemonProc, base_document

    from tachyon_ctl.client import Client, DaemonNotRunning

    d = DaemonProc(sockdir, base_document(sockdir)).start(wait=False)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, d.stderr()
            try:
                with Client(d.socket, timeout_s=10) as c:
                    first = c.call("daemon.info")
                    break
            except (DaemonNotRunning, OSError):
                time.sleep(0.01)
        assert first["http"] and first["http"][0].startswith("http://127.0.0.1:")
    finally:
        d.kill()
