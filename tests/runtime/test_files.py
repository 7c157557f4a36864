"""Files at rest: data_dir 0700 and every database, WAL, SHM and engine file 0600 whatever the umask; backups
written only through the descriptor the daemon created (no symlink followed); core dumps off in the daemon."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
from conftest import DaemonProc
from tachyon_sqlite_engine import SqliteEngine
from test_dex_helpers import PASSWORD, dex_document, fund, order

from tachyond import errors
from tachyond.amounts import Token
from tachyond.engine import EngineContext, EngineOrder, MarketSpec
from tachyond.ledger.service import Ledger
from tachyond.wallet.wallet import Wallet

PW = "files test password"
MARKET = MarketSpec("ZEC/USDC", "ZEC", "USDC", "0.01", "0.001")


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def assert_private_tree(data_dir: Path, expected: set[str]) -> None:
    assert mode(data_dir) == 0o700
    names = {p.name for p in data_dir.iterdir()}
    assert expected <= names, names
    for p in data_dir.iterdir():
        assert stat.S_ISREG(os.lstat(p).st_mode) and mode(p) == 0o600, f"{p.name} is {oct(mode(p))}"


async def test_wallet_and_sqlite_engine_files_are_private_with_umask_0(tmp_path):
    data = tmp_path / "state" / "data"
    with trio.fail_after(30), umask(0):
        wallet = Wallet(data, scrypt_n=2**10)
        ledger = Ledger(wallet, {"USDC": Token("USDC", 6)})
        async with wallet:
            await wallet.create(PW)
            await ledger.deposit("default", "USDC", 5, "r1")
            # The engine's own file (in_wallet = false): its log, WAL, shm and lock are created 0600 too.
            engine = SqliteEngine(EngineContext("sqlite", data, wallet.cipher, {"in_wallet": False}))
            await engine.start([MARKET])
            try:
                await engine.submit(EngineOrder("o1", MARKET.symbol, "alice", "buy", 100, 5))
                assert_private_tree(data, {"wallet.db", "wallet.db-wal", "wallet.db-shm", "engine-sqlite.db",
                                           "engine-sqlite.db-wal", "engine-sqlite.db-shm", "engine-sqlite.db.lock"})
                dest = tmp_path / "backup.db"
                await wallet.backup(dest)
                assert mode(dest) == 0o600
            finally:
                await engine.aclose()


async def test_files_of_an_older_daemon_are_made_private_at_open(tmp_path):
    data = tmp_path / "data"
    with trio.fail_after(30):
        async with Wallet(data, scrypt_n=2**10) as wallet:
            await wallet.create(PW)
        for p in data.iterdir():
            os.chmod(p, 0o644)
        async with Wallet(data, scrypt_n=2**10) as wallet:
            await wallet.unlock(PW)
            for p in data.iterdir():
                assert mode(p) == 0o600, p.name


async def test_backup_refuses_a_symlink_and_writes_nothing_through_it(tmp_path):
    with trio.fail_after(30):
        async with Wallet(tmp_path / "data", scrypt_n=2**10) as wallet:
            await wallet.create(PW)
            victim = tmp_path / "victim"
            victim.write_bytes(b"precious")
            link = tmp_path / "link.db"
            link.symlink_to(victim)
            with pytest.raises((errors.Conflict, errors.InvalidParams)):
                await wallet.backup(link)
            assert victim.read_bytes() == b"precious" and link.is_symlink()
            dangling = tmp_path / "dangling.db"
            dangling.symlink_to(tmp_path / "created-through-link")
            with pytest.raises((errors.Conflict, errors.InvalidParams)):
                await wallet.backup(dangling)
            assert not (tmp_path / "created-through-link").exists()
            # A directory in the path that is a link to elsewhere is the operator's choice, and still works.
            real = tmp_path / "real"
            real.mkdir()
            (tmp_path / "via").symlink_to(real)
            result = await wallet.backup(tmp_path / "via" / "copy.db")
            assert (real / "copy.db").stat().st_size == result["bytes"] > 0
            assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".backup-")]  # scratch gone


async def test_daemon_under_umask_0_keeps_data_dir_private_and_core_dumps_off(sockdir):
    with trio.fail_after(60):
        with umask(0):
            d = DaemonProc(sockdir, dex_document(sockdir, "sqlite"))
            await trio.to_thread.run_sync(d.start)
        try:
            await trio.to_thread.run_sync(d.call, "wallet.create", {"password": PASSWORD})
            await fund(d, "alice", USDC="100")
            await order(d, "alice", "buy", "1", "10.00")
            data = sockdir / "data"
            # The sqlite engine by default (in_wallet) keeps its log as a table of wallet.db: no file of its own.
            assert_private_tree(data, {"wallet.db", "wallet.db-wal", "wallet.db-shm"})
            assert not list(data.glob("engine-sqlite.db*"))
            with sqlite3.connect(f"file:{data / 'wallet.db'}?mode=ro", uri=True) as conn:
                assert conn.execute("SELECT count(*) FROM engine_sqlite_events").fetchone()[0] >= 1
            backup = await trio.to_thread.run_sync(d.call, "wallet.backup", {"path": str(sockdir / "b.db")})
            assert mode(Path(backup["path"])) == 0o600
            limits = Path(f"/proc/{d.proc.pid}/limits").read_text()
            core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
            assert core.split()[4:6] == ["0", "0"], core
        finally:
            d.stop()


def test_disable_core_dumps_clears_dumpable_in_a_fresh_process():
    code = ("import ctypes, resource; from tachyond.runtime.hardening import disable_core_dumps; "
            "done = disable_core_dumps(); libc = ctypes.CDLL(None); "
            "print(done['rlimit_core'], done['not_dumpable'], libc.prctl(3, 0, 0, 0, 0), "
            "resource.getrlimit(resource.RLIMIT_CORE))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.split(None, 3) == ["True", "True", "0", "(0, 0)\n"]
