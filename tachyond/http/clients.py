"""Who an HTTP client is (its address, behind trusted proxies) and how often it may ask (a token bucket per
address, or per IPv6 /64)."""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict


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


def in_networks(addr: str, networks: list[Network]) -> bool:
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
    if not trusted or not in_networks(peer, trusted):
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
        if not in_networks(hop, trusted):
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
