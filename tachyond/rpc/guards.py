"""The socket's connection guards: who may connect (SO_PEERCRED), how many at once (in total and per uid,
an idle connection making room at a cap), for how long (the idle timeout), what each has in flight, and
what an accept loop does when accept() fails for want of descriptors (shared with the HTTP listener)."""

from __future__ import annotations

import errno
import grp
import logging
import os
import pwd
import socket as stdsocket
import struct
from collections import OrderedDict
from typing import Any

import trio

log = logging.getLogger("tachyond.rpc")

MAX_IN_FLIGHT_PER_CONNECTION = 256   # calls: a batch counts each of its members

# accept(2) failures that mean "out of a resource for now": the process or system is out of descriptors or
# memory. The server logs, backs off and keeps serving what is open; the next accept tries again.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_BACKOFF_MIN_S = 0.05
ACCEPT_BACKOFF_MAX_S = 1.0
ACCEPT_LOG_EVERY_S = 10.0


class AcceptBackoff:
    """What an accept loop does when accept() fails for want of descriptors or memory (EMFILE, ENFILE...).

    It logs (the first failure, then at most once per ``ACCEPT_LOG_EVERY_S`` with a count), counts the
    failure in ``tachyon_accept_errors``, and sleeps a backoff that doubles up to ``ACCEPT_BACKOFF_MAX_S``; a
    successful accept resets it. Connections already open are served meanwhile.
    """

    def __init__(self, server: str, metrics: Any = None, logger: logging.Logger | None = None):
        self.server = server
        self.metrics = metrics
        self.log = logger or log
        self.delay = ACCEPT_BACKOFF_MIN_S
        self.failures = 0
        self._last_log = -float("inf")

    @staticmethod
    def is_capacity_error(exc: BaseException) -> bool:
        return isinstance(exc, OSError) and exc.errno in ACCEPT_CAPACITY_ERRNOS

    async def failed(self, exc: OSError) -> None:
        self.failures += 1
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        if self.metrics is not None:
            self.metrics.accept_errors.labels(self.server, name).inc()
        now = trio.current_time()
        if now - self._last_log >= ACCEPT_LOG_EVERY_S:
            self._last_log = now
            self.log.error("%s: accept() failed with %s (%s), %d time(s) so far; new connections wait, open ones are "
                           "served; retrying in %.2fs (raise LimitNOFILE or lower the connection caps)",
                           self.server, name, os.strerror(exc.errno or 0), self.failures, self.delay)
        await trio.sleep(self.delay)
        self.delay = min(ACCEPT_BACKOFF_MAX_S, self.delay * 2)

    def succeeded(self) -> None:
        self.delay = ACCEPT_BACKOFF_MIN_S


def peer_allowed(sock: Any, group: str | None) -> tuple[bool, int]:
    """SO_PEERCRED: the same uid, root, or a member of ``group``."""
    raw = sock.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, gid = struct.unpack("3i", raw)
    if uid in (0, os.getuid()):
        return True, uid
    if group is not None:
        gid_allowed = grp.getgrnam(group).gr_gid
        if gid == gid_allowed:
            return True, uid
        try:
            name = pwd.getpwuid(uid).pw_name
            if gid_allowed in os.getgrouplist(name, gid):
                return True, uid
        except KeyError:
            pass
    return False, uid


class Slot:
    """One allowed connection's bookkeeping: its uid, what it has in flight, its cancel scope (eviction)."""

    __slots__ = ("uid", "scope", "in_flight", "streams", "partial", "idle_timeout_s", "idle_since", "gone")

    def __init__(self, uid: int, idle_timeout_s: float):
        self.uid = uid
        self.scope = trio.CancelScope()
        self.in_flight = 0       # calls, a batch counting each member
        self.streams = 0
        self.partial = False     # bytes of an unfinished line are buffered
        self.idle_timeout_s = idle_timeout_s
        self.idle_since = 0.0    # when it last became (or was seen) idle, by trio's clock
        self.gone = False

    def idle(self) -> bool:
        return self.in_flight == 0 and self.streams == 0 and not self.partial

    def update_idle(self) -> None:
        """Note that the connection was active: when it is idle now, its idle time starts over from now.

        The idle watcher (:func:`close_when_idle`) closes it once ``idle_since`` lies
        ``idle_timeout_s`` back and it is still idle; moving a cancel scope's deadline at every call instead
        would cost a deadline heap update per call."""
        if self.idle_timeout_s and self.idle():
            self.idle_since = trio.current_time()


