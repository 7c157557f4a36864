"""The inbox's housekeeping on a full disk: a refused prune is a plain warning (no traceback, nothing deleted),
and it deletes once there is room again. In-process on a real wallet file on a small tmpfs (needs root)."""

from __future__ import annotations

import logging
import time

import pytest
import trio
from conftest import fill_disk

from tachyond.amounts import Token
from tachyond.errors import WriteFailed
from tachyond.ledger.service import Ledger
from tachyond.onramp import store
from tachyond.onramp.inbox import Inbox
from tachyond.runtime.metrics import Metrics
from tachyond.wallet.wallet import Wallet


def _old_processed_rows_op(tx, n: int) -> None:
    old = time.time() - store.INBOX_RETENTION_S - 86400
    tx.conn.executemany("INSERT INTO onramp_inbox (sealed, received_at, processed_at) VALUES (?, ?, ?)",
                        [(b"x" * 512, old, old) for _ in range(n)])


async def _count(wallet: Wallet) -> int:
    return await wallet.read(lambda rtx: rtx.conn.execute("SELECT count(*) FROM onramp_inbox").fetchone()[0])


async def test_a_prune_refused_by_a_full_disk_is_a_warning_and_deletes_once_there_is_room(small_fs, caplog):
    usdc = Token("USDC", 6)
    wallet = Wallet(small_fs / "data", scrypt_n=2**10)
    ledger = Ledger(wallet, {"USDC": usdc})
    wallet.add_schema("onramp", store.SCHEMA)
    inbox = Inbox(wallet, {}, {"USDC": usdc}, Metrics())
    with trio.fail_after(60):
        await wallet.start()
        try:
            await wallet.create("disk-full-inbox-pw")
            await wallet.write(_old_processed_rows_op, 2000)
            assert await _count(wallet) == 2000
            fill_disk(small_fs / "ballast")
            for i in range(5000):   # use up the room SQLite still holds until the first refusal
                try:
                    await ledger.deposit("default", "USDC", 1, f"slack-{i}")
                except WriteFailed:
                    break
            else:
                pytest.fail("5,000 deposits fitted on a full 4 MiB filesystem")

            caplog.clear()
            with caplog.at_level(logging.INFO, logger="tachyond"):
                await inbox._prune_inbox()
            [record] = [r for r in caplog.records if "pruning failed" in r.getMessage()]
            assert record.levelno == logging.WARNING and record.exc_info is None, record.getMessage()
            assert "full" in record.getMessage()
            assert not [r for r in caplog.records if r.exc_info]   # no traceback anywhere (the writer says ERROR)
            assert await _count(wallet) == 2000          # nothing deleted

            (small_fs / "ballast").unlink()
            inbox._next_prune = -1e18                     # the hour has passed
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="tachyond"):
                await inbox._prune_inbox()
            assert await _count(wallet) == 0
            assert any("deleted 2000 events" in r.getMessage() for r in caplog.records)
        finally:
            await wallet.aclose()
