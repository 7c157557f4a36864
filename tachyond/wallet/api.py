"""RPC methods of the wallet: wallet.create, unlock, lock, change_password, backup."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ..config import WalletConfig
from ..errors import InvalidParams
from ..rpc import Param
from ..rpc.dispatch import Registry
from ..runtime import logs
from .wallet import Wallet

PASSWORD = "a non-empty string; never logged"


def register(registry: Registry, wallet: Wallet, *, settings: Callable[[], WalletConfig],
             on_unlocked: Callable[[], Awaitable[None]]) -> None:
    """Register wallet.*. ``settings`` gives the [wallet] table in force (a reload may change it: read at each
    call); ``on_unlocked`` tells the services that need the key (engines, the onramp worker)."""
    r = registry

    def check_new_password(password: object, param: str) -> None:
        """[wallet] min_password_length, for a password being set (create, change_password)."""
        minimum = settings().min_password_length
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
        await on_unlocked()  # a new wallet is unlocked: engines open, the onramp inbox is worked
        return result

    @r.method("wallet.unlock", [Param("password", description=PASSWORD),
                                Param("timeout_s", ("integer", "number"), required=False,
                                      description="lock again after this many seconds (0: stay unlocked); "
                                                  "default [wallet] unlock_timeout_s")],
              result="{unlocked: true, until?}")
    async def unlock(p: dict[str, Any]) -> Any:
        """Unlock with the password. A new unlock replaces the previous timeout; wrong passwords wait longer each time."""  # noqa: E501 (shown verbatim)
        timeout_s = p.get("timeout_s", settings().unlock_timeout_s)
        result = await wallet.unlock(p["password"], timeout_s)
        logs.add_secret(p["password"])  # verified: a wrong password never enters the redaction set
        await on_unlocked()
        return result

    @r.method("wallet.lock", result="{locked: true}")
    async def lock(p: dict[str, Any]) -> Any:
        """Drop the key from memory (the wallet's, its writer's and every engine's: answers once all have); anything that needs it answers `wallet is locked`."""  # noqa: E501 (shown verbatim)
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
        """Rewrap the data key under the new password. With rotate_data_key, first replace the data key (and the X25519 key) and re-encrypt the wallet, the inbox and engine files, so an old backup with an old password opens nothing written after; the wallet reads as locked meanwhile."""  # noqa: E501 (shown verbatim)
        check_new_password(p["new_password"], "new_password")
        result = await wallet.change_password(p["old_password"], p["new_password"], p.get("rotate_data_key", False))
        logs.add_secret(p["old_password"])
        logs.add_secret(p["new_password"])
        return result

    @r.method(
        "wallet.backup", [Param("path", description="a new file the daemon's user can create")], result="{path, bytes}"
    )
    async def backup(p: dict[str, Any]) -> Any:
        """A consistent, still-encrypted copy taken while running (SQLite online backup); it opens with the same password."""  # noqa: E501 (shown verbatim)
        return await wallet.backup(p["path"])
