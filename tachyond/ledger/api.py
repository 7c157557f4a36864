"""RPC methods of the ledger: accounts.*, tokens.list, ledger.*."""

from __future__ import annotations

from typing import Any

from ..rpc import Param
from ..rpc.dispatch import Registry
from ..wallet.wallet import Wallet
from .service import Ledger


def register(registry: Registry, ledger: Ledger, wallet: Wallet) -> None:
    """Register accounts.*, tokens.list and ledger.*; each answers WalletAbsent / WalletLocked first."""
    r = registry

    @r.method("accounts.create", [Param("name", description="lower-case letters, digits, _ . - (up to 64)")],
              result="{name, created_at}")
    async def accounts_create(p: dict[str, Any]) -> Any:
        """Create a user account."""
        _ = wallet.keys  # WalletAbsent / WalletLocked before anything else
        return await ledger.create_account(p["name"])

    @r.method("accounts.list", result="[{name, created_at}]")
    async def accounts_list(p: dict[str, Any]) -> Any:
        """Every user account; `default` always exists."""
        _ = wallet.keys  # WalletAbsent / WalletLocked before anything else
        return await ledger.list_accounts()

    @r.method("tokens.list", result="[{symbol, decimals, networks}]")
    async def tokens_list(p: dict[str, Any]) -> Any:
        """The tokens of this daemon, from [[tokens]]."""
        tokens = ledger.tokens.values()  # config.tokens, in the same order
        return [{"symbol": t.symbol, "decimals": t.decimals, "networks": list(t.networks)} for t in tokens]

    @r.method(
        "ledger.balances",
        [Param("account", required=False, description="one account; all user accounts when absent")],
        result="[{account, token, available, locked, available_minor, locked_minor}]",
    )
    async def balances(p: dict[str, Any]) -> Any:
        """Available and locked balance per account and token."""
        _ = wallet.keys  # WalletAbsent / WalletLocked before anything else
        return await ledger.balances(p.get("account"))

    @r.method(
        "ledger.history",
        [
            Param("account", required=False),
            Param("limit", "integer", required=False, minimum=1),
            Param("before", "integer", required=False, description="entry id: page back from here"),
        ],
        result="journal entries, newest first: [{id, key, kind, ts, postings, memo, links}]",
    )
    async def history(p: dict[str, Any]) -> Any:
        """Journal entries, newest first (default 50, at most 1000 a call), optionally only those touching
        `account` (read through the history index, not by decrypting the journal). Paging: pass the last
        entry's id of a page as `before` (with the same account) for the next; a page shorter than `limit` is
        the last."""
        _ = wallet.keys  # WalletAbsent / WalletLocked before anything else
        return await ledger.history(p.get("account"), p.get("limit", 50), p.get("before"))

    @r.method("ledger.verify", result="{ok, entries, problems: []}")
    async def verify(p: dict[str, Any]) -> Any:
        """Replay the journal against balances and holds and check the MAC chain."""
        _ = wallet.keys  # WalletAbsent / WalletLocked before anything else
        return await ledger.verify()

    amount = Param("amount", description="decimal string in whole tokens, e.g. \"12.5\"")

    @r.method("ledger.deposit", [Param("account", required=False), Param("token"), amount,
                                 Param("reference", description="idempotency reference, e.g. a transaction hash")],
              result="the entry (the first one when the reference repeats with the same content; "
                     "Conflict -32014 naming it when with other content)")
    async def deposit(p: dict[str, Any]) -> Any:
        """Credit an account from `external:chain` (what a chain-sync plugin calls when base assets arrive); idempotent by reference."""  # noqa: E501 (shown verbatim)
        _ = wallet.keys  # WalletAbsent / WalletLocked before anything else
        tok = ledger.token(p["token"])
        return await ledger.deposit(p.get("account", "default"), tok.symbol, tok.to_minor(p["amount"]), p["reference"])

    @r.method("ledger.withdraw", [Param("account", required=False), Param("token"), amount, Param("reference")],
              result="the entry (the first one when the reference repeats with the same content; "
                     "Conflict -32014 naming it when with other content)")
    async def withdraw(p: dict[str, Any]) -> Any:
        """Debit an account to `external:chain`; idempotent by reference."""
        _ = wallet.keys  # WalletAbsent / WalletLocked before anything else
        tok = ledger.token(p["token"])
        return await ledger.withdraw(p.get("account", "default"), tok.symbol, tok.to_minor(p["amount"]), p["reference"])

    @r.method(
        "ledger.transfer",
        [Param("from"), Param("to"), Param("token"), amount, Param("reference", required=False)],
        result="the entry (a repeated reference: as ledger.deposit)",
    )
    async def transfer(p: dict[str, Any]) -> Any:
        """Move available funds between two accounts of this wallet; idempotent by reference when one is given."""
        _ = wallet.keys  # WalletAbsent / WalletLocked before anything else
        tok = ledger.token(p["token"])
        return await ledger.transfer(p["from"], p["to"], tok.symbol, tok.to_minor(p["amount"]), p.get("reference"))
