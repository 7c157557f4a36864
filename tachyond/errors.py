"""Application errors and their JSON-RPC codes (documented in docs/rpc.md)."""

from __future__ import annotations

import sqlite3

# JSON-RPC 2.0 specification codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603


class TachyonError(Exception):
    """An error a person can act on; carried to RPC clients with ``code`` and ``message``."""

    code = -32000
    title = "error"

    def __init__(self, message: str, *, data: object = None):
        super().__init__(message)
        self.message = message
        self.data = data


class InvalidParams(TachyonError):
    """A param is missing, of the wrong type, unknown or out of range (-32602)."""

    code = INVALID_PARAMS
    title = "invalid params"


class WalletLocked(TachyonError):
    code = -32001
    title = "wallet is locked"

    def __init__(self, message: str = "wallet is locked: run `tachyon-ctl wallet unlock`", **kw):
        super().__init__(message, **kw)


class WalletAbsent(TachyonError):
    code = -32002
    title = "no wallet"

    def __init__(self, message: str = "no wallet: run `tachyon-ctl wallet create`", **kw):
        super().__init__(message, **kw)


class WalletExists(TachyonError):
    code = -32003
    title = "wallet exists"


class WrongPassword(TachyonError):
    code = -32004
    title = "wrong password"


class NotFound(TachyonError):
    code = -32005
    title = "not found"


class AmountError(TachyonError):
    """An amount that is malformed, negative, zero where not allowed, or finer than the token allows."""

    code = -32010
    title = "invalid amount"


class UnknownToken(TachyonError):
    code = -32011
    title = "unknown token"


class UnknownAccount(TachyonError):
    code = -32012
    title = "unknown account"


class InsufficientFunds(TachyonError):
    code = -32013
    title = "insufficient funds"


class Conflict(TachyonError):
    """An idempotency key or unique name reused with different content."""

    code = -32014
    title = "conflict"


class WriteFailed(TachyonError, sqlite3.OperationalError):
    """The wallet's database refused the write (a full disk, say): nothing was written; retry once it has room.

    Also an ``sqlite3.OperationalError``, so callers that treat storage failures as "try later" still do."""

    code = -32016
    title = "write failed"


class IntegrityError(TachyonError):
    """Stored data failed authentication (tampering or corruption)."""

    code = -32015
    title = "integrity failure"


class UnknownMarket(TachyonError):
    code = -32020
    title = "unknown market"


class OrderRejected(TachyonError):
    """An order refused before anything was locked: off tick, off lot, under min notional, post-only taking."""

    code = -32021
    title = "order rejected"


class OrderNotOpen(TachyonError):
    code = -32022
    title = "order not open"


class EngineError(TachyonError):
    code = -32023
    title = "engine error"


class InvalidAddress(TachyonError):
    code = -32030
    title = "invalid address"


class OnrampError(TachyonError):
    """The onramp provider refused or failed (its message is passed on, secrets removed)."""

    code = -32031
    title = "onramp provider error"


class ProviderNotConfigured(TachyonError):
    code = -32032
    title = "onramp provider not configured"


class RegionNotAllowed(TachyonError):
    code = -32033
    title = "network or currency not allowed"


class PluginError(TachyonError):
    """A plugin's code raised; the message names the plugin."""

    code = -32040
    title = "plugin error"


class ShuttingDown(TachyonError):
    code = -32050
    title = "daemon is stopping"

    def __init__(self, message: str = "daemon is stopping; retry after it restarts", **kw):
        super().__init__(message, **kw)


class ReloadRefused(TachyonError):
    """A reload that applied nothing: the file does not parse, or a key that needs a restart changed."""

    code = -32060
    title = "reload refused"


ALL_ERRORS: list[type[TachyonError]] = [
    TachyonError, InvalidParams, WalletLocked, WalletAbsent, WalletExists, WrongPassword, NotFound,
    AmountError, UnknownToken, UnknownAccount, InsufficientFunds, Conflict, IntegrityError, WriteFailed,
    UnknownMarket, OrderRejected, OrderNotOpen, EngineError, InvalidAddress, OnrampError,
    ProviderNotConfigured, RegionNotAllowed, PluginError, ShuttingDown, ReloadRefused,
]
