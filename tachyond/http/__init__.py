"""The HTTP side: hypercorn + quart-trio in the daemon's nursery: webhooks (webhooks.py, plain ASGI), /healthz,
/metrics and the onramp page (app.py), behind the connection guards (guards.py) and the client checks
(clients.py); server.py starts it all."""

from .clients import RateLimiter, client_address, limit_key
from .server import serve_http

__all__ = ["RateLimiter", "client_address", "limit_key", "serve_http"]
