"""RPC methods of the wallet and the ledger: wallet.*, accounts.*, tokens.list, ledger.*."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidParams
from ..rpc import Param
from ..runtime import logs

PASSWORD = "a non-empty string; never logged"


def register_wallet_methods(d: Any) -> None:
    r = d.registry
    wallet, ledger = d.wallet, d.ledger

    def check_new_password(password: object, param: str) -> None:
        """[wallet] min_password_length, for a password being set (create, change_password)."""
        minimum = d.config.wallet.min_password_length
        if isinstance(password, str) and len(password) < minimum:
            raise InvalidParams(f"{param} must be at least {minimum} characters ([wallet] min_password_length)",
                                data={"param": param})

    @r.method("wallet.create", [Param("password", description=PASSWORD)], result="{created: true, public_id}")
    async def create(p: dict[str, Any]) -> Any:
        """Create the wallet (left unlocked); an error if one exists in data_dir."""
        if wallet.state == "absent":
            check_new_password(p["password"], "password")
        result = await wallet.create(p["password"])
        logs.add_secret(p["password"])  # redacted once it is the wallet's password, not before
        await d.on_unlocked()  # a new wallet is unlocked: engines open, the onramp inbox is worked
        return result

    @r.method("wallet.unlock", [Param("password", description=PASSWORD),
                                Param("timeout_s", ("integer", "number"), required=False,
                                      description="lock again after this many seconds (0: stay unlocked); "
                                                  "default [wallet] unlock_timeout_s")],
              result="{unlocked: true, until?}")
    async def unlock(p: dict[str, Any]) -> Any:
        """Unlock with the password. A new unlock replaces the previous timeout; wrong passwords wait longer each time."""
        timeout_s = p.get("timeout_s", d.config.wallet.unlock_timeout_s)
        result = await wallet.unlock(p["password"], timeout_s)
        logs.add_secret(p["password"])  # verified: a wrong password never enters the redaction set
        await d.on_unlocked()
        return result

    @r.method("wallet.lock", result="{locked: true}")
    async def lock(p: dict[str, Any]) -> Any:
        """Drop the key from memory (the wallet's, its writer's and every engine's: answers once all have); anything that needs it answers `wallet is locked`."""
        return await wallet.lock()

    @r.method(
        "wallet.change_password",
        [
            Param("old_password", description=PASSWORD),
            Param("new_password", description=PASSWORD),
            Param(
                "rotate_data_key",
                "boolean",
                required=False,
                description="also replace the data key and re-encrypt everything under it (default false)",
            ),
        ],
        result="{changed: true, rotated?: true}",
    )
    async def change_password(p: dict[str, Any]) -> Any:
        """Rewrap the data key under the new password. With rotate_data_key, first replace the data key (and the X25519 key) and re-encrypt the wallet, the inbox and engine files, so an old backup with an old password opens nothing written after; the wallet reads as locked meanwhile."""
        check_new_password(p["new_password"], "new_password")
        result = await wallet.change_password(p["old_password"], p["new_password"], p.get("rotate_data_key", False))
        logs.add_secret(p["old_password"])
        logs.add_secret(p["new_password"])
        return result

    @r.method(
        "wallet.backup", [Param("path", description="a new file the daemon's user can create")], result="{path, bytes}"
    )
    async def backup(p: dict[str, Any]) -> Any:
        """A consistent, still-encrypted copy taken while running (SQLite online backup); it opens with the same password."""
        return await wallet.backup(p["path"])

    @r.method("accounts.create", [Param("name", description="lower-case letters, digits, _ . - (up to 64)")],
              result="{name, created_at}")
    async def accounts_create(p: dict[str, Any]) -> Any:
        """Create a user account."""
        wallet.keys  # WalletAbsent / WalletLocked before anything else
        return await ledger.create_account(p["name"])

    @r.method("accounts.list", result="[{name, created_at}]")
    async def accounts_list(p: dict[str, Any]) -> Any:
        """Every user account; `default` always exists."""
        wallet.keys  # WalletAbsent / WalletLocked before anything else
        return await ledger.list_accounts()

    @r.method("tokens.list", result="[{symbol, decimals, networks}]")
    async def tokens_list(p: dict[str, Any]) -> Any:
        """The tokens of this daemon, from [[tokens]]."""
        return [{"symbol": t.symbol, "decimals": t.decimals, "networks": list(t.networks)} for t in d.config.tokens]

    @r.method(
        "ledger.balances",
        [Param("account", required=False, description="one account; all user accounts when absent")],
        result="[{account, token, available, locked, available_minor, locked_minor}]",
    )
    async def balances(p: dict[str, Any]) -> Any:
        """Available and locked balance per account and token."""
        wallet.keys  # WalletAbsent / WalletLocked before anything else
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
        wallet.keys  # WalletAbsent / WalletLocked before anything else
        return await ledger.history(p.get("account"), p.get("limit", 50), p.get("before"))

    @r.method("ledger.verify", result="{ok, entries, problems: []}")
    async def verify(p: dict[str, Any]) -> Any:
        """Replay the journal against balances and holds and check the MAC chain."""
        wallet.keys  # WalletAbsent / WalletLocked before anything else
        return await ledger.verify()

    amount = Param("amount", description="decimal string in whole tokens, e.g. \"12.5\"")

    @r.method("ledger.deposit", [Param("account", required=False), Param("token"), amount,
                                 Param("reference", description="idempotency reference, e.g. a transaction hash")],
              result="the entry (the first one when the reference repeats with the same content; "
                     "Conflict -32014 naming it when with other content)")
    async def deposit(p: dict[str, Any]) -> Any:
        """Credit an account from `external:chain` (what a chain-sync plugin calls when base assets arrive); idempotent by reference."""
        wallet.keys  # WalletAbsent / WalletLocked before anything else
        tok = ledger.token(p["token"])
        return await ledger.deposit(p.get("account", "default"), tok.symbol, tok.to_minor(p["amount"]), p["reference"])

    @r.method("ledger.withdraw", [Param("account", required=False), Param("token"), amount, Param("reference")],
              result="the entry (the first one when the reference repeats with the same content; "
                     "Conflict -32014 naming it when with other content)")
    async def withdraw(p: dict[str, Any]) -> Any:
        """Debit an account to `external:chain`; idempotent by reference."""
        wallet.keys  # WalletAbsent / WalletLocked before anything else
        tok = ledger.token(p["token"])
        return await ledger.withdraw(p.get("account", "default"), tok.symbol, tok.to_minor(p["amount"]), p["reference"])

    @r.method(
        "ledger.transfer",
        [Param("from"), Param("to"), Param("token"), amount, Param("reference", required=False)],
        result="the entry (a repeated reference: as ledger.deposit)",
    )
    async def transfer(p: dict[str, Any]) -> Any:
        """Move available funds between two accounts of this wallet; idempotent by reference when one is given."""
        wallet.keys  # WalletAbsent / WalletLocked before anything else
        tok = ledger.token(p["token"])
        return await ledger.transfer(p["from"], p["to"], tok.symbol, tok.to_minor(p["amount"]), p.get("reference"))
