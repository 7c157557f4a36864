"""The onramp-provider protocol: create, retrieve and list sessions, verify webhooks.

The core's onramp service does everything else (inbox, confirmation, pending topups, claims,
reconciliation), so a second provider is a plugin, not a fork.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class WebhookRejected(Exception):
    """A webhook that failed verification. ``reason`` is a short metric label; ``status`` the HTTP status."""

    def __init__(self, reason: str, message: str, status: int = 400):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status


@dataclass(frozen=True)
class SessionRequest:
    destination_address: str
    network: str                 # "ethereum", "solana", "base", ...
    currency: str                # "usdc"
    amount: str                  # decimal string in whole tokens, converted exactly from minor units
    wallet_tag: str              # this wallet's public id, sent as metadata[tachyon_wallet]
    customer_ip: str | None = None


@dataclass(frozen=True)
class SessionInfo:
    """A provider's session, normalised. ``amount`` is the provider's decimal string, untouched."""

    id: str
    status: str
    created: int
    url: str | None = None
    client_secret: str | None = None
    network: str | None = None
    currency: str | None = None
    amount: str | None = None
    wallet_tag: str | None = None
    transaction_id: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)
    # Where and how the provider says it delivered (None: it did not say). ``livemode`` False for a sandbox
    # session, which delivers nothing; ``delivered_to`` the address used; ``addresses`` network -> address
    # as the session holds them (network names as ours: "base", not Stripe's "base_network").
    livemode: bool | None = None
    delivered_to: str | None = None
    addresses: Mapping[str, str] = field(default_factory=dict)
    # True when the session locked the buyer to ``addresses`` (Stripe's ``lock_wallet_address``): only then
    # does ``addresses[network]`` say where the crypto went when ``delivered_to`` is absent.
    address_locked: bool | None = None


@dataclass(frozen=True)
class WebhookEvent:
    """A verified webhook. ``session_id`` is None for event types that carry no session."""

    event_id: str
    type: str
    created: int
    session_id: str | None
    session_status: str | None
    wallet_tag: str | None
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QuoteRequest:
    network: str
    currency: str
    amount: str                  # decimal string: whole tokens (amount_is destination) or fiat (source)
    amount_is: str = "destination"   # "destination" | "source"
    source_currency: str = "usd"


@dataclass(frozen=True)
class Quote:
    """A provider's price for one network and currency; every amount a decimal string as the provider sent it."""

    network: str
    currency: str
    destination_amount: str | None
    source_amount: str | None
    source_currency: str | None
    source_total_amount: str | None
    network_fee: str | None
    transaction_fee: str | None
    fetched_at: float | None     # unix seconds the provider's rates are from


@dataclass(frozen=True)
class Embed:
    """What a page needs to mount a provider's payment widget for one session (see tachyond.onramp.page).

    ``scripts`` are loaded in order; ``bootstrap_js`` runs after them with ``config`` as the global
    ``ONRAMP_CONFIG``; the CSP names only ``script_hosts``/``frame_hosts``/``connect_hosts``/``img_hosts``.
    ``config`` carries the client secret: it goes into the page and nowhere else (never a log).
    """

    scripts: tuple[str, ...]
    script_hosts: tuple[str, ...]
    frame_hosts: tuple[str, ...]
    connect_hosts: tuple[str, ...]
    img_hosts: tuple[str, ...]
    bootstrap_js: str
    config: Mapping[str, Any]


@runtime_checkable
class OnrampProvider(Protocol):
    """Optional members a provider may also have: ``livemode`` (bool: the mode its API key acts in; sessions of
    the other mode are parked), ``quote(QuoteRequest) -> Quote``, ``embed(SessionInfo) -> Embed | None``."""

    name: str

    async def create_session(self, req: SessionRequest) -> SessionInfo: ...
    async def retrieve_session(self, session_id: str) -> SessionInfo: ...
    async def list_sessions(self, created_gte: int, status: str | None = None) -> list[SessionInfo]:
        """Every session created at or after ``created_gte`` (unix s), all pages, newest first; only those in
        ``status`` when given (a provider that cannot filter returns them all: the caller checks)."""
    def verify_webhook(self, body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        """Verify signature and age; parse. Raise :class:`WebhookRejected` on failure. Must not block."""
    async def aclose(self) -> None: ...


# A provider factory gets its own config table ([onramp.<name>], as a dict) and returns a provider.
# It raises tachyond.config.ConfigError naming the dotted key for a bad value.
ProviderFactory = Callable[[Mapping[str, Any]], OnrampProvider]

# An address validator returns the address normalised, or raises tachyond.errors.InvalidAddress.
AddressValidator = Callable[[str], str]
