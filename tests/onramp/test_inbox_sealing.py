"""Sealing inbox events to the wallet's X25519 key with one ephemeral key per short window (crypto.WindowSealer):
every event still has an AES-GCM key of its own, only the wallet's private key opens it (old version-1 rows too),
the window ends by time, by count and by a new recipient key, and the inbox worker drops its secret when it ends."""

from __future__ import annotations

import sqlite3

import pytest
import trio

from tachyond import errors, jsonx
from tachyond.config import from_mapping
from tachyond.onramp.inbox import Inbox
from tachyond.onramp.service import OnrampService
from tachyond.plugins import Plugins
from tachyond.runtime.metrics import Metrics
from tachyond.wallet import crypto
from tachyond.wallet.wallet import Wallet


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def onramp_inbox(wallet: Wallet, tmp_path) -> Inbox:
    """The onramp service's inbox on ``wallet``, with the service's tables and rotation declarations."""
    cfg = from_mapping({"daemon": {"data_dir": str(tmp_path), "socket": str(tmp_path / "rpc.sock")},
                        "tokens": [{"symbol": "USDC", "decimals": 6}]})
    return OnrampService(wallet, None, lambda: cfg, Metrics(), Plugins(), {}, {}, list).inbox  # type: ignore[arg-type]  # no ledger: the inbox does not use it


def header(blob: bytes) -> tuple[bytes, bytes, bytes]:
    """(version, ephemeral public key, per-event salt) of a version-2 blob."""
    return blob[:1], blob[1:33], blob[33:33 + crypto.SEAL_SALT_BYTES]


def test_events_of_one_window_share_the_ephemeral_key_but_each_has_its_own_key():
    private, public = crypto.new_private_key()
    sealer = crypto.WindowSealer()
    a, b = sealer.seal(public, b"event a"), sealer.seal(public, b"event b")
    assert crypto.open_sealed_with(private, a) == b"event a"
    assert crypto.open_sealed_with(private, b) == b"event b"
    (va, eph_a, salt_a), (vb, eph_b, salt_b) = header(a), header(b)
    assert va == vb == crypto.SEAL_VERSION_WINDOW and eph_a == eph_b and salt_a != salt_b
    # The salt is part of what derives the event's key (and of the associated data): under b's salt, a's
    # ciphertext does not open.
    swapped = a[:33] + salt_b + a[33 + crypto.SEAL_SALT_BYTES:]
    with pytest.raises(errors.IntegrityError):
        crypto.open_sealed_with(private, swapped)
    # open_sealed_with derives the key with cryptography's HKDF (the seal uses HMAC for HKDF's two steps), so the
    # openings above show both agree; another wallet's key opens nothing.
    other_private, _ = crypto.new_private_key()
    with pytest.raises(errors.IntegrityError):
        crypto.open_sealed_with(other_private, a)


def test_altered_blobs_fail_and_version_1_blobs_still_open():
    private, public = crypto.new_private_key()
    blob = crypto.WindowSealer().seal(public, b'{"event": "x"}')
    for i in (0, 5, 40, 60, len(blob) - 1):
        tampered = bytearray(blob)
        tampered[i] ^= 1
        with pytest.raises(errors.IntegrityError):
            crypto.open_sealed_with(private, bytes(tampered))
    with pytest.raises(errors.IntegrityError):
        crypto.open_sealed_with(private, blob[:40])
    old_row = crypto.seal_to_public(public, b"sealed by an older daemon")
    assert old_row[:1] == crypto.SEAL_VERSION
    assert crypto.open_sealed_with(private, old_row) == b"sealed by an older daemon"


def test_the_window_ends_by_time_by_count_and_with_a_new_recipient():
    clock = Clock()
    _, public = crypto.new_private_key()
    sealer = crypto.WindowSealer(window_s=1.0, max_events=3, clock=clock)
    first = header(sealer.seal(public, b"1"))[1]
    assert header(sealer.seal(public, b"2"))[1] == first
    clock.now += 0.5
    assert header(sealer.seal(public, b"3"))[1] == first
    fourth = header(sealer.seal(public, b"4"))[1]          # the window held 3 events
    assert fourth != first
    clock.now += 1.0
    fifth = header(sealer.seal(public, b"5"))[1]           # its second is over
    assert fifth not in (first, fourth)
    _, rotated = crypto.new_private_key()
    assert header(sealer.seal(rotated, b"6"))[1] != fifth  # a rotated wallet key: a new window


