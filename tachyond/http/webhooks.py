"""``POST /webhook/{provider}`` as plain ASGI in front of the Quart app: allow_ips, the rate limit, content
type and body caps checked before the onramp service verifies and stores the event."""

from __future__ import annotations

import ipaddress
from typing import Any

from ..config import HttpConfig
from .clients import RateLimiter, client_address, limit_key
from .guards import ConnectionLimits


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
        if status == 200 and answer == _RECEIVED:
            return 200, _RECEIVED_BODY, False     # the common answer, encoded once
        return status, json.dumps(answer).encode(), False


_RECEIVED = {"received": True}
_RECEIVED_BODY = b'{"received": true}'
