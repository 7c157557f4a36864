"""The onramp-provider protocol: create, retrieve and list sessions, verify webhooks.

The core's onramp service does everything else (inbox, confirmation, pending topups, claims,
reconciliation), so a second provider is a plugin, not a fork.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, runtime_checkable


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


@runtime_checkable
class OnrampProvider(Protocol):
    name: str

    async def create_session(self, req: SessionRequest) -> SessionInfo: ...
    async def retrieve_session(self, session_id: str) -> SessionInfo: ...
    async def list_sessions(self, created_gte: int) -> list[SessionInfo]:
        """Every session created at or after ``created_gte`` (unix s), all pages, newest first."""
    def verify_webhook(self, body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        """Verify signature and age; parse. Raise :class:`WebhookRejected` on failure. Must not block."""
    async def aclose(self) -> None: ...


# A provider factory gets its own config table ([onramp.<name>], as a dict) and returns a provider.
# It raises tachyond.config.ConfigError naming the dotted key for a bad value.
ProviderFactory = Callable[[Mapping[str, Any]], OnrampProvider]

# An address validator returns the address normalised, or raises tachyond.errors.InvalidAddress.
AddressValidator = Callable[[str], str]
