"""The webhook inbox and its confirmation worker: durable, deduped, sealed while the wallet is locked.

A verified webhook (or the reconciler's backfill) is sealed to the wallet and queued; the worker opens each event
once the wallet is unlocked, retrieves the session from its provider (the truth) and records the outcome: a
pending topup, parked for review, rejected, or nothing yet.
"""

from __future__ import annotations

import logging
import math
import re
import sqlite3
import time
from collections.abc import Mapping
from typing import Any

import trio

from .. import jsonx
from ..amounts import Token, to_minor
from ..errors import AmountError, OnrampError, ShuttingDown, TachyonError, WalletAbsent, WalletLocked, WriteFailed
from ..providers import SessionInfo, WebhookRejected
from ..runtime.metrics import Metrics
from ..wallet.crypto import WindowSealer
from ..wallet.wallet import Wallet
from . import store

log = logging.getLogger("tachyond.onramp")

NON_FINAL = frozenset({"initialized", "requires_payment", "fulfillment_processing"})
COMPLETE = "fulfillment_complete"
RETRY_BASE_S = 1.0
RETRY_MAX_S = 60.0
INBOX_BATCH = 200
PRUNE_EVERY_S = 3600.0

_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


def _same_address(a: str, b: str) -> bool:
    """EVM-style hex addresses compare without case (a checksum is only a spelling); every other form
    (base58, StrKey, bech32, ...) exactly: a change of case there is another address, or none."""
    if _HEX_ADDRESS.fullmatch(a) and _HEX_ADDRESS.fullmatch(b):
        return a.lower() == b.lower()
    return a == b


def livemode_problem(provider: Any, info: SessionInfo) -> str | None:
    """Why a session of the other mode than the provider's key may not be credited (None: same mode)."""
    key_live = getattr(provider, "livemode", None)
    if key_live is None:
        return None
    if info.livemode is None:
        return "livemode mismatch: the provider did not say whether the session is live or test"
    if info.livemode != key_live:
        mode = {True: "live", False: "test (sandbox)"}
        return (f"livemode mismatch: a {mode[info.livemode]} session under a {mode[key_live]} key"
                + (": sandbox sessions deliver nothing" if not info.livemode else ""))
    return None


def destination_problem(info: SessionInfo, asked: dict | None) -> str | None:
    """Why a session delivered elsewhere than this wallet asked may not be credited (None: where we asked)."""
    if asked is None:
        return "this wallet has no record of creating the session"
    if "address" not in asked:
        return "the session predates destination records: check where it delivered before crediting by hand"
    want_addr, want_net, want_cur = asked["address"], asked["network"], asked["currency"]
    if (info.network or "") != want_net:
        return f"delivered elsewhere: network {info.network!r}, asked {want_net!r}"
    if (info.currency or "").lower() != want_cur.lower():
        return f"delivered elsewhere: currency {info.currency!r}, asked {want_cur!r}"
    used = [info.delivered_to] if info.delivered_to else []
    if info.address_locked is True and info.addresses.get(want_net):
        # Locked to the address we asked for: the buyer could not pick another one.
        used.append(info.addresses[want_net])
    if not used:
        return ("delivered elsewhere: the provider does not say which address it delivered to (and the "
                "session was not locked to ours)")
    for address in used:
        if not _same_address(address, want_addr):
            return f"delivered elsewhere: address {address}, asked {want_addr}"
    return None


def retry_delay_s(failures: int) -> float:
    """Backoff after the n-th consecutive failure to confirm an event: 1 s doubling, capped at 60 s."""
    return min(RETRY_MAX_S, RETRY_BASE_S * 2 ** max(0, failures - 1))


