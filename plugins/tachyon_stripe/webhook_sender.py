"""The emulator's webhook delivery: Stripe-signed POSTs with retries and backoff, pausable, observable."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import trio

log = logging.getLogger("tachyon_stripe.emulator")


def signature_header(body: bytes, secrets: Sequence[str], timestamp: int) -> str:
    """``t=<unix>,v1=<hex>[,v1=<hex>…]``: HMAC-SHA256 of ``"{t}.{body}"`` with each secret, as Stripe signs."""
    signed = f"{timestamp}.".encode() + body
    parts = [f"t={timestamp}"]
    parts += [f"v1={hmac.new(s.encode(), signed, hashlib.sha256).hexdigest()}" for s in secrets]
    return ",".join(parts)


@dataclass(frozen=True)
class DeliveryAttempt:
    """One POST of one event: ``status`` is the HTTP status, or None when the request failed (``error``)."""

    event_id: str
    attempt: int
    at: float
    status: int | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class WebhookSender:
    """Delivers queued events to one endpoint; first attempts in order, failures retried in the background."""

    def __init__(self, url: str | None, secrets: Sequence[str], *, max_attempts: int = 6, backoff_s: float = 0.25,
                 max_backoff_s: float = 8.0, timeout_s: float = 10.0, clock: Callable[[], float] = time.time):
        self.url = url
        self.secrets = tuple(secrets)
        self.max_attempts, self.backoff_s, self.max_backoff_s = max_attempts, backoff_s, max_backoff_s
        self.timeout_s = timeout_s
        self.clock = clock
        self.pending: dict[str, dict[str, Any]] = {}
        self.attempts: list[DeliveryAttempt] = []
        self.delivered: list[str] = []
        self.abandoned: list[str] = []
        self.paused = False
        self._resumed = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self._send, self._receive = trio.open_memory_channel[dict](math.inf)

    def enqueue(self, event: dict[str, Any]) -> bool:
        """Queue an event for delivery; False when no endpoint is set or it is already on its way."""
        if not self.url or event["id"] in self.pending:
            return False
        self.pending[event["id"]] = event
        if self._idle.is_set():
            self._idle = trio.Event()
        self._send.send_nowait(event)
        return True

    def stop(self) -> None:
        """Hold every delivery (queued events stay pending) until :meth:`resume`."""
        if not self.paused:
            self.paused = True
            self._resumed = trio.Event()

    def resume(self) -> None:
        """Let held deliveries go."""
        self.paused = False
        self._resumed.set()

    async def wait_idle(self) -> None:
        """Block until nothing is pending (every event delivered or given up)."""
        while not self._idle.is_set():
            await self._idle.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver until cancelled."""
        async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False) as client:
            async with trio.open_nursery() as nursery:
                task_status.started()
                async for event in self._receive:
                    await self._wait_unpaused()
                    if not await self._attempt(client, event, 1):
                        nursery.start_soon(self._retry, client, event)

    async def _wait_unpaused(self) -> None:
        while self.paused:
            await self._resumed.wait()

    async def _retry(self, client: httpx.AsyncClient, event: dict[str, Any]) -> None:
        delay_s = self.backoff_s
        for attempt in range(2, self.max_attempts + 1):
            await trio.sleep(delay_s)
            delay_s = min(delay_s * 2, self.max_backoff_s)
            await self._wait_unpaused()
            if await self._attempt(client, event, attempt):
                return
        log.warning("webhook %s abandoned after %d attempts", event["id"], self.max_attempts)
        self.abandoned.append(event["id"])
        self._done(event["id"])

    async def _attempt(self, client: httpx.AsyncClient, event: dict[str, Any], attempt: int) -> bool:
        # Stripe pretty-prints event bodies; each attempt is signed afresh with a new timestamp.
        body = json.dumps(event, indent=2).encode()
        timestamp = int(self.clock())
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Stripe-Signature": signature_header(body, self.secrets, timestamp),
        }
        try:
            response = await client.post(self.url, content=body, headers=headers)
            record = DeliveryAttempt(event["id"], attempt, timestamp, response.status_code)
        except httpx.HTTPError as exc:
            record = DeliveryAttempt(event["id"], attempt, timestamp, None, f"{type(exc).__name__}: {exc}")
        self.attempts.append(record)
        if record.ok:
            self.delivered.append(event["id"])
            self._done(event["id"])
        else:
            log.info("webhook %s attempt %d failed: %s", event["id"], attempt, record.status or record.error)
        return record.ok

    def _done(self, event_id: str) -> None:
        self.pending.pop(event_id, None)
        if not self.pending:
            self._idle.set()
