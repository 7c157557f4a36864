"""The wallet's readers: a pool of query_only connections; each read is one snapshot in a worker thread and
never waits for the writer (WAL)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .crypto import WalletKeys
from .writer import ReadTx, connect


class Readers:
    """Reader connections to the wallet file, opened on demand and kept for the next read until ``close``."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._idle: list[sqlite3.Connection] = []

    def run(self, fn: Callable[..., Any], args: tuple, keys: WalletKeys | None, absent: bool) -> Any:
        """fn(rtx, *args) in one deferred transaction on an idle connection (a new one when none is idle),
        rolled back after; called in a worker thread."""
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = connect(self._path)
            conn.execute("PRAGMA query_only = ON")
        try:
            conn.execute("BEGIN")
            try:
                rtx = ReadTx(conn, keys)
                rtx.absent = absent
                return fn(rtx, *args)
            finally:
                conn.execute("ROLLBACK")
        finally:
            self._idle.append(conn)

    def close(self) -> None:
        """Close the idle connections (at the wallet's close, once no read runs)."""
        while self._idle:
            self._idle.pop().close()
