"""The HTTP side: a quart-trio app (webhooks, /healthz, /metrics) served by hypercorn in the daemon's nursery."""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from quart import Response, request
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


def make_app(daemon: Any) -> QuartTrio:
    """Build the app. ``daemon`` gives ``config.http``, ``metrics``, ``health()`` and ``onramp`` (or None)."""
    cfg: HttpConfig = daemon.config.http
    app = QuartTrio("tachyond")
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    limiter = RateLimiter(cfg.rate_limit_per_s)
    allowed = cfg.allowed_networks()

    def client_ip() -> str:
        return (request.scope.get("client") or ("unknown", 0))[0]

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

    @app.route("/metrics", methods=["GET"])
    async def metrics() -> Response:
        daemon.refresh_gauges()
        return Response(daemon.metrics.render(), status=200, content_type=daemon.metrics.content_type)

    @app.route("/webhook/<provider>", methods=["POST"])
    async def webhook(provider: str) -> Response:
        ip = client_ip()
        if allowed:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                addr = None
            if addr is None or not any(addr in net for net in allowed):
                daemon.metrics.webhook_rejected.labels(provider, "forbidden_ip").inc()
                return _json({"error": f"{ip} is not in http.allow_ips"}, 403, close=True)
        if not limiter.allow(ip):
            daemon.metrics.webhook_rejected.labels(provider, "rate_limited").inc()
            return _json({"error": "rate limit exceeded; retry later"}, 429, close=True)
        onramp = daemon.onramp
        if onramp is None or not onramp.has_provider(provider):
            return _json({"error": f"no onramp provider named {provider!r} is configured"}, 404, close=True)
        ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            daemon.metrics.webhook_rejected.labels(provider, "content_type").inc()
            return _json({"error": "Content-Type must be application/json"}, 415, close=True)
        body = await request.get_data(cache=False, as_text=False)
        status, answer = await onramp.receive_webhook(provider, body, dict(request.headers), ip)
        return _json(answer, status)

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
    await hypercorn_serve(app, hypercorn_config(daemon.config.http), shutdown_trigger=shutdown.wait,
                          task_status=task_status)
