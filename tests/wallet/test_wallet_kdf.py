"""A stolen wallet file: scrypt at N=2**17, r=8 by default, its parameters authenticated by the key wrap, the
stored public key checked at unlock, old parameters still open and are upgraded by a password change, and
[wallet] min_password_length."""

from __future__ import annotations

import json
import sqlite3

import pytest
import trio
from conftest import base_document, run_ctl

from tachyond import errors
from tachyond.wallet import crypto
from tachyond.wallet.wallet import Wallet
from tachyond.wallet.writer import dumps

PW = "kdf test password"


def meta(path) -> dict[str, bytes]:
    with sqlite3.connect(path) as db:
        return {k: bytes(v) for k, v in db.execute("SELECT key, value FROM meta")}


def set_meta(path, **items: bytes) -> None:
    with sqlite3.connect(path) as db:
        db.executemany("UPDATE meta SET value = ? WHERE key = ?", [(v, k) for k, v in items.items()])


def test_a_daemon_without_the_test_override_uses_n_2_17_r_8(daemon_factory, sockdir):
    assert crypto.DEFAULT_SCRYPT_N >= 2**17 and crypto.SCRYPT_R >= 8
    d = daemon_factory(base_document(sockdir), env={"TACHYOND_INSECURE_TEST_SCRYPT_N": ""}).start()
    d.call("wallet.create", {"password": PW})
    kdf = json.loads(meta(sockdir / "data" / "wallet.db")["kdf"])
    assert (kdf["alg"], kdf["n"], kdf["r"], kdf["p"], kdf["v"]) == ("scrypt", 2**17, 8, 1, 2)
    d.call("wallet.lock")
    assert d.call("wallet.unlock", {"password": PW})["unlocked"] is True
    assert "INSECURE_TEST_SCRYPT" not in d.stderr()


def test_the_test_override_is_refused_for_a_data_dir_outside_the_temp_dir(daemon_factory, sockdir):
    # An environment file copied from a test setup must not quietly weaken a real wallet: outside the temp
    # dir (here: TMPDIR moved elsewhere, so sockdir/data is "outside") the start stops, naming the variable.
    elsewhere = sockdir / "scratch"
    elsewhere.mkdir()
    d = daemon_factory(base_document(sockdir), env={"TACHYOND_INSECURE_TEST_SCRYPT_N": "1024",
                                                    "TMPDIR": str(elsewhere)})
    d.start(wait=False)
    assert d.wait(30) == 1
    err = d.stderr()
    assert "TACHYOND_INSECURE_TEST_SCRYPT_N" in err and f"data_dir under {elsewhere}" in err
    assert not (sockdir / "data" / "wallet.db").exists()


def test_the_test_override_under_the_temp_dir_is_honoured_and_logged(daemon_factory, sockdir):
    d = daemon_factory(base_document(sockdir), env={"TACHYOND_INSECURE_TEST_SCRYPT_N": "1024"}).start()
    d.call("wallet.create", {"password": PW})
    assert json.loads(meta(sockdir / "data" / "wallet.db")["kdf"])["n"] == 1024
    assert "TACHYOND_INSECURE_TEST_SCRYPT_N=1024 lowers the wallet's password hashing for tests" in d.stderr()


async def test_stored_parameters_are_authenticated_by_the_key_wrap(tmp_path):
    with trio.fail_after(30):
        async with Wallet(tmp_path, scrypt_n=2**10) as wallet:
            await wallet.create(PW)
        kdf = json.loads(meta(tmp_path / "wallet.db")["kdf"])
        # Same derivation (same salt, n, r, p), other bytes: the wrap no longer opens.
        set_meta(tmp_path / "wallet.db", kdf=json.dumps({**kdf, "note": "edited"}).encode())
        async with Wallet(tmp_path, scrypt_n=2**10) as wallet:
            with pytest.raises(errors.WrongPassword):
                await wallet.unlock(PW)
        for bad in ({**kdf, "n": 2**40}, {**kdf, "n": 3000}, {**kdf, "alg": "md5"}, {"n": 1}):
            set_meta(tmp_path / "wallet.db", kdf=json.dumps(bad).encode())
            async with Wallet(tmp_path, scrypt_n=2**10) as wallet:
                with pytest.raises(errors.IntegrityError, match="key-derivation parameters"):
                    await wallet.unlock(PW)


async def test_unlock_refuses_a_public_key_that_is_not_the_wallets(tmp_path):
    with trio.fail_after(30):
        async with Wallet(tmp_path, scrypt_n=2**10) as wallet:
            await wallet.create(PW)
        _, attacker_public = crypto.new_private_key()
        set_meta(tmp_path / "wallet.db", public_key=attacker_public)
        async with Wallet(tmp_path, scrypt_n=2**10) as wallet:
            with pytest.raises(errors.IntegrityError, match="public key does not match"):
                await wallet.unlock(PW)
            assert wallet.state == "locked"


async def test_a_wallet_with_old_parameters_opens_and_a_password_change_upgrades_them(tmp_path):
    with trio.fail_after(30):
        async with Wallet(tmp_path, scrypt_n=2**10) as wallet:
            await wallet.create(PW)
            data_key, wallet_id = wallet.keys.data_key, wallet.public_id
        # Rewrite it as the previous release did: v1 parameters (no "v"), the wrap bound to the wallet id only.
        salt = b"\x01" * crypto.SALT_BYTES
        old_kdf = dumps({"alg": "scrypt", "salt": salt.hex(), "n": 2**10, "r": 8, "p": 1})
        kek = crypto.derive_password_key(PW, salt, 2**10)
        wrapped = crypto.wrap_key(kek, data_key, b"tachyon data key v1|" + wallet_id.encode())
        set_meta(tmp_path / "wallet.db", kdf=old_kdf, wrapped_key=wrapped)
        async with Wallet(tmp_path, scrypt_n=2**11) as wallet:
            await wallet.unlock(PW)
            assert wallet.keys.data_key == data_key
            await wallet.change_password(PW, PW + " 2")
        kdf = json.loads(meta(tmp_path / "wallet.db")["kdf"])
        assert (kdf["n"], kdf["v"]) == (2**11, 2)
        async with Wallet(tmp_path, scrypt_n=2**11) as wallet:
            with pytest.raises(errors.WrongPassword):
                await wallet.unlock(PW)
            await wallet.unlock(PW + " 2")
            assert wallet.keys.data_key == data_key


def test_min_password_length_from_config(daemon_factory, sockdir):
    d = daemon_factory(base_document(sockdir)).start()
    r = run_ctl("wallet", "create", "--password-stdin", socket_path=d.socket, input_text="short\n")
    assert r.returncode == 1 and "at least 8 characters" in r.stderr and "min_password_length" in r.stderr
    assert d.call("daemon.info")["wallet"] == "absent"
    d.call("wallet.create", {"password": "eight ch"})
    r = run_ctl("wallet", "change-password", "--password-stdin", socket_path=d.socket, input_text="eight ch\nabc\n")
    assert r.returncode == 1 and "new_password must be at least 8" in r.stderr
    d.stop()
    relaxed = daemon_factory(base_document(sockdir, wallet={"min_password_length": 0})).start()
    assert relaxed.call("wallet.change_password", {"old_password": "eight ch", "new_password": "abc"})["changed"]
