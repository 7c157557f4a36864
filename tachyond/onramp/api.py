"""The onramp.* JSON-RPC methods (thin: the work is in tachyond.onramp.service.OnrampService)."""

from __future__ import annotations

from typing import Any

from ..rpc import Param
from ..rpc.dispatch import Registry
from .service import OnrampService, parse_lookback_h


def register(registry: Registry, service: OnrampService) -> None:
    """Register onramp.*."""
    r = registry

    @r.method("onramp.create_session", [
        Param("provider", required=False, description="an [onramp.<name>] provider; the only one when omitted"),
        Param("account", required=False, description="the account the topup is for (default: default)"),
        Param("destination_address", description="the wallet address the crypto is delivered to"),
        Param("network", required=False, description="e.g. ethereum, solana, base (default: the provider's)"),
        Param("currency", required=False, description="e.g. usdc (default: the provider's); must be a token"),
        Param("amount", description="decimal string in whole tokens, exact for the token, e.g. \"25.50\""),
        Param("customer_ip_address", required=False,
              description="the buyer's IPv4/IPv6 address: the provider refuses unsupported regions at once "
                          "(RegionNotAllowed, -32033)"),
    ], result="{id, url, url_kind: hosted|embedded|none, client_secret, status, provider}; url is the provider's "
              "hosted page, or the daemon's embedded page GET /onramp/{id} when the provider gives none")
    async def create_session(p: dict[str, Any]) -> Any:
        """Create an onramp session tagged with this wallet (address, network, region and amount checked first)."""
        return await service.create_session(p.get("provider"), p.get("account", "default"),
                                            p["destination_address"], p.get("network"), p.get("currency"),
                                            p["amount"], p.get("customer_ip_address"))

    @r.method("onramp.quote", [
        Param("provider", required=False, description="an [onramp.<name>] provider; the only one when omitted"),
        Param("currency", required=False, description="e.g. usdc (default: the provider's)"),
        Param("network", required=False, description="e.g. base (default: the provider's)"),
        Param("amount", description="decimal string: whole tokens to receive, or fiat to spend with "
                                    "amount_is=source, e.g. \"100\""),
        Param("amount_is", required=False, enum=("destination", "source"),
              description="destination (default): amount is crypto to receive; source: fiat (usd) to spend"),
    ], result="{provider, network, currency, destination_amount, source_amount, source_currency, "
              "source_total_amount, fees: {network, transaction}, fetched_at}")
    async def quote(p: dict[str, Any]) -> Any:
        """The provider's current price and fees for a purchase (nothing is created or reserved)."""
        return await service.quote(p.get("provider"), p.get("currency"), p.get("network"), p["amount"],
                                   p.get("amount_is"))

    @r.method("onramp.parked", [Param("provider", required=False)],
              result="[{session_id, provider, status, reason, account, at}]")
    async def parked(p: dict[str, Any]) -> Any:
        """Sessions the provider confirmed but this wallet did not credit, each with its reason (livemode
        mismatch, delivered elsewhere, unknown status, …): for an operator to review."""
        return await service.parked(p.get("provider"))

    @r.method("onramp.pending", [Param("provider", required=False)],
              result="[{session_id, provider, account, token, amount, amount_minor, network, received_at}]")
    async def pending(p: dict[str, Any]) -> Any:
        """Topups the provider confirmed as delivered, waiting for onramp.claim."""
        return await service.pending(p.get("provider"))

    @r.method("onramp.claim", [Param("session_id"),
                               Param("account", required=False, description="credit this account instead of the "
                                                                            "one the session was created for")],
              result="{session_id, account, token, amount, amount_minor, entry_id}")
    async def claim(p: dict[str, Any]) -> Any:
        """Credit a pending topup in one ledger entry keyed onramp:<session_id>; a second claim is `not found`."""
        return await service.claim(p["session_id"], p.get("account"))

    @r.method("onramp.reconcile", [Param("lookback_h", ("integer", "number"), required=False,
                                         description="hours back to list sessions (default: the provider's "
                                                     "reconcile_lookback_h)")],
              result="{checked, enqueued}")
    async def reconcile(p: dict[str, Any]) -> Any:
        """List recent sessions at the provider and queue the complete ones of this wallet that no webhook brought."""
        return await service.reconcile(parse_lookback_h(p.get("lookback_h")))

    @r.method("onramp.reverse", [Param("session_id"), Param("reason", description="why: refund, chargeback, …")],
              result="the compensating entry, with reversal: {account, token, amount, debited, shortfall, …}")
    async def reverse(p: dict[str, Any]) -> Any:
        """Book a refund or chargeback of a claimed topup: debit what is available, record the rest as debt."""
        return await service.reverse(p["session_id"], p["reason"])