def test_expire_drops_the_windows_secret_when_it_ends():
    clock = Clock()
    _, public = crypto.new_private_key()
    sealer = crypto.WindowSealer(window_s=1.0, clock=clock)
    assert sealer.expire() == float("inf") and not sealer.open_window
    first = header(sealer.seal(public, b"1"))[1]
    assert sealer.expire() == pytest.approx(1.0) and sealer.open_window
    clock.now += 1.0
    assert sealer.expire() == float("inf") and not sealer.open_window
    assert header(sealer.seal(public, b"2"))[1] != first


async def test_inbox_events_sealed_while_locked_open_after_unlock_and_after_a_rotation(tmp_path):
    with trio.fail_after(60):
        wallet = Wallet(tmp_path, scrypt_n=2**10)
        # The onramp tables and their rotation declarations, as the daemon has them.
        inbox = onramp_inbox(wallet, tmp_path)
        async with wallet:
            await wallet.create("old password words")
            await wallet.lock()
            for n in range(3):
                assert await inbox.enqueue("stripe", f"evt_{n}", f"cos_{n}", "fulfillment_complete",
                                           {"source": "webhook"})
            assert not await inbox.enqueue("stripe", "evt_1", "cos_1", "fulfillment_complete", {})  # deduped
            with sqlite3.connect(tmp_path / "wallet.db") as db:
                blobs = [bytes(r[0]) for r in db.execute("SELECT sealed FROM onramp_inbox ORDER BY id")]
            assert len(blobs) == 3 and {b[:1] for b in blobs} == {crypto.SEAL_VERSION_WINDOW}
            assert len({header(b)[1] for b in blobs}) == 1      # one window
            await wallet.unlock("old password words")
            assert [jsonx.loads(wallet.open_sealed(b))["event_id"] for b in blobs] == ["evt_0", "evt_1", "evt_2"]
            old_private = wallet.keys.private_raw
            await wallet.change_password("old password words", "new password words", rotate_data_key=True)
            with sqlite3.connect(tmp_path / "wallet.db") as db:
                resealed = [bytes(r[0]) for r in db.execute("SELECT sealed FROM onramp_inbox ORDER BY id")]
            with pytest.raises(errors.IntegrityError):
                crypto.open_sealed_with(old_private, resealed[0])
            assert [jsonx.loads(wallet.open_sealed(b))["event_id"] for b in resealed] == ["evt_0", "evt_1", "evt_2"]
            # Sealed after the rotation: to the new key, in a new window.
            assert await inbox.enqueue("stripe", "evt_3", "cos_3", None, {})
            with sqlite3.connect(tmp_path / "wallet.db") as db:
                (last,) = db.execute("SELECT sealed FROM onramp_inbox ORDER BY id DESC LIMIT 1").fetchone()
            assert header(bytes(last))[1] != header(blobs[0])[1]
            assert jsonx.loads(wallet.open_sealed(bytes(last)))["event_id"] == "evt_3"


async def test_the_inbox_worker_drops_the_window_secret_once_the_window_ends(tmp_path):
    with trio.fail_after(60):
        wallet = Wallet(tmp_path, scrypt_n=2**10)
        inbox = onramp_inbox(wallet, tmp_path)
        inbox.sealer.window_s = 0.2
        async with wallet, trio.open_nursery() as nursery:
            await wallet.create("a password words")
            await wallet.lock()
            nursery.start_soon(inbox.run)
            assert await inbox.enqueue("stripe", "evt_a", "cos_a", None, {})
            assert inbox.sealer.open_window
            # No further event, nothing else wakes the worker: it must wake for the window's end itself.
            while inbox.sealer.open_window:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
