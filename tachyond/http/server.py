"""hypercorn serving the HTTP side in the daemon's nursery: its config built from ours, and its trio worker
with our guarded listeners in front."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig

from ..config import HttpConfig, parse_listen
from ..rpc.server import AcceptBackoff
from .app import make_app
from .clients import Network
from .guards import ConnectionLimits, GuardedApp, GuardedListener, GuardedStream, watch_sends
from .webhooks import WebhookFastPath

log = logging.getLogger("tachyond.http")


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
                    nursery.start_soon(watch_sends, registry)   # the send deadline of every connection
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
