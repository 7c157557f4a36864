"""The HTTP side: a quart-trio app (webhooks, /healthz, /metrics) served by hypercorn in the daemon's nursery."""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections import OrderedDict
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.utils import parse_socket_addr
from quart import Response, request
from quart_trio import QuartTrio

from .config import HttpConfig, parse_listen
from .rpc.server import AcceptBackoff

log = logging.getLogger("tachyond.http")


class RateLimiter:
    """A token bucket per client key: ``rate_per_s`` sustained, bursts of twice that.

    O(1) per request, bounded memory: the buckets live in an LRU (an OrderedDict) of at most ``max_clients``
    keys; a new key past that evicts the least recently seen one. An evicted client had been quiet longer
    than every other tracked client; if it comes back it starts with a full bucket again.
    """

    def __init__(self, rate_per_s: int, *, max_clients: int = 10000):
        self.rate = float(rate_per_s)
        self.burst = 2.0 * rate_per_s
        self.max_clients = max_clients
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, client: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        bucket = self.buckets.get(client)
        if bucket is None:
            if len(self.buckets) >= self.max_clients:
                self.buckets.popitem(last=False)
            tokens, last = self.burst, now
        else:
            self.buckets.move_to_end(client)
            tokens, last = bucket
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        if tokens < 1.0:
            self.buckets[client] = (tokens, now)
            return False
        self.buckets[client] = (tokens - 1.0, now)
        return True


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _in_networks(addr: str, networks: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(scope: dict, trusted: list[Network]) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the rightmost X-Forwarded-For
    hop that is not itself a trusted proxy (the leftmost hop when all are). Hops further left were written by
    the client and are never believed. A hop that is not an IP address is returned as it is (cut to 64
    characters), so ``allow_ips`` refuses it and the rate limit counts it as one client."""
    peer = (scope.get("client") or ("unknown", 0))[0]
    if not trusted or not _in_networks(peer, trusted):
        return peer
    hops: list[str] = []
    for key, value in scope.get("headers", ()):
        if key == b"x-forwarded-for":
            hops.extend(value.decode("latin-1").split(","))
    addr = peer
    for hop in reversed(hops):
        hop = hop.strip()[:64]
        if not hop:
            continue
        if not _in_networks(hop, trusted):
            return hop
        addr = hop
    return addr


def limit_key(addr: str) -> str:
    """What the rate limit and the per-address connection cap count by: the IPv4 address, or the IPv6 /64
    (one host on IPv6 commonly holds a whole /64)."""
    if ":" not in addr:
        return addr
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return addr


# --- connection caps and request deadlines --------------------------------------------------------

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
        if self.by_address.get(limit_key(address), 0) >= self.max_per_address and not _in_networks(
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
        with trio.move_on_after(self.limits.timeout_s):
            await self.inner.send_all(data)
            head = bytes(data[:10])
            if head.startswith(b"HTTP/1.") and head[9:10] != b"1" and not self._pinned:
                self._reading = True             # the response has started: the request is over
                self._deadline = math.inf
            return
        raise trio.BrokenResourceError("the peer did not read the response within http.request_timeout_s")

    async def send_eof(self) -> None:
        await self.inner.send_eof()              # AttributeError on TLS streams: hypercorn expects that

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.limits.closed(self.address)
            if self.registry.get(self.key) is self:
                del self.registry[self.key]
        await self.inner.aclose()


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


def _json(body: dict[str, Any], status: int, *, close: bool = False) -> Response:
    import json

    resp = Response(json.dumps(body), status=status, content_type="application/json")
    if close:
        # Answered without reading the body: close, or the unread body would stall a keep-alive connection.
        resp.headers["Connection"] = "close"
    return resp


class WebhookFastPath:
    """``POST /webhook/{provider}`` as plain ASGI in front of the Quart app.

    Quart's request machinery costs several times the webhook's own work (verify, seal, one group commit);
    every other route goes to Quart. The checks and answers are the same as the Quart route's.
    """

    def __init__(self, daemon: Any, app: Any, limiter: RateLimiter):
        self.daemon = daemon
        self.app = app
        self.limiter = limiter
        self.cfg: HttpConfig = daemon.config.http
        self.allowed = self.cfg.allowed_networks()
        self.trusted = self.cfg.trusted_networks()
        self.connection_limits: list[ConnectionLimits] = []  # filled by serve_guarded, one per listener role

    def prepare_config(self, new_cfg: Any, changed: list[str]) -> Any:
        """Reload: the [http] limits and allow_ips apply to the next request; open connections stay."""
        if not any(k.startswith("http.") for k in changed):
            return None
        http: HttpConfig = new_cfg.http
        allowed, trusted = http.allowed_networks(), http.trusted_networks()

        def apply() -> None:
            self.cfg, self.allowed, self.trusted = http, allowed, trusted
            for limiter in (self.limiter, self.daemon.admin_limiter):
                limiter.rate, limiter.burst = float(http.rate_limit_per_s), 2.0 * http.rate_limit_per_s
            self.app.config["MAX_CONTENT_LENGTH"] = http.max_body_bytes
            self.app.config["TACHYON_TRUSTED"] = trusted
            for limits in self.connection_limits:
                limits.reconfigure(http, trusted)
        return apply

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/webhook/") or "/" in path[9:] or len(path) == 9:
            return await self.app(scope, receive, send)
        provider = path[9:]
        if scope.get("method") != "POST":
            status, body, close = 405, b'{"error": "method not allowed: webhooks are POSTed"}', True
        else:
            status, body, close = await self._handle(scope, receive, provider)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _handle(self, scope: dict, receive: Any, provider: str) -> tuple[int, bytes, bool]:
        import json

        d, metrics = self.daemon, self.daemon.metrics
        ip = client_address(scope, self.trusted)

        def refuse(status: int, reason: str | None, message: str) -> tuple[int, bytes, bool]:
            if reason:
                metrics.webhook_rejected.labels(provider, reason).inc()
            # Answered without reading the body: close, or the unread body would stall a keep-alive connection.
            return status, json.dumps({"error": message}).encode(), True

        if self.allowed:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                addr = None
            if addr is None or not any(addr in net for net in self.allowed):
                return refuse(403, "forbidden_ip", f"{ip} is not in http.allow_ips")
        if not self.limiter.allow(limit_key(ip)):
            return refuse(429, "rate_limited", "rate limit exceeded; retry later")
        onramp = d.onramp
        if onramp is None or not onramp.has_provider(provider):
            return refuse(404, None, f"no onramp provider named {provider!r} is configured")
        headers: dict[str, str] = {}
        for k, v in scope.get("headers", []):
            headers[k.decode("latin-1")] = v.decode("latin-1")
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return refuse(415, "content_type", "Content-Type must be application/json")
        cap = self.cfg.max_body_bytes
        too_large = f"body larger than http.max_body_bytes ({cap} bytes)"
        try:
            if int(headers.get("content-length", "0")) > cap:
                return refuse(413, "too_large", too_large)
        except ValueError:
            return refuse(400, "bad_request", "Content-Length is not a number")
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return 400, b"{}", True
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > cap:
                return refuse(413, "too_large", too_large)
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        status, answer = await onramp.receive_webhook(provider, b"".join(chunks), headers, ip)
        return status, json.dumps(answer).encode(), False


def make_app(daemon: Any) -> QuartTrio:
    """The Quart app for /healthz and /metrics (webhooks go through :class:`WebhookFastPath` in front of it)."""
    cfg: HttpConfig = daemon.config.http
    app = QuartTrio("tachyond")
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    daemon.webhook_limiter = RateLimiter(cfg.rate_limit_per_s)
    # /healthz and /metrics are unauthenticated: rate-limited per client like webhooks, on a budget of their own
    daemon.admin_limiter = RateLimiter(cfg.rate_limit_per_s)
    app.config["TACHYON_TRUSTED"] = cfg.trusted_networks()  # replaced by a reload
    last_problems: dict[str, Any] = {"names": None}

    def limited(route: str) -> Response | None:
        if daemon.admin_limiter.allow(limit_key(client_address(request.scope, app.config["TACHYON_TRUSTED"]))):  # type: ignore[arg-type]  # an ASGI scope is a dict
            return None
        daemon.metrics.http_rate_limited.labels(route).inc()
        return _json({"error": "rate limit exceeded; retry later"}, 429)

    @app.errorhandler(413)
    async def too_large(_exc: Any) -> Response:
        return _json({"error": f"body larger than http.max_body_bytes ({cfg.max_body_bytes} bytes)"}, 413, close=True)

    @app.errorhandler(404)
    async def not_found(_exc: Any) -> Response:
        return _json({"error": "not found"}, 404)

    @app.errorhandler(405)
    async def not_allowed(_exc: Any) -> Response:
        return _json({"error": "method not allowed"}, 405)

    @app.route("/healthz", methods=["GET"])
    async def healthz() -> Response:
        refused = limited("/healthz")
        if refused is not None:
            return refused
        problems = await daemon.health()
        if problems:
            # Names only: the details (paths, exception text) are for the operator's log, not for whoever asks.
            names = sorted(problems)
            if names != last_problems["names"]:
                log.warning("/healthz: failing: %s", "; ".join(f"{k}: {v}" for k, v in sorted(problems.items())))
            last_problems["names"] = names
            return _json({"status": "unavailable", "failing": names}, 503)
        last_problems["names"] = None
        return _json({"status": "ok", "version": daemon.version, "uptime_s": daemon.uptime_s(),
                      "wallet": daemon.wallet_state()}, 200)

    from .onramp.page import register_onramp_page

    register_onramp_page(
        app, daemon, lambda scope: limit_key(client_address(scope, app.config["TACHYON_TRUSTED"]))
    )  # GET /onramp/{session_id}: the embedded onramp page

    @app.route("/metrics", methods=["GET"])
    async def metrics() -> Response:
        refused = limited("/metrics")
        if refused is not None:
            return refused
        daemon.refresh_gauges()
        return Response(daemon.metrics.render(), status=200, content_type=daemon.metrics.content_type)

    return app


def hypercorn_config(cfg: HttpConfig, binds: tuple[str, ...] | None = None) -> HypercornConfig:
    """Build hypercorn's config from ours; never from raw user keys (hypercorn accepts typos silently)."""
    hc = HypercornConfig()
    out = []
    for i, addr in enumerate(cfg.listen if binds is None else binds):
        host, port = parse_listen(addr, f"http.listen[{i}]")
        out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    hc.bind = out
    if cfg.certfile:
        hc.certfile = str(cfg.certfile)
        hc.keyfile = str(cfg.keyfile)
    hc.accesslog = None
    hc.errorlog = logging.getLogger("tachyond.hypercorn")
    hc.graceful_timeout = 3.0  # webhooks answer in milliseconds; idle keep-alive connections must not hold a stop
    # Idle keep-alive connections close after this; it also bounds the time to a request's first bytes.
    hc.keep_alive_timeout = min(5.0, float(cfg.request_timeout_s))
    hc.ssl_handshake_timeout = float(cfg.request_timeout_s)
    hc.alpn_protocols = ["http/1.1"]   # webhooks are HTTP/1.1; the request deadlines are per HTTP/1.1 request
    hc.h11_max_incomplete_size = 16 * 1024
    hc.backlog = max(100, min(4096, cfg.max_connections))
    return hc


async def serve_http(daemon: Any, shutdown: trio.Event, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until ``shutdown`` is set; reports the bound URLs through ``task_status`` (``listen``'s first,
    then ``admin_listen``'s)."""
    cfg: HttpConfig = daemon.config.http
    app = make_app(daemon)
    fast = WebhookFastPath(daemon, app, daemon.webhook_limiter)
    registry: dict[tuple, GuardedStream] = {}
    trusted = cfg.trusted_networks()
    roles = [("public", cfg.listen)] + ([("admin", cfg.admin_listen)] if cfg.admin_listen else [])
    if getattr(daemon, "reloader", None) is not None:
        daemon.reloader.add("http", fast.prepare_config)
    await serve_guarded(GuardedApp(fast, registry, bool(cfg.admin_listen)), cfg, roles, registry, daemon.metrics,
                        trusted, shutdown, task_status=task_status, limits_sink=fast.connection_limits)


async def serve_guarded(app: Any, cfg: HttpConfig, roles: list[tuple[str, tuple[str, ...]]],
                        registry: dict[tuple, GuardedStream], metrics: Any, trusted: list[Network],
                        shutdown: trio.Event, *, task_status: Any = trio.TASK_STATUS_IGNORED,
                        limits_sink: list[ConnectionLimits] | None = None) -> None:
    """hypercorn's trio ``worker_serve``, with our listeners (:class:`GuardedListener`) in front of its own.
    Each role's :class:`ConnectionLimits` is appended to ``limits_sink`` (a reload re-configures them)."""
    from hypercorn.trio.lifespan import Lifespan
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.typing import ConnectionState
    from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

    config = hypercorn_config(cfg)
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    backoff = AcceptBackoff("http", metrics, log)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            ssl_context = config.create_ssl_context()
            listeners: list[GuardedListener] = []
            urls: list[str] = []
            for role, binds in roles:
                limits = ConnectionLimits(role, cfg, metrics, trusted)
                if limits_sink is not None:
                    limits_sink.append(limits)
                sockets = hypercorn_config(cfg, binds).create_sockets()
                for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
                    sock.listen(config.backlog)
                    inner: Any = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                    scheme = "http"
                    if sock in sockets.secure_sockets:
                        inner, scheme = trio.SSLListener(inner, ssl_context, https_compatible=True), "https"  # type: ignore[arg-type]  # secure_sockets exist only with a context
                    listeners.append(GuardedListener(inner, limits, backoff, registry))
                    url = f"{scheme}://{repr_socket_addr(sock.family, sock.getsockname())}"
                    urls.append(url)
                    log.info("http (%s) on %s%s", role, url,
                             " (/healthz and /metrics only)" if role == "admin" else "")
            task_status.started(urls)
            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    nursery.start_soon(raise_shutdown, shutdown.wait)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(partial(
                        trio.serve_listeners,
                        partial(TCPServer, wrapped, config, context, ConnectionState(lifespan_state.copy())),
                        listeners, handler_nursery=server_nursery))
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, other = error.split((ShutdownError, KeyboardInterrupt))
                if other is not None:
                    raise other  # noqa: B904 (the group's other part, re-raised as it came)
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
