"""The HTTP connection guards' send deadline on real sockets: a response the peer does not read is cut once
http.request_timeout_s has passed (the socket closed, the send ends with BrokenResourceError), while a
connection whose peer reads is untouched."""

from __future__ import annotations

import socket

import pytest
import trio

from tachyond.config import from_mapping
from tachyond.http.guards import ConnectionLimits, GuardedStream, watch_sends
from tachyond.runtime.metrics import Metrics


def guarded_pair(limits: ConnectionLimits, registry: dict, key: str) -> tuple[GuardedStream, trio.SocketStream]:
    ours, peer = socket.socketpair()
    for s in (ours, peer):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stream = GuardedStream(trio.SocketStream(trio.socket.from_stdlib_socket(ours)), limits, "127.0.0.1", (key,),
                           registry)
    registry[(key,)] = stream
    return stream, trio.SocketStream(trio.socket.from_stdlib_socket(peer))


async def test_a_response_the_peer_does_not_read_is_cut_and_a_read_one_is_not(tmp_path):
    with trio.fail_after(30):
        cfg = from_mapping({"daemon": {"data_dir": str(tmp_path), "socket": str(tmp_path / "rpc.sock")},
                            "http": {"listen": ["127.0.0.1:0"], "request_timeout_s": 2}}).http
        assert cfg is not None
        limits = ConnectionLimits("public", cfg, Metrics(), [])
        registry: dict = {}
        stalled, silent_peer = guarded_pair(limits, registry, "stalled")
        served, reading_peer = guarded_pair(limits, registry, "served")
        assert limits.open_total == 2
        response = b"HTTP/1.1 200 OK\r\ncontent-length: 4000000\r\n\r\n" + b"x" * 4_000_000
        got = bytearray()

        async def read_all() -> None:
            while len(got) < len(response):
                got.extend(await reading_peer.receive_some(65536))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_sends, registry, 0.05)
            nursery.start_soon(read_all)
            await served.send_all(response)                   # read by its peer: sent whole
            with pytest.raises(trio.BrokenResourceError, match="did not read the response"):
                await stalled.send_all(response)              # never read: cut at the deadline
            nursery.cancel_scope.cancel()
        assert bytes(got) == response
        assert served.send_by == stalled.send_by == float("inf")   # nothing left for the watch
        for stream in (stalled, served, silent_peer, reading_peer):
            await stream.aclose()
        assert limits.open_total == 0 and registry == {}
