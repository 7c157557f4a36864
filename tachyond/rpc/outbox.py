"""A connection's answers on their way out: one write carries every answer ready by then.

The connection's socket is written (and read, by the server) with plain non-blocking system calls on its
descriptor, waiting through trio only when the kernel says it would block: trio's stream methods add two
scheduler round trips (checkpoints) and a few context managers to every call, which was a fifth of the cost
of a round trip like ``daemon.info`` (docs/performance.md).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

import trio


def stream_error(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    """The trio stream error a failed read or write of the socket stands for (as trio's own streams raise)."""
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("the socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


async def receive_some(fd: int, max_bytes: int = 65536) -> bytes:
    """Wait until the socket is readable, then read what it has (b"" at the end of the stream).

    It always waits in trio first, which is the loop's one checkpoint: a client that keeps the socket full
    cannot starve the other connections, and a connection that has just answered (its client now waits
    for that answer) is not read in vain.
    """
    while True:
        await trio.lowlevel.wait_readable(fd)
        try:
            return os.read(fd, max_bytes)
        except BlockingIOError:
            continue
        except OSError as exc:
            raise stream_error(exc) from exc


def write_nowait(fd: int, data: bytes | memoryview) -> memoryview | None:
    """Write what the socket takes now, without waiting; what is left (None when all of it went)."""
    try:
        sent = os.write(fd, data)
    except BlockingIOError:
        sent = 0
    except OSError as exc:
        raise stream_error(exc) from exc
    return None if sent == len(data) else memoryview(data)[sent:]


async def send_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data``; waits in trio only while the socket's buffer is full (no checkpoint otherwise)."""
    rest: memoryview | None = memoryview(data)
    while rest is not None:
        rest = write_nowait(fd, rest)
        if rest is not None:
            await trio.lowlevel.wait_writable(fd)


class Outbox:
    """A connection's answers on their way out: one write carries every answer ready by then.

    The first answering task to find nobody sending becomes the sender: it takes the connection's send lock
    (without a checkpoint when it is free; ``notify`` holds it too, so nothing interleaves) and writes what
    is pending until nothing is. Answers that arrive meanwhile are appended and their tasks return at once;
    the sender writes them in its next write, and runs their after-answer hooks only once their bytes are on
    the socket. With pipelining clients (or many calls finishing in one group commit), that is one system
    call for many answers instead of a lock round trip and a write each. The connection's own task puts the
    answers it gave itself in ``pending`` and ``hooks`` and calls :meth:`flush` once per receive.
    """

    __slots__ = ("fd", "lock", "pending", "hooks", "sending")

    def __init__(self, stream: trio.SocketStream, lock: trio.Lock):
        self.fd = stream.socket.fileno()
        self.lock = lock
        self.pending: list[bytes] = []
        self.hooks: list[Callable[[], None]] = []
        self.sending = False

    async def send(self, data: bytes, hooks: list[Callable[[], None]]) -> None:
        """Queue one answer (its after-answer hooks run once it is written) and write, unless a sender is at it."""
        self.pending.append(data)
        if hooks:
            self.hooks.extend(hooks)
        if not self.sending:
            await self._write()

    async def flush(self) -> None:
        """Write what was put in ``pending`` (and ``hooks``) directly, unless a sender is at it already."""
        if self.pending and not self.sending:
            await self._write()

    async def _write(self) -> None:
        # Nobody else writes while this task does not yield: when the lock is free, an answer that the socket
        # takes at once goes out without the lock (a trio Lock costs a few microseconds a round trip); the
        # lock is taken only to wait for a ``notify`` in progress, or before waiting for room in the socket.
        self.sending = True
        lock = self.lock
        held = False
        try:
            pending = self.pending
            while pending:
                if not held and lock.locked():
                    await lock.acquire()
                    held = True
                out = pending[0] if len(pending) == 1 else b"".join(pending)
                pending.clear()
                ready, self.hooks = self.hooks, []
                rest = write_nowait(self.fd, out)
                if rest is not None:
                    if not held:
                        lock.acquire_nowait()   # free: nothing ran since it was seen free
                        held = True
                    await send_all(self.fd, rest)
                for hook in ready:
                    hook()
        finally:
            if held:
                lock.release()
            self.sending = False
