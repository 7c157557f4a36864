"""JSON-RPC 2.0 over a Unix socket: the socket server (listener, one task per connection, drain at a stop).

One message per line both ways; what a line means is the dispatcher's (dispatch.py). The connection guards
(peer credentials, caps, idle timeout, in-flight accounting) are in guards.py, the answers' way out in
outbox.py.
"""

from __future__ import annotations

import errno
import grp
import logging
import math
import os
import socket as stdsocket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from .. import errors
from .dispatch import _AFTER_ANSWER, _CONNECTION, Connection, LineError, Pending, parse_line
from .guards import MAX_IN_FLIGHT_PER_CONNECTION, AcceptBackoff, ConnectionCaps, Slot, close_when_idle, peer_allowed
from .outbox import Outbox, receive_some
from .protocol import _dump, _error

if TYPE_CHECKING:
    from .dispatch import Dispatcher

log = logging.getLogger("tachyond.rpc")

MAX_LINE_BYTES = 1024 * 1024
STREAM_FLUSH_S = 1.0   # at a graceful stop, how long streams (dex.watch) get to send what they queued


# --- the socket server -----------------------------------------------------------------------------

def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (systemd's LimitNOFILE), so the caps bind first."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard


class SocketInUse(Exception):
    """Another live daemon answers on the socket path."""


def prepare_socket_path(path: Path) -> None:
    """Refuse if a live daemon answers on ``path``; remove a stale socket file left by a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(path):
        return
    import stat

    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise SocketInUse(f"{path} exists and is not a socket; remove it or choose another daemon.socket")
    probe = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            os.unlink(path)
            log.info("removed stale socket %s", path)
            return
        raise SocketInUse(f"cannot probe {path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise SocketInUse(f"another tachyond is already running on {path}")


def bind_socket(path: Path, mode: int, group: str | None) -> trio.socket.SocketType:
    """Bind under a umask that yields ``mode`` (no window with a wider mode), then hand it to ``group``."""
    sock = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock._sock.bind(str(path))  # type: ignore[attr-defined]  # trio's socket wraps a stdlib one in _sock; a plain bind: trio's async bind adds nothing for a path
    finally:
        os.umask(old)
    if group is not None:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
    sock.listen(4096)  # capped by net.core.somaxconn; a flood of connects must not refuse good clients
    return sock


class RpcServer:
    """Serves a Dispatcher on a Unix socket until the shutdown event, then drains in-flight calls.

    Connections are capped in total and per uid. At a cap, a new connection takes the place of the least
    recently active *idle* connection (nothing in flight, no stream, no partial line) of that uid (or of
    anyone, for the total cap); when none is idle it is refused with one error line. A connection idle for
    ``idle_timeout_s`` is closed. accept() failing for want of descriptors (EMFILE, ENFILE) is logged and
    retried with a backoff; the daemon goes on serving the connections it has.
    """

    def __init__(self, dispatcher: Dispatcher, *, drain_timeout_s: float = 10.0, max_connections: int = 1024,
                 max_connections_per_uid: int = 256, idle_timeout_s: float = 300.0, wait_for_start: bool = False):
        self.dispatcher = dispatcher
        self.drain_timeout_s = drain_timeout_s
        self.caps = ConnectionCaps(max_connections, max_connections_per_uid, dispatcher.metrics)
        self.idle_timeout_s = idle_timeout_s
        self.in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        self._streams: dict[object, Callable[[str], object]] = {}   # running streams -> their stop()
        self._streams_changed = trio.Event()
        self._last_refusal_log = -math.inf
        # With wait_for_start, connections wait in the listen backlog until started(): the daemon calls it once
        # everything else it serves (HTTP) listens, so an answer on the socket means the daemon is up.
        self._started = trio.Event()
        if not wait_for_start:
            self._started.set()

    def started(self) -> None:
        """The rest of the daemon is up: accept connections from now on (see ``wait_for_start``)."""
        self._started.set()

    @property
    def metrics(self) -> Any:
        return self.dispatcher.metrics

    def _start_stream(self, nursery: trio.Nursery, fn: Callable[[], Awaitable[None]],
                      stop: Callable[[str], object]) -> None:
        token = object()
        self._streams[token] = stop

        async def run() -> None:
            try:
                await fn()
            finally:
                self._streams.pop(token, None)
                self._streams_changed.set()

        nursery.start_soon(run)

    async def _end_streams(self, reason: str) -> None:
        """Ask every stream to finish (flushing what it queued) and wait for them, at most STREAM_FLUSH_S."""
        for stop in list(self._streams.values()):
            stop(reason)
        with trio.move_on_after(STREAM_FLUSH_S):
            while self._streams:
                self._streams_changed = trio.Event()
                await self._streams_changed.wait()

    async def serve(self, path: Path, mode: int, group: str | None, shutdown: trio.Event, *,
                    task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        prepare_socket_path(path)
        sock = bind_socket(path, mode, group)
        listener = trio.SocketListener(sock)
        backoff = AcceptBackoff("rpc", self.metrics)
        try:
            async with trio.open_nursery() as conns:
                accept_scope = trio.CancelScope()

                async def accept_loop() -> None:
                    with accept_scope:
                        await self._started.wait()
                        while True:
                            try:
                                stream = await listener.accept()
                            except OSError as exc:
                                if not AcceptBackoff.is_capacity_error(exc):
                                    raise
                                await backoff.failed(exc)
                                continue
                            backoff.succeeded()
                            conns.start_soon(self._connection, stream, group)

                conns.start_soon(accept_loop)
                task_status.started(path)
                await shutdown.wait()
                self.dispatcher.stopping = True
                accept_scope.cancel()
                await listener.aclose()
                _unlink(path)
                with trio.move_on_after(self.drain_timeout_s):
                    await self._wait_idle()
                await self._end_streams("the daemon is stopping")
                conns.cancel_scope.cancel()
        finally:
            _unlink(path)
            sock.close()

    async def _wait_idle(self) -> None:
        while self.in_flight:
            self._idle = trio.Event()
            await self._idle.wait()

    # --- one connection ---------------------------------------------------------------------------

    async def _connection(self, stream: trio.SocketStream, group: str | None) -> None:
        slot: Slot | None = None
        try:
            ok, uid = peer_allowed(stream.socket, group)
            if not ok:
                log.warning("refused a connection from uid %d (not this user, root or the socket group)", uid)
                await self._refuse(stream, f"permission denied: uid {uid} may not use this socket")
                return
            reason = self.caps.make_room(uid)
            if reason is not None:
                message = self.caps.refusal_message(uid, reason)
                if self.metrics is not None:
                    self.metrics.rpc_connections_refused.labels(reason).inc()
                now = trio.current_time()
                if now - self._last_refusal_log >= 10.0:
                    self._last_refusal_log = now
                    log.warning("refused a connection: %s (further refusals are counted in "
                                "tachyon_rpc_connections_refused)", message)
                await self._refuse(stream, message)
                return
            slot = Slot(uid, float(self.idle_timeout_s))
            self.caps.register(slot)
            with slot.scope:
                await self._serve_connection(stream, slot)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; others are unaffected
        except Exception:
            log.exception("connection handler failed; the connection was closed")
        finally:
            if slot is not None:
                self.caps.release(slot)
            with trio.CancelScope(shield=True):
                await stream.aclose()

    @staticmethod
    async def _refuse(stream: trio.SocketStream, message: str) -> None:
        with trio.move_on_after(1):
            await stream.send_all(_dump(_error(-32000, message, None)))
            # Half-close and drain what the peer sent, so closing does not reset the refusal away.
            await stream.send_eof()
            while len(await stream.receive_some(65536)) > 0:
                pass

    async def _serve_connection(self, stream: trio.SocketStream, slot: Slot | None = None) -> None:
        """Read lines and answer them until the client stops sending, then wait for its calls in flight.

        Each receive is split into its complete lines. A call whose method cannot reach a checkpoint
        (``Method.inline``), and every error answered before a method runs, is answered right here in the
        connection's task; every other call (and each batch) runs in a task of its own, so that a slow call
        (an order waiting for its commit) holds up nothing sent after it. The answers ready by the end of a
        receive leave in one write (the outbox).
        """
        slot = slot or Slot(-1, 0)
        send_lock = trio.Lock()
        outbox = Outbox(stream, send_lock)
        dispatcher = self.dispatcher
        start_request = dispatcher.start_request
        room = trio.Event()
        room.set()

        def call_done(calls: int) -> None:
            slot.in_flight -= calls
            slot.update_idle()
            room.set()
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()

        async def answer(doc: Any, calls: int) -> None:   # a call left pending by start_request, or a batch
            hooks: list[Callable[[], None]] = []
            _AFTER_ANSWER.set(hooks)   # this task's own context: the hooks of this call only
            try:
                if type(doc) is Pending:
                    result = await dispatcher.finish_request(doc)
                    out = None if result is None else _dump(result)
                else:
                    out = await dispatcher.handle_doc(doc)
                if out is not None:
                    await outbox.send(out, hooks)   # runs the hooks once the answer is written
                else:
                    for hook in hooks:
                        hook()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                call_done(calls)

        async def flush() -> None:
            """Write the answers given in this task; counted in flight meanwhile (no idle close, a drain waits)."""
            slot.in_flight += 1
            self.in_flight += 1
            try:
                await outbox.flush()
            finally:
                slot.in_flight -= 1
                self.in_flight -= 1
                if not self.in_flight:
                    self._idle.set()

        fd = stream.socket.fileno()
        inline_hooks: list[Callable[[], None]] = []
        buf = bytearray()   # an unfinished line
        async with trio.open_nursery() as streams:
            # Streams (subscriptions) live in their own nursery, cancelled once the client stops sending and
            # its calls are answered; they never count as calls in flight, so they never hold up a drain.
            _CONNECTION.set(Connection(self, stream, send_lock, streams, slot))
            async with trio.open_nursery() as calls:
                with trio.CancelScope() as idle_scope:
                    if slot.idle_timeout_s:
                        streams.start_soon(close_when_idle, slot, idle_scope)
                    slot.update_idle()
                    while True:
                        data = await receive_some(fd)
                        if not data:
                            break
                        self.caps.touch(slot)   # most recently active last
                        end = data.rfind(b"\n")
                        if end < 0:
                            buf += data
                        else:
                            if buf:
                                buf += data[:end]
                                lines = bytes(buf).split(b"\n")
                                buf.clear()
                            else:
                                lines = data[:end].split(b"\n")
                            if end + 1 < len(data):
                                buf += data[end + 1:]
                            for line in lines:
                                if not line.strip():
                                    continue
                                doc = parse_line(line)
                                n = (len(doc) or 1) if type(doc) is list else 1
                                # Back-pressure: stop reading this client until its calls (a batch's each count)
                                # leave room; a batch larger than the limit waits for the connection to drain.
                                if slot.in_flight and slot.in_flight + n > MAX_IN_FLIGHT_PER_CONNECTION:
                                    if outbox.pending and not outbox.sending:
                                        await flush()
                                    while slot.in_flight and slot.in_flight + n > MAX_IN_FLIGHT_PER_CONNECTION:
                                        room = trio.Event()
                                        await room.wait()
                                if type(doc) is LineError:
                                    outbox.pending.append(_dump(_error(doc.code, doc.message, None)))
                                    continue
                                if type(doc) is not list:   # one request (a batch gets a task: handle_doc)
                                    token = _AFTER_ANSWER.set(inline_hooks)
                                    try:
                                        doc = start_request(doc)
                                    finally:
                                        _AFTER_ANSWER.reset(token)
                                    if type(doc) is not Pending:   # answered here
                                        if doc is not None:
                                            outbox.pending.append(_dump(doc))
                                            if inline_hooks:
                                                outbox.hooks.extend(inline_hooks)
                                                inline_hooks.clear()
                                        elif inline_hooks:
                                            for hook in inline_hooks:
                                                hook()
                                            inline_hooks.clear()
                                        continue
                                slot.in_flight += n
                                self.in_flight += 1
                                calls.start_soon(answer, doc, n)
                            if outbox.pending and not outbox.sending:
                                await flush()
                        slot.partial = bool(buf)
                        slot.update_idle()
                        if len(buf) > MAX_LINE_BYTES:
                            message = "Invalid Request: line exceeds 1 MiB without a newline"
                            async with send_lock:
                                await stream.send_all(_dump(_error(errors.INVALID_REQUEST, message, None)))
                            calls.cancel_scope.cancel()
                            break
                if idle_scope.cancelled_caught:
                    log.debug("closed an RPC connection of uid %d: idle for %ss", slot.uid, self.idle_timeout_s)
                    if self.metrics is not None:
                        self.metrics.rpc_connections_closed_idle.labels("idle_timeout").inc()
            streams.cancel_scope.cancel()


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
