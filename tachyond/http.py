"""The HTTP side: a quart-trio app (webhooks, /healthz, /metrics) served by hypercorn in the daemon's nursery."""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from quart import Response
from quart_trio import QuartTrio

from .config import HttpConfig, parse_listen

log = logging.getLogger("tachyond.http")


class RateLimiter:
    """A token bucket per client address: ``rate_per_s`` sustained, bursts of twice that."""

    def __init__(self, rate_per_s: int, *, max_clients: int = 10000):
        self.rate = float(rate_per_s)
        self.burst = 2.0 * rate_per_s
        self.max_clients = max_clients
        self.buckets: dict[str, tuple[float, float]] = {}

    def allow(self, client: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self.buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self.buckets[client] = (tokens, now)
            return False
        if len(self.buckets) >= self.max_clients and client not in self.buckets:
            self.buckets = {k: v for k, v in self.buckets.items() if now - v[1] < self.burst / self.rate}
        self.buckets[client] = (tokens - 1.0, now)
        return True


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

    def prepare_config(self, new_cfg: Any, changed: list[str]) -> Any:
        """Reload: the [http] limits and allow_ips apply to the next request; open connections stay."""
        if not any(k.startswith("http.") for k in changed):
            return None
        http: HttpConfig = new_cfg.http
        allowed = http.allowed_networks()

        def apply() -> None:
            self.cfg, self.allowed = http, allowed
            self.limiter.rate, self.limiter.burst = float(http.rate_limit_per_s), 2.0 * http.rate_limit_per_s
            self.app.config["MAX_CONTENT_LENGTH"] = http.max_body_bytes
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
        ip = (scope.get("client") or ("unknown", 0))[0]

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
        if not self.limiter.allow(ip):
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
        problems = await daemon.health()
        if problems:
            return _json({"status": "unavailable", "failing": problems}, 503)
        return _json({"status": "ok", "version": daemon.version, "uptime_s": daemon.uptime_s(),
                      "wallet": daemon.wallet_state()}, 200)

    from .onramp_page import register_onramp_page

    register_onramp_page(app, daemon)  # GET /onramp/{session_id}: the embedded onramp page

    @app.route("/metrics", methods=["GET"])
    async def metrics() -> Response:
        daemon.refresh_gauges()
        return Response(daemon.metrics.render(), status=200, content_type=daemon.metrics.content_type)

    return app


def hypercorn_config(cfg: HttpConfig) -> HypercornConfig:
    """Build hypercorn's config from ours; never from raw user keys (hypercorn accepts typos silently)."""
    hc = HypercornConfig()
    binds = []
    for i, addr in enumerate(cfg.listen):
        host, port = parse_listen(addr, f"http.listen[{i}]")
        binds.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    hc.bind = binds
    if cfg.certfile:
        hc.certfile = str(cfg.certfile)
        hc.keyfile = str(cfg.keyfile)
    hc.accesslog = None
    hc.errorlog = logging.getLogger("tachyond.hypercorn")
    hc.graceful_timeout = 3.0  # webhooks answer in milliseconds; idle keep-alive connections must not hold a stop
    hc.keep_alive_timeout = 5.0
    hc.h11_max_incomplete_size = 16 * 1024
    return hc


async def serve_http(daemon: Any, shutdown: trio.Event, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until ``shutdown`` is set; reports the bound URLs through ``task_status``."""
    app = make_app(daemon)
    fast = WebhookFastPath(daemon, app, daemon.webhook_limiter)
    if getattr(daemon, "reloader", None) is not None:
        daemon.reloader.add("http", fast.prepare_config)
    await hypercorn_serve(fast, hypercorn_config(daemon.config.http), shutdown_trigger=shutdown.wait,
                          task_status=task_status, mode="asgi")
