"""The connection guards in front of hypercorn: caps on open connections (in all and per client address),
request deadlines, accepting that survives EMFILE/ENFILE, and the admin/public split of routes."""

from __future__ import annotations

import logging
import math
from typing import Any

import trio
from hypercorn.utils import parse_socket_addr

from ..config import HttpConfig
from ..rpc.server import AcceptBackoff
from .clients import Network, in_networks, limit_key

log = logging.getLogger("tachyond.http")


class ConnectionLimits:
    """Caps for the HTTP connections of one listener role ("public": ``listen``; "admin": ``admin_listen``).

    ``max_connections`` open at once, a tenth of that per client address (trusted proxies are exempt from
    the per-address cap: every client behind them shares their address). A connection over a cap is closed
    as soon as it is accepted.
    """

    def __init__(self, role: str, cfg: HttpConfig, metrics: Any, trusted: list[Network]):
        self.role = role
        self.max_total = cfg.max_connections
        self.max_per_address = cfg.max_connections_per_address
        self.timeout_s = float(cfg.request_timeout_s)
        self.trusted = trusted
        self.metrics = metrics
        self.open_total = 0
        self.by_address: dict[str, int] = {}
        self._last_refusal_log = -float("inf")

    def reconfigure(self, cfg: HttpConfig, trusted: list[Network]) -> None:
        """Reload: new caps and deadline for the next connection or request; open connections stay open."""
        self.max_total = cfg.max_connections
        self.max_per_address = cfg.max_connections_per_address
        self.timeout_s = float(cfg.request_timeout_s)
        self.trusted = trusted

    def admit(self, address: str) -> str | None:
        """None when a connection from ``address`` may open; else why not ("total" or "per_address")."""
        if self.open_total >= self.max_total:
            return "total"
        if self.by_address.get(limit_key(address), 0) >= self.max_per_address and not in_networks(
            address, self.trusted
        ):
            return "per_address"
        return None

    def refused(self, address: str, reason: str) -> None:
        self.metrics.http_connections_refused.labels(self.role, reason).inc()
        now = trio.current_time()
        if now - self._last_refusal_log >= 10.0:   # a flood must not flood the journal too
            self._last_refusal_log = now
            cap = self.max_total if reason == "total" else self.max_per_address
            log.warning("http (%s): closed a new connection from %s: %s connections open (%s cap %d); "
                        "further refusals are counted in tachyon_http_connections_refused", self.role, address,
                        self.open_total if reason == "total" else self.by_address.get(limit_key(address), 0),
                        "http.max_connections" if reason == "total" else "per-address", cap)

    def opened(self, address: str) -> None:
        key = limit_key(address)
        self.open_total += 1
        self.by_address[key] = self.by_address.get(key, 0) + 1
        self.metrics.http_connections_open.labels(self.role).set(self.open_total)

    def closed(self, address: str) -> None:
        key = limit_key(address)
        self.open_total -= 1
        left = self.by_address.get(key, 1) - 1
        if left:
            self.by_address[key] = left
        else:
            self.by_address.pop(key, None)
        self.metrics.http_connections_open.labels(self.role).set(self.open_total)

    def timed_out(self, address: str) -> None:
        self.metrics.http_request_timeouts.labels(self.role).inc()
        log.debug("http (%s): closed a connection from %s: its request did not arrive within %ss",
                  self.role, address, self.timeout_s)


