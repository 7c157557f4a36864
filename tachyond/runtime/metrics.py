"""Prometheus metrics, on a registry of the daemon's own (so several daemons can run in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    """Every metric the daemon exports; services increment these, /metrics renders them."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.rpc_calls = Counter("tachyon_rpc_calls", "JSON-RPC calls by method", ["method"], registry=r)
        self.rpc_errors = Counter(
            "tachyon_rpc_errors", "JSON-RPC error answers by method and code", ["method", "code"], registry=r
        )
        self.webhook_received = Counter(
            "tachyon_webhook_events_received", "Webhook requests received", ["provider"], registry=r
        )
        self.webhook_verified = Counter(
            "tachyon_webhook_events_verified", "Webhook events whose signature verified", ["provider"], registry=r
        )
        self.webhook_rejected = Counter(
            "tachyon_webhook_events_rejected",
            "Webhook requests rejected, by reason",
            ["provider", "reason"],
            registry=r,
        )
        self.webhook_duplicates = Counter(
            "tachyon_webhook_events_duplicate", "Verified webhook events already seen", ["provider"], registry=r
        )
        self.webhook_ignored = Counter(
            "tachyon_webhook_events_ignored",
            "Verified events ignored (unknown type or foreign wallet)",
            ["provider", "reason"],
            registry=r,
        )
        self.webhook_enqueued = Counter(
            "tachyon_webhook_events_enqueued", "Verified events made durable in the inbox", ["provider"], registry=r
        )
        self.provider_api_errors = Counter(
            "tachyon_onramp_api_errors", "Onramp provider API errors", ["provider"], registry=r
        )
        self.topups_pending = Gauge("tachyon_topups_pending", "Pending onramp topups", registry=r)
        self.topups_claimed = Counter("tachyon_topups_claimed", "Onramp topups claimed", ["provider"], registry=r)
        self.orders_placed = Counter("tachyon_orders_placed", "Orders accepted", ["market"], registry=r)
        self.orders_filled = Counter("tachyon_orders_filled", "Orders filled completely (status closed)", ["market"],
                                     registry=r)
        self.trades = Counter("tachyon_trades", "Trades (fills) settled", ["market"], registry=r)
        self.dex_watchers = Gauge("tachyon_dex_watchers", "dex.watch subscriptions streaming now", registry=r)
        self.orders_canceled = Counter("tachyon_orders_canceled", "Orders canceled", ["market"], registry=r)
        self.orders_open = Gauge("tachyon_orders_open", "Open orders", registry=r)
        # Connection limits and deadlines (docs/security.md)
        self.accept_errors = Counter(
            "tachyon_accept_errors",
            "accept() failures survived (EMFILE, ENFILE, ...), by server and errno",
            ["server", "errno"],
            registry=r,
        )
        self.http_connections_open = Gauge(
            "tachyon_http_connections_open", "HTTP connections open now", ["listener"], registry=r
        )
        self.http_connections_refused = Counter(
            "tachyon_http_connections_refused",
            "HTTP connections closed at once: over a cap",
            ["listener", "reason"],
            registry=r,
        )
        self.http_request_timeouts = Counter(
            "tachyon_http_request_timeouts", "HTTP connections closed at the request deadline", ["listener"], registry=r
        )
        self.http_rate_limited = Counter(
            "tachyon_http_rate_limited", "HTTP requests answered 429, by route", ["route"], registry=r
        )
        self.rpc_connections_open = Gauge("tachyon_rpc_connections_open", "RPC socket connections open now", registry=r)
        self.rpc_connections_refused = Counter("tachyon_rpc_connections_refused", "RPC connections refused: over a cap",
                                               ["reason"], registry=r)
        self.rpc_connections_closed_idle = Counter(
            "tachyon_rpc_connections_closed_idle",
            "RPC connections closed: idle past rpc_idle_timeout_s, or evicted for a new one at a cap",
            ["reason"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
