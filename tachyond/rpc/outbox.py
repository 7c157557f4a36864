"""A connection's answers on their way out: one write carries every answer ready by then."""

from __future__ import annotations

from collections.abc import Callable

import trio


class Outbox:
    """A connection's answers on their way out: one write carries every answer ready by then.

    The first answering task to find nobody sending becomes the sender: it takes the connection's send lock
    (without a checkpoint when it is free; ``notify`` holds it too, so nothing interleaves) and writes what
    is pending until nothing is. Answers that arrive meanwhile are appended and their tasks return at once;
    the sender writes them in its next ``send_all``, and runs their after-answer hooks only once their bytes
    are on the socket. With pipelining clients (or many calls finishing in one group commit), that is one
    system call and one trio checkpoint for many answers instead of a lock round trip and a write each.
    """

    __slots__ = ("stream", "lock", "pending", "hooks", "sending")

    def __init__(self, stream: trio.SocketStream, lock: trio.Lock):
        self.stream = stream
        self.lock = lock
        self.pending: list[bytes] = []
        self.hooks: list[Callable[[], None]] = []
        self.sending = False

    async def send(self, data: bytes, hooks: list[Callable[[], None]]) -> None:
        self.pending.append(data)
        if hooks:
            self.hooks.extend(hooks)
        if self.sending:
            return
        self.sending = True
        lock = self.lock
        try:
            try:
                lock.acquire_nowait()
            except trio.WouldBlock:
                await lock.acquire()
            try:
                pending = self.pending
                while pending:
                    out = pending[0] if len(pending) == 1 else b"".join(pending)
                    pending.clear()
                    ready, self.hooks = self.hooks, []
                    await self.stream.send_all(out)
                    for hook in ready:
                        hook()
            finally:
                lock.release()
        finally:
            self.sending = False