class GuardedStream:
    """An accepted HTTP connection with a request deadline, as hypercorn's TCPServer sees it.

    A request's window opens with its first byte (or when hypercorn hands a pipelined request to the app)
    and closes when the app has read the whole body, or when the response starts. While a window is open,
    the bytes must arrive before ``request_timeout_s`` after it opened, or the connection is closed. Idle
    keep-alive connections are closed by hypercorn's keep-alive timer; a send that the peer does not read
    for ``request_timeout_s`` closes the connection too. HTTP/2 connections (h2c; TLS offers only
    http/1.1) keep their first window: they live ``request_timeout_s`` at most.
    """

    def __init__(self, inner: Any, limits: ConnectionLimits, address: str, key: tuple,
                 registry: dict[tuple, GuardedStream]):
        self.inner = inner
        self.registry = registry
        self.limits = limits
        self.address = address
        self.key = key
        self._deadline = math.inf
        self._reading = True       # False between "body read" and the response's start
        self._pinned = False
        self._closed = False
        self.send_by = math.inf    # a send in progress must be done by then (watched by watch_sends)
        self._send_cut = False
        limits.opened(address)

    def __getattr__(self, name: str) -> Any:   # socket, transport_stream, do_handshake, selected_alpn_protocol...
        return getattr(self.inner, name)

    # signals from the ASGI side (GuardedApp)
    def request_begun(self) -> None:
        self._reading = True
        if self._deadline == math.inf:
            self._deadline = trio.current_time() + self.limits.timeout_s

    def request_read(self) -> None:
        if not self._pinned:
            self._reading = False
            self._deadline = math.inf

    def pin(self) -> None:
        self._pinned = True
        if self._deadline == math.inf:
            self._deadline = trio.current_time() + self.limits.timeout_s

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._deadline == math.inf:
            data = await self.inner.receive_some(max_bytes)
        else:
            with trio.move_on_at(self._deadline):
                data = await self.inner.receive_some(max_bytes)
                return self._received(data)
            self.limits.timed_out(self.address)
            raise trio.BrokenResourceError("the request did not arrive within http.request_timeout_s")
        return self._received(data)

    def _received(self, data: Any) -> Any:
        if data and self._reading and self._deadline == math.inf:
            self._deadline = trio.current_time() + self.limits.timeout_s
        return data

    async def send_all(self, data: Any) -> None:
        # No cancel scope per send (it cost as much as the send itself): the deadline is a time stamp that
        # watch_sends checks, and a send past it has its socket closed under it (send_timed_out).
        self.send_by = trio.current_time() + self.limits.timeout_s
        try:
            await self.inner.send_all(data)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            if self._send_cut:
                raise trio.BrokenResourceError(
                    "the peer did not read the response within http.request_timeout_s") from None
            raise
        finally:
            self.send_by = math.inf
        if data[:7] == b"HTTP/1." and data[9:10] != b"1" and not self._pinned:
            self._reading = True             # the response has started: the request is over
            self._deadline = math.inf

    def send_timed_out(self) -> None:
        """The send in progress is past its deadline: close the socket, which ends the send."""
        if self._send_cut:
            return
        self._send_cut = True
        log.debug("http (%s): closed a connection to %s: it did not read the response within %ss",
                  self.limits.role, self.address, self.limits.timeout_s)
        getattr(self.inner, "transport_stream", self.inner).socket.close()

    async def send_eof(self) -> None:
        await self.inner.send_eof()              # AttributeError on TLS streams: hypercorn expects that

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.limits.closed(self.address)
            if self.registry.get(self.key) is self:
                del self.registry[self.key]
        await self.inner.aclose()


SEND_WATCH_S = 0.5   # how often watch_sends looks: a send is cut at most this late


async def watch_sends(registry: dict[tuple, GuardedStream], period_s: float = SEND_WATCH_S) -> None:
    """Close the connections whose send is past its deadline (``GuardedStream.send_by``), until cancelled."""
    while True:
        await trio.sleep(period_s)
        now = trio.current_time()
        for stream in [s for s in registry.values() if s.send_by <= now]:
            stream.send_timed_out()


class GuardedListener(trio.abc.Listener[Any]):
    """Wraps a hypercorn listener: survives EMFILE/ENFILE (log, back off, go on), enforces the connection
    caps and hands out :class:`GuardedStream` connections."""

    def __init__(
        self, inner: Any, limits: ConnectionLimits, backoff: AcceptBackoff, registry: dict[tuple, GuardedStream]
    ):
        self.inner = inner
        self.limits = limits
        self.backoff = backoff
        self.registry = registry

    async def accept(self) -> GuardedStream:
        while True:
            try:
                stream = await self.inner.accept()
            except OSError as exc:
                if not AcceptBackoff.is_capacity_error(exc):
                    raise
                await self.backoff.failed(exc)
                continue
            self.backoff.succeeded()
            sock = getattr(stream, "transport_stream", stream).socket
            try:
                peer = parse_socket_addr(sock.family, sock.getpeername())
                local = parse_socket_addr(sock.family, sock.getsockname())
            except OSError:                      # gone already
                await trio.aclose_forcefully(stream)
                continue
            address = peer[0] if peer else "unknown"
            reason = self.limits.admit(address)
            if reason is not None:
                self.limits.refused(address, reason)
                await trio.aclose_forcefully(stream)
                continue
            key = (tuple(peer or ()), tuple(local or ()))
            guarded = GuardedStream(stream, self.limits, address, key, self.registry)
            self.registry[key] = guarded
            return guarded

    async def aclose(self) -> None:
        await self.inner.aclose()


class GuardedApp:
    """The outermost ASGI app: tells each connection's :class:`GuardedStream` where its request is, and
    routes /healthz and /metrics to the admin listeners when ``http.admin_listen`` is set."""

    ADMIN_PATHS = ("/healthz", "/metrics")

    def __init__(self, app: Any, registry: dict[tuple, GuardedStream], admin_split: bool):
        self.app = app
        self.registry = registry
        self.admin_split = admin_split

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        conn = self.registry.get((tuple(scope.get("client") or ()), tuple(scope.get("server") or ())))
        if self.admin_split:
            admin_path = scope.get("path") in self.ADMIN_PATHS
            on_admin = conn is not None and conn.limits.role == "admin"
            if admin_path != on_admin:
                body = b'{"error": "not found"}'
                await send({"type": "http.response.start", "status": 404, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        if conn is None:
            return await self.app(scope, receive, send)
        if scope.get("http_version") == "2":
            conn.pin()
        else:
            conn.request_begun()

        async def receive_tracked() -> dict:
            msg = await receive()
            if msg.get("type") == "http.request" and not msg.get("more_body", False):
                conn.request_read()
            return msg

        await self.app(scope, receive_tracked, send)