async def close_when_idle(slot: Slot, scope: trio.CancelScope) -> None:
    """Cancel ``scope`` (the connection's reading) once the connection has been idle for its idle timeout.

    The connection only notes when it last became idle (``Slot.update_idle``); this task sleeps until that
    moment plus the timeout, and looks again then. A busy connection is looked at again a timeout later.
    """
    timeout = slot.idle_timeout_s
    while True:
        if slot.idle():
            due = slot.idle_since + timeout
            if trio.current_time() >= due:
                scope.cancel()
                return
            await trio.sleep_until(due)
        else:
            await trio.sleep(timeout)


class ConnectionCaps:
    """The connections open at once, in total and per uid, least recently active first.

    At a cap, a new connection takes the place of the least recently active *idle* connection (nothing in
    flight, no stream, no partial line) of that uid (or of anyone, for the total cap); when none is idle,
    :meth:`make_room` names the cap and the caller refuses the connection.
    """

    def __init__(self, max_connections: int, max_connections_per_uid: int, metrics: Any = None):
        self.max_connections = max_connections
        self.max_connections_per_uid = max_connections_per_uid
        self.metrics = metrics
        self.slots: OrderedDict[Slot, None] = OrderedDict()     # least recently active first
        self.per_uid: dict[int, int] = {}

    def make_room(self, uid: int) -> str | None:
        """Evict an idle connection if a cap is reached; the cap's name when none can go."""
        if self.per_uid.get(uid, 0) >= self.max_connections_per_uid:
            victim = next((s for s in self.slots if s.uid == uid and s.idle()), None)
            if victim is None:
                return "per_uid"
            self.evict(victim)
        if len(self.slots) >= self.max_connections:
            victim = next((s for s in self.slots if s.idle()), None)
            if victim is None:
                return "total"
            self.evict(victim)
        return None

    def evict(self, slot: Slot) -> None:
        slot.scope.cancel()
        self.release(slot)
        if self.metrics is not None:
            self.metrics.rpc_connections_closed_idle.labels("evicted").inc()

    def register(self, slot: Slot) -> None:
        self.slots[slot] = None
        self.per_uid[slot.uid] = self.per_uid.get(slot.uid, 0) + 1
        if self.metrics is not None:
            self.metrics.rpc_connections_open.set(len(self.slots))

    def release(self, slot: Slot) -> None:
        if slot.gone:
            return
        slot.gone = True
        self.slots.pop(slot, None)
        left = self.per_uid.get(slot.uid, 1) - 1
        if left:
            self.per_uid[slot.uid] = left
        else:
            self.per_uid.pop(slot.uid, None)
        if self.metrics is not None:
            self.metrics.rpc_connections_open.set(len(self.slots))

    def touch(self, slot: Slot) -> None:
        """The connection was active: it becomes the last to be evicted."""
        if not slot.gone:
            self.slots.move_to_end(slot)

    def refusal_message(self, uid: int, reason: str) -> str:
        if reason == "per_uid":
            return (f"too many connections: uid {uid} has {self.per_uid.get(uid, 0)} open and busy "
                    f"(daemon.max_rpc_connections_per_uid = {self.max_connections_per_uid}); retry later")
        return (f"too many connections: {len(self.slots)} open and busy "
                f"(daemon.max_rpc_connections = {self.max_connections}); retry later")
