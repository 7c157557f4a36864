"""Upgrades: a wallet file written by release 0.1.0 opens after the history-index migration, backed up first."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import base_document

pytestmark = pytest.mark.slow

RELEASE = Path(__file__).parent.parent / "data" / "release-0.1.0"
PASSWORD = "release 0.1.0 wallet"


def _modules(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT name, applied FROM schema_modules"))


def _inspect(path: Path) -> dict:
    r = subprocess.run([sys.executable, "-m", "tachyond", "inspect", "--json", str(path)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _dump(path: Path) -> list[str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return list(conn.iterdump())


def test_a_release_wallet_opens_after_the_migration_with_a_backup_beside_it(daemon_factory, sockdir):
    data = sockdir / "data"
    data.mkdir(mode=0o700)
    for name in ("wallet.db", "engine-sqlite.db"):
        shutil.copy(RELEASE / name, data / name)
    original = _dump(data / "wallet.db")  # the copy: reading the fixture in place would leave -shm/-wal beside it
    assert _modules(data / "wallet.db")["ledger"] == 5
    before = _inspect(data / "wallet.db")
    assert before["modules"]["ledger"] == {"applied": 5, "this_release": 7}
    assert {t["name"]: t["rows"] for t in before["tables"]}["ledger_journal"] == 25
    assert "ledger_history" not in {t["name"] for t in before["tables"]}
    (sockdir / "pw").write_text(PASSWORD)
    doc = base_document(sockdir, wallet={"password_file": str(sockdir / "pw")},
                        tokens=[{"symbol": "USDC", "decimals": 6}, {"symbol": "ZEC", "decimals": 8}],
                        markets=[{"symbol": "ZEC/USDC", "engine": "sqlite", "tick": "0.01", "lot": "0.0001",
                                  "min_notional": "1", "maker_fee_bps": 10, "taker_fee_bps": 20}])
    d = daemon_factory(doc).start()

    [backup] = sorted(data.glob("wallet.db.pre-migration-*.bak"))
    assert backup.stat().st_mode & 0o777 == 0o600
    assert _dump(backup) == original  # the file as the release left it, before any statement ran
    assert _modules(data / "wallet.db")["ledger"] == 7 and _modules(backup)["ledger"] == 5
    assert str(backup) in d.stderr() and "ledger 5->7" in d.stderr()

    assert d.call("daemon.info")["wallet"] == "unlocked"
    assert d.call("ledger.verify")["ok"] is True
    balances = {(b["account"], b["token"]): b["available_minor"] for b in d.call("ledger.balances")}
    assert balances[("alice", "USDC")] == 929_900_000 and balances[("bob", "USDC")] == 49_950_000
    # The release ran the sqlite engine on its own file; the default now (in_wallet) keeps the engine's log in
    # wallet.db: the file is read once (nothing after the ledger's applied seq to replay) and put away.
    assert not (data / "engine-sqlite.db").exists() and (data / "engine-sqlite.db.migrated").exists()
    book = d.call("dex.order_book", {"market": "ZEC/USDC"})
    assert (book["bids"], book["asks"]) == ([], [["50.00", "1.00"]])   # bob's 2 at 50.00, 1 of them sold
    everything = d.call("ledger.history", {"limit": 1000})
    assert len(everything) == 25
    for account in ("alice", "bob", "default"):
        # The index, filled from the old entries at unlock, answers what a scan of the journal would.
        expected = [e for e in everything if any(p["account"] == account for p in e["postings"])]
        assert d.call("ledger.history", {"account": account, "limit": 1000}) == expected
    assert (
        len(d.call("ledger.history", {"account": "alice", "limit": 1000})) == 1 + 20 + 2
    )  # deposit, transfers, order lock, fill
    with sqlite3.connect(data / "wallet.db") as conn:
        assert conn.execute("SELECT count(*) FROM meta WHERE key = 'history_index_through'").fetchone()[0] == 0
        tags = conn.execute("SELECT count(DISTINCT account_tag) FROM ledger_history").fetchone()[0]
        assert tags == len({p["account"] for e in everything for p in e["postings"]})  # tags, never names
    # New entries are indexed as they are written; the restart migrates nothing and copies nothing.
    d.call("ledger.transfer", {"from": "alice", "to": "bob", "token": "USDC", "amount": "2", "reference": "after"})
    assert d.call("ledger.history", {"account": "bob", "limit": 1})[0]["key"] == "transfer:after"
    assert d.stop() == 0
    d2 = daemon_factory(doc).start()
    assert d2.call("ledger.history", {"account": "bob", "limit": 1})[0]["key"] == "transfer:after"
    assert len(list(data.glob("wallet.db.pre-migration-*.bak"))) == 1
    o = d2.call("dex.place_order", {"account": "alice", "market": "ZEC/USDC", "side": "buy", "type": "limit",
                                    "qty": "0.5", "price": "50.00"})
    assert [(t["price"], Decimal(t["qty"])) for t in o["trades"]] == [("50.00", Decimal("0.5"))]
    assert d2.call("ledger.verify")["ok"] is True
    assert d2.stop() == 0
    assert not (data / "engine-sqlite.db").exists()   # the restart did not go back to the file
    with sqlite3.connect(data / "wallet.db") as conn:
        assert conn.execute("SELECT count(*) FROM engine_sqlite_events").fetchone()[0] > 0
    after = _inspect(data / "wallet.db")
    assert after["modules"]["ledger"] == {"applied": 7, "this_release": 7}
    rows = {t["name"]: t["rows"] for t in after["tables"]}
    assert rows["ledger_journal"] > 26 and rows["ledger_history"] > 26
    human = subprocess.run([sys.executable, "-m", "tachyond", "inspect", str(backup)], capture_output=True, text=True,
                           timeout=30)
    assert human.returncode == 0 and "(migrated at the next start, after a backup)" in human.stdout
    assert PASSWORD not in human.stdout and "alice" not in human.stdout
    missing = subprocess.run([sys.executable, "-m", "tachyond", "inspect", str(sockdir / "nope.db")],
                             capture_output=True, text=True, timeout=30)
    assert missing.returncode == 1 and "no such file" in missing.stderr


def test_a_release_engine_file_is_still_the_engine_s_log_with_in_wallet_false(daemon_factory, sockdir):
    """``[engines.sqlite] in_wallet = false`` keeps the file mode: the release's engine-sqlite.db is opened and
    written as before (its book trades on), nothing is renamed, and wallet.db gets no engine table."""
    data = sockdir / "data"
    data.mkdir(mode=0o700)
    for name in ("wallet.db", "engine-sqlite.db"):
        shutil.copy(RELEASE / name, data / name)
    (sockdir / "pw").write_text(PASSWORD)
    doc = base_document(sockdir, wallet={"password_file": str(sockdir / "pw")},
                        tokens=[{"symbol": "USDC", "decimals": 6}, {"symbol": "ZEC", "decimals": 8}],
                        markets=[{"symbol": "ZEC/USDC", "engine": "sqlite", "tick": "0.01", "lot": "0.0001",
                                  "min_notional": "1", "maker_fee_bps": 10, "taker_fee_bps": 20}],
                        engines={"sqlite": {"in_wallet": False}})
    d = daemon_factory(doc).start()
    book = d.call("dex.order_book", {"market": "ZEC/USDC"})
    assert (book["bids"], book["asks"]) == ([], [["50.00", "1.00"]])
    with sqlite3.connect(data / "engine-sqlite.db") as conn:
        events_before = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    o = d.call("dex.place_order", {"account": "alice", "market": "ZEC/USDC", "side": "buy", "type": "limit",
                                   "qty": "0.5", "price": "50.00"})
    assert [(t["price"], Decimal(t["qty"])) for t in o["trades"]] == [("50.00", Decimal("0.5"))]
    assert d.call("ledger.verify")["ok"] is True
    assert d.stop() == 0
    assert not list(data.glob("*.migrated*"))
    with sqlite3.connect(data / "engine-sqlite.db") as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] > events_before
    with sqlite3.connect(data / "wallet.db") as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "engine_sqlite_events" not in tables


def test_the_pre_migration_backup_skips_a_taken_name_and_never_follows_a_link(daemon_factory, sockdir):
    """Every name the backup could take in the next minutes is a dangling symlink: the daemon takes the next
    free name (…-2.bak), writes nothing where the links point, and starts."""
    data = sockdir / "data"
    data.mkdir(mode=0o700)
    for name in ("wallet.db", "engine-sqlite.db"):
        shutil.copy(RELEASE / name, data / name)
    original = _dump(data / "wallet.db")
    target = sockdir / "elsewhere"
    now = int(time.time())
    for t in range(now - 5, now + 300):
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))
        (data / f"wallet.db.pre-migration-{stamp}.bak").symlink_to(target)
    (sockdir / "pw").write_text(PASSWORD)
    doc = base_document(sockdir, wallet={"password_file": str(sockdir / "pw")},
                        tokens=[{"symbol": "USDC", "decimals": 6}, {"symbol": "ZEC", "decimals": 8}],
                        markets=[{"symbol": "ZEC/USDC", "engine": "sqlite", "tick": "0.01", "lot": "0.0001",
                                  "min_notional": "1", "maker_fee_bps": 10, "taker_fee_bps": 20}])
    d = daemon_factory(doc).start()
    assert d.call("daemon.info")["wallet"] == "unlocked"
    assert not target.exists()
    [backup] = [p for p in data.glob("wallet.db.pre-migration-*.bak") if not p.is_symlink()]
    assert backup.name.endswith("-2.bak") and backup.stat().st_mode & 0o777 == 0o600
    assert _dump(backup) == original
    assert not list(data.glob(".backup-*"))  # the scratch copy is gone
    assert d.stop() == 0


def test_inspect_of_a_stopped_wallet_creates_nothing_beside_it(tmp_path):
    """A read-only open of a WAL file leaves -wal/-shm behind; made by root on the daemon's data_dir they would
    stop the daemon (its own user) from opening its wallet. inspect leaves the directory as it found it."""
    data = tmp_path / "data dir %1"  # a path a URI must quote
    data.mkdir()
    shutil.copy(RELEASE / "wallet.db", data / "wallet.db")
    assert _inspect(data / "wallet.db")["modules"]["ledger"]["applied"] == 5
    assert sorted(p.name for p in data.iterdir()) == ["wallet.db"]
