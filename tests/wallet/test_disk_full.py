"""A full disk under a real tachyond: a write is refused with a clear error, nothing is half-applied, and the
same write succeeds once space returns (the data_dir is a small tmpfs made by the test, hence root)."""

from __future__ import annotations

import pytest
from conftest import base_document, fill_disk

from tachyon_ctl.client import RpcError


def test_a_write_on_a_full_disk_is_a_clear_error_and_succeeds_once_space_returns(daemon_factory, sockdir, small_fs):
    doc = base_document(sockdir, tokens=[{"symbol": "USDC", "decimals": 6}])
    doc["daemon"]["data_dir"] = str(small_fs / "data")
    d = daemon_factory(doc).start()
    d.call("wallet.create", {"password": "disk-full-pw"})
    d.call("ledger.deposit", {"token": "USDC", "amount": "1", "reference": "before"})
    fill_disk(small_fs / "ballast")
    # SQLite may still have room in pages it already holds: write until the first refusal.
    for i in range(5000):
        ref = f"slack-{i}"
        try:
            d.call("ledger.deposit", {"token": "USDC", "amount": "1", "reference": ref})
        except RpcError as exc:
            refused = exc
            break
    else:
        pytest.fail("5,000 deposits fitted on a full 4 MiB filesystem")
    assert refused.code == -32016 and "write failed, nothing was written" in refused.message
    assert "full" in refused.message
    entries = d.call("ledger.verify")
    assert entries["ok"] is True
    newest = d.call("ledger.history", {"limit": 3})
    assert f"deposit:{ref}" not in [e["key"] for e in newest]  # nothing half-applied
    assert entries["entries"] == newest[0]["id"]
    assert d.proc.poll() is None
    assert "Traceback" not in d.stderr() and "write failed, nothing was written" in d.stderr()

    (small_fs / "ballast").unlink()
    entry = d.call("ledger.deposit", {"token": "USDC", "amount": "1", "reference": ref})
    assert entry["key"] == f"deposit:{ref}"
    assert d.call("ledger.deposit", {"token": "USDC", "amount": "1", "reference": ref})["id"] == entry["id"]
    assert d.call("ledger.verify") == {"ok": True, "entries": entries["entries"] + 1, "problems": []}
