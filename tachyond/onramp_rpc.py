"""The onramp.* JSON-RPC methods (thin: the work is in tachyond.onramp.OnrampService)."""

from __future__ import annotations

from typing import Any

from .rpc import Param


def register_onramp_methods(d: Any, service: Any) -> None:
    r = d.registry
    from .onramp import parse_lookback_h

    @r.method("onramp.create_session", [
        Param("provider", required=False, description="an [onramp.<name>] provider; the only one when omitted"),
        Param("account", required=False, description="the account the topup is for (default: default)"),
        Param("destination_address", description="the wallet address the crypto is delivered to"),
        Param("network", required=False, description="e.g. ethereum, solana, base (default: the provider's)"),
        Param("currency", required=False, description="e.g. usdc (default: the provider's); must be a token"),
        Param("amount", description="decimal string in whole tokens, exact for the token, e.g. \"25.50\""),
    ], result="{id, url, client_secret, status, provider}")
    async def create_session(p: dict[str, Any]) -> Any:
        """Create an onramp session tagged with this wallet (address, network, region and amount checked first)."""
        return await service.create_session(p.get("provider"), p.get("account", "default"),
                                            p["destination_address"], p.get("network"), p.get("currency"),
                                            p["amount"])

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
