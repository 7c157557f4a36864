"""The Quart app: /healthz, /metrics and the onramp page (webhooks go through WebhookFastPath in front of it)."""

from __future__ import annotations

import logging
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from ..config import HttpConfig
from ..onramp.page import register_onramp_page
from .clients import RateLimiter, client_address, limit_key

log = logging.getLogger("tachyond.http")


def _json(body: dict[str, Any], status: int, *, close: bool = False) -> Response:
    import json

    resp = Response(json.dumps(body), status=status, content_type="application/json")
    if close:
        # Answered without reading the body: close, or the unread body would stall a keep-alive connection.
        resp.headers["Connection"] = "close"
    return resp


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

    # GET /onramp/{session_id}: the embedded onramp page, on the webhooks' rate limit; given those two, not the daemon
    register_onramp_page(
        app, daemon.webhook_limiter, daemon.onramp,
        lambda scope: limit_key(client_address(scope, app.config["TACHYON_TRUSTED"])),
    )

    @app.route("/metrics", methods=["GET"])
    async def metrics() -> Response:
        refused = limited("/metrics")
        if refused is not None:
            return refused
        daemon.refresh_gauges()
        return Response(daemon.metrics.render(), status=200, content_type=daemon.metrics.content_type)

    return app