class Inbox:
    """Receives webhooks into the inbox and confirms each queued event with its provider.

    ``providers`` is the service's own table, not a copy: a reload that replaces a provider swaps it there, and
    the next event is confirmed with the new one. ``pending_count`` feeds the topups_pending gauge.
    """

    def __init__(self, wallet: Wallet, providers: Mapping[str, Any], tokens: Mapping[str, Token], metrics: Metrics):
        self.wallet = wallet
        self.providers = providers
        self.tokens = tokens
        self.metrics = metrics
        self.pending_count = 0
        self._wake = trio.Event()
        self._failures: dict[int, tuple[int, float]] = {}  # inbox id -> (consecutive failures, retry at, monotonic)
        self._next_prune = -math.inf   # trio clock: when _prune_inbox may run again
        # Seals events to the wallet's public key with one ephemeral key per short window (crypto.WindowSealer);
        # run() drops the window's secret when it ends.
        self.sealer = WindowSealer()
        self._window_opened = trio.Event()

    def wake(self) -> None:
        """Have the worker look at the inbox now (an event was queued, or the wallet was unlocked)."""
        self._wake.set()

    # ----- webhooks ---------------------------------------------------------------------------

    async def receive_webhook(self, provider_name: str, body: bytes, headers: Mapping[str, str],
                              client_ip: str) -> tuple[int, dict]:
        """Verify, dedupe and durably record one webhook; answer without calling the provider's API."""
        metrics = self.metrics
        metrics.webhook_received.labels(provider_name).inc()
        provider = self.providers.get(provider_name)
        if provider is None:
            return 404, {"error": f"no onramp provider named {provider_name!r} is configured"}
        try:
            event = provider.verify_webhook(body, headers)
        except WebhookRejected as exc:
            metrics.webhook_rejected.labels(provider_name, exc.reason).inc()
            log.info("webhook from %s rejected (%s): %s", client_ip, exc.reason, exc.message)
            return exc.status or 400, {"error": exc.message}
        metrics.webhook_verified.labels(provider_name).inc()
        # The provider decides which event types carry a session (Stripe: crypto.onramp_session_updated and
        # the dotted spelling); anything else is acknowledged so the provider stops retrying it.
        if event.session_id is None:
            metrics.webhook_ignored.labels(provider_name, "event_type").inc()
            return 200, {"ignored": f"event type {event.type} carries no onramp session"}
        # With no wallet yet, no session can carry this wallet's tag: it is foreign like any other.
        wallet_id = self.wallet.public_id if self.wallet is not None and self.wallet.state != "absent" else None
        if wallet_id is None or event.wallet_tag != wallet_id:
            metrics.webhook_ignored.labels(provider_name, "foreign").inc()
            return 200, {"ignored": "session belongs to another wallet or app"}
        try:
            # The event body is only a hint: deduped on its id here, its status counts as seen only once the
            # provider's API has confirmed it (an early body must not swallow the event that brings the truth).
            fresh = await self.enqueue(provider_name, event.event_id, event.session_id, event.session_status,
                                       {"source": "webhook", "type": event.type, "event": dict(event.raw)})
        except (ShuttingDown, WalletAbsent, sqlite3.Error) as exc:
            metrics.webhook_rejected.labels(provider_name, "unavailable").inc()
            log.warning("webhook %s could not be recorded: %s", event.event_id, exc)
            return 503, {"error": "the event could not be recorded; retry later"}
        if not fresh:
            metrics.webhook_duplicates.labels(provider_name).inc()
            return 200, {"duplicate": True}
        return 200, {"received": True}

    async def enqueue(self, provider_name: str, event_id: str, session_id: str, status: str | None,
                      extra: dict) -> bool:
        """Seal an event to the wallet and queue it; works while locked.

        Deduped on the event id, and on (session, status) only when that status was confirmed by the provider's
        API earlier (the worker records it): the body's own status is never recorded as seen here.
        """
        wallet_id = self.wallet.public_id
        if wallet_id is None:   # the callers check first: an event is only ever sealed to an existing wallet
            raise WalletAbsent()
        keys = [store.dedupe_key(wallet_id, provider_name, "event", event_id)]
        confirmed = [store.dedupe_key(wallet_id, provider_name, "session", f"{session_id}\x00{status or ''}")]
        received_at = time.time()
        payload = {"provider": provider_name, "event_id": event_id, "session_id": session_id, "status": status,
                   "received_at": received_at, **extra}
        public_hex = self.wallet.public_key   # read now: a rotation swaps it (no checkpoint before the write)
        if public_hex is None:
            raise WalletAbsent()
        sealed = self.sealer.seal(bytes.fromhex(public_hex), jsonx.dumps(payload))
        self._window_opened.set()   # _drop_sealing_windows times the window from here
        fresh = await self.wallet.write(store.enqueue_op, keys, sealed, received_at, confirmed)
        if fresh:
            self.metrics.webhook_enqueued.labels(provider_name).inc()
            self._wake.set()
        return fresh

    # ----- the worker -------------------------------------------------------------------------

    async def run(self) -> None:
        """The worker: process the inbox whenever woken or a retry is due, until cancelled; beside it, drop
        each sealing window's secret when the window ends."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._drop_sealing_windows)
            await self._work()
            nursery.cancel_scope.cancel()

    async def _drop_sealing_windows(self) -> None:
        """Forget the sealer's window secret as soon as its window ends (a quiet inbox keeps none), whatever
        the worker is busy with."""
        while True:
            left = self.sealer.expire()
            if left == math.inf:
                self._window_opened = trio.Event()
                await self._window_opened.wait()
            else:
                await trio.sleep(left)

    async def _work(self) -> None:
        try:
            self.pending_count = await self.wallet.read(store.count_pending_sync)
        except TachyonError:
            pass
        while True:
            self._wake = trio.Event()
            try:
                wait_s = await self.process_inbox()
            except ShuttingDown:
                # The daemon is stopping and the wallet closes: its reads fail before our cancellation (asked
                # for by aclose) reaches a checkpoint. Nothing is lost: unprocessed events stay in the inbox.
                return
            with trio.move_on_after(wait_s):
                await self._wake.wait()

    async def process_inbox(self) -> float:
        """Confirm every due inbox event (the wallet must be unlocked); seconds until the next retry is due."""
        if self.wallet.state != "unlocked":
            return math.inf
        next_due = math.inf
        after_id = 0
        while True:
            rows = await self.wallet.read(store.due_inbox_sync, after_id, INBOX_BATCH)
            if not rows:
                await self._prune_inbox()
                return next_due
            for inbox_id, sealed, _received_at in rows:
                after_id = inbox_id
                failures, retry_at = self._failures.get(inbox_id, (0, 0.0))
                now = trio.current_time()
                if retry_at > now:
                    next_due = min(next_due, retry_at - now)
                    continue
                try:
                    await self._confirm(inbox_id, sealed)
                except WalletLocked:
                    return math.inf
                except ShuttingDown:
                    return math.inf
                except (OnrampError, WriteFailed) as exc:
                    # The provider failed, or the wallet refused the write (a full disk): the event stays, retried
                    # with backoff, said plainly.
                    delay = self._retry_later(inbox_id, failures)
                    next_due = min(next_due, delay)
                    why = "provider error" if isinstance(exc, OnrampError) else "not recorded"
                    log.warning("onramp inbox event %d: %s (attempt %d, retry in %.0f s): %s",
                                inbox_id, why, failures + 1, delay, exc.message)
                except Exception:
                    # A bug or bad data must not stop the queue: the event stays, retried with backoff.
                    delay = self._retry_later(inbox_id, failures)
                    next_due = min(next_due, delay)
                    log.exception("onramp inbox event %d failed (attempt %d, retry in %.0f s)",
                                  inbox_id, failures + 1, delay)
                else:
                    self._failures.pop(inbox_id, None)

    def _retry_later(self, inbox_id: int, failures: int) -> float:
        """Count one more failure of this event and set when it is tried again; the delay in seconds."""
        delay = retry_delay_s(failures + 1)
        self._failures[inbox_id] = (failures + 1, trio.current_time() + delay)
        return delay

    async def _prune_inbox(self) -> None:
        """At most once an hour, delete inbox events processed more than 30 days ago (bounded growth)."""
        now = trio.current_time()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY_S
        try:
            pruned = await self.wallet.write(store.prune_inbox_op)
        except (WalletLocked, ShuttingDown):
            return
        except WriteFailed as exc:   # a full disk, say: an operating condition, said plainly (no traceback)
            log.warning("onramp inbox: pruning failed, nothing was deleted; tried again in an hour: %s", exc.message)
            return
        except Exception:   # housekeeping: a failure must never stop the worker
            log.exception("onramp inbox: pruning failed; nothing was deleted, it is tried again in an hour")
            return
        if pruned:
            log.info("onramp inbox: deleted %d events processed more than %d days ago", pruned,
                     store.INBOX_RETENTION_S // 86400)

    async def _confirm(self, inbox_id: int, sealed: bytes) -> None:
        """Open one inbox event, fetch its session from the provider, decide and record the outcome."""
        event = jsonx.loads(self.wallet.open_sealed(sealed))
        name, session_id = event["provider"], event["session_id"]
        provider = self.providers.get(name)
        if provider is None:
            # The provider's table was removed from the config: keep the event for when it comes back.
            raise OnrampError(f"onramp provider {name!r} is no longer configured")
        try:
            info = await provider.retrieve_session(session_id)
        except OnrampError as exc:
            self.metrics.provider_api_errors.labels(name).inc()
            if isinstance(exc.data, dict) and exc.data.get("http_status") == 404:
                info = None  # the provider does not know this session: park it rather than retry for ever
            else:
                raise
        except TachyonError:
            raise
        except Exception as exc:
            self.metrics.provider_api_errors.labels(name).inc()
            raise OnrampError(f"onramp provider {name!r} failed: {type(exc).__name__}: {exc}") from exc
        asked = await self.wallet.read(store.session_sync, session_id) if info is not None else None
        decision = self.decide(name, provider, info, session_id, event["received_at"], asked)
        wallet_id = self.wallet.public_id
        if wallet_id is None:   # not after open_sealed: an unlocked wallet has its id
            raise WalletAbsent()
        seen, forget = [], []
        if decision["kind"] == "parked":
            # Parked is kept for review, not settled: forget this session's status keys and the reconciler's,
            # so that a later event or a reconcile (after the cause is fixed) looks at the session again.
            statuses = {event.get("status") or "", info.status if info is not None else "", COMPLETE}
            forget = [store.dedupe_key(wallet_id, name, "session", f"{session_id}\x00{s}") for s in statuses]
            forget.append(store.dedupe_key(wallet_id, name, "event", f"reconcile:{session_id}:{COMPLETE}"))
        elif info is not None and info.status:
            # The truth's status counts as seen: a later event with that status is answered as a duplicate.
            seen.append(store.dedupe_key(wallet_id, name, "session", f"{session_id}\x00{info.status}"))
        result = await self.wallet.write(store.confirm_op, inbox_id, session_id, decision, seen, forget)
        if result == "pending":
            self.pending_count += 1
            log.info("onramp session %s confirmed: pending topup", session_id)
        elif result in ("parked", "rejected"):
            log.warning("onramp session %s %s: %s", session_id, result, decision["reason"])
        elif result == "none" and info is not None:
            log.debug("onramp session %s (event %s): %s says %s, nothing to credit yet", session_id,
                      event.get("event_id"), name, info.status)
        elif result in ("parked_again", "rejected_again"):
            log.info("onramp session %s still %s: %s", session_id, result.split("_")[0], decision["reason"])

    def decide(self, name: str, provider: Any, info: SessionInfo | None, session_id: str,
               received_at: float, asked: dict | None = None) -> dict:
        """What the provider's session means for this wallet: pending, parked, rejected or nothing yet.

        ``asked`` is what this wallet created the session for (address, network, currency), from its records.
        """
        base = {"provider": name, "status": info.status if info is not None else None}
        if info is None:
            return {**base, "kind": "parked", "reason": f"{name} does not know session {session_id}"}
        if info.wallet_tag != self.wallet.public_id:
            return {**base, "kind": "parked", "reason": "the provider's session does not carry this wallet's tag"}
        if info.status in NON_FINAL:
            return {**base, "kind": "none"}
        if info.status == "rejected":
            return {**base, "kind": "rejected", "reason": "the provider rejected the session"}
        if info.status != COMPLETE:
            return {**base, "kind": "parked", "reason": f"unknown status {info.status!r}: kept for review"}
        problem = livemode_problem(provider, info) or destination_problem(info, asked)
        if problem:
            return {**base, "kind": "parked", "reason": problem}
        token = self.tokens.get((info.currency or "").lower())
        if token is None:
            return {**base, "kind": "parked", "reason": f"currency {info.currency!r} is not a configured token"}
        allowed = getattr(provider, "allowed", None)
        if allowed is not None and (info.currency or "").lower() not in [
            c.lower() for c in allowed.get(info.network or "", ())
        ]:
            return {**base, "kind": "parked", "reason": f"{info.currency} on {info.network} is not allowed by "
                                                       f"onramp.{name}.allowed"}
        if token.networks and info.network not in token.networks:
            return {**base, "kind": "parked", "reason": f"{token.symbol} is not configured on network {info.network!r}"}
        try:
            amount_minor = to_minor(info.amount, token.decimals, token.symbol)
        except AmountError as exc:
            return {**base, "kind": "parked", "reason": f"amount {info.amount!r}: {exc.message}"}
        return {**base, "kind": "pending", "token": token.symbol, "amount_minor": amount_minor,
                "network": info.network, "received_at": received_at, "transaction_id": info.transaction_id}
