"""What unlocking takes: the data key wrapped under a key scrypt derives from the password (wrap, unwrap, the
stored KDF parameters checked), the wrong-password delay, the relock timer, and the checks of passwords and
unlock timeouts. Wallet (wallet.py) holds the state; this module holds none."""

from __future__ import annotations

import json
import math
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import trio

from ..errors import IntegrityError, InvalidParams
from . import crypto
from .crypto import Cipher, WalletKeys
from .writer import aad, dumps

KDF_VERSION = 2
INSECURE_TEST_SCRYPT_ENV = "TACHYOND_INSECURE_TEST_SCRYPT_N"  # the test suite's override; never in production
MAX_UNLOCK_TIMEOUT_S = 10**8
WRONG_PASSWORD_BASE_DELAY_S = 0.25
WRONG_PASSWORD_MAX_DELAY_S = 8.0


def wrong_password_delay_s(failures: int) -> float:
    """Delay before answering the n-th consecutive wrong password: 0.25 s doubling per failure, capped at 8 s."""
    if failures <= 0:
        return 0.0
    return min(WRONG_PASSWORD_MAX_DELAY_S, WRONG_PASSWORD_BASE_DELAY_S * 2 ** (failures - 1))


class UnlockTimer:
    """Relocks after an unlock's timeout; pure trio (no threads) so tests drive it with a mock clock."""

    def __init__(self) -> None:
        self._deadline = math.inf
        self._changed = trio.Event()

    @property
    def deadline(self) -> float:
        """trio-clock time of the next expiry, inf when disarmed."""
        return self._deadline

    def arm(self, timeout_s: float) -> None:
        self._deadline = trio.current_time() + timeout_s
        self._changed.set()

    def disarm(self) -> None:
        self._deadline = math.inf
        self._changed.set()

    async def run(self, on_expire: Callable[[], object]) -> None:
        """Call on_expire each time an armed deadline passes without a re-arm; runs until cancelled."""
        while True:
            changed = self._changed
            with trio.move_on_at(self._deadline):
                await changed.wait()
            if changed.is_set():
                self._changed = trio.Event()
                continue
            self._deadline = math.inf
            on_expire()


def scrypt_n_from_env(data_dir: Path) -> int:
    """DEFAULT_SCRYPT_N, unless TACHYOND_INSECURE_TEST_SCRYPT_N (tests only: a power of two) lowers it.

    The override weakens every wallet created, and every password changed, while it is set, so it is
    honoured only for a ``data_dir`` inside the temporary directory (``tempfile.gettempdir()``: where test
    suites put their throw-away wallets, and where no real wallet lives: systemd's PrivateTmp and tmpfs
    cleaners wipe it). Set anywhere else (an environment file copied from a test setup), it stops the start
    (ValueError naming the variable) instead of quietly weakening a real wallet."""
    value = os.environ.get(INSECURE_TEST_SCRYPT_ENV)
    if not value:
        return crypto.DEFAULT_SCRYPT_N
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < crypto.MIN_SCRYPT_N or n & (n - 1):
        raise ValueError(f"{INSECURE_TEST_SCRYPT_ENV} must be a power of two >= {crypto.MIN_SCRYPT_N}")
    tmp = Path(tempfile.gettempdir()).resolve()
    if not Path(data_dir).resolve().is_relative_to(tmp):
        raise ValueError(f"{INSECURE_TEST_SCRYPT_ENV} is set, and it weakens the wallet's password hashing for tests "
                         f"only: it is honoured only for a data_dir under {tmp}, not {data_dir}; unset it")
    return n


def new_wallet(password: str, scrypt_n: int) -> tuple[WalletKeys, dict[str, bytes]]:
    """A new wallet's keys (a random data key and X25519 key pair) and its meta rows: its public id, the data
    key wrapped under the password, the private key sealed under the data key."""
    data_key = secrets.token_bytes(crypto.KEY_BYTES)
    private_raw, public_raw = crypto.new_private_key()
    wallet_id = "tw_" + secrets.token_hex(12)
    kdf, wrapped = wrap_data_key(password, data_key, wallet_id, scrypt_n)
    keys = WalletKeys(data_key, private_raw)
    meta = {
        "wallet_id": wallet_id.encode(), "public_key": public_raw, "kdf": kdf, "wrapped_key": wrapped,
        "private_key": keys.cipher.seal(aad("meta", "value", "private_key"), private_raw),
        "created_at": str(time.time()).encode(),
    }
    return keys, meta


def wrap_data_key(password: str, data_key: bytes, wallet_id: str, scrypt_n: int) -> tuple[bytes, bytes]:
    """(stored KDF parameters, the data key wrapped under the key scrypt derives from the password)."""
    salt = secrets.token_bytes(crypto.SALT_BYTES)
    kdf = dumps({"alg": "scrypt", "v": KDF_VERSION, "salt": salt.hex(), "n": scrypt_n, "r": crypto.SCRYPT_R,
                 "p": crypto.SCRYPT_P})
    kek = crypto.derive_password_key(password, salt, scrypt_n)
    return kdf, crypto.wrap_key(kek, data_key, key_aad(wallet_id, kdf))


def unwrap_keys(meta: Mapping[str, bytes], password: str, wallet_id: str | None) -> WalletKeys | None:
    """The wallet's keys from its meta table and the password; None when the password is wrong."""
    kdf_raw = meta["kdf"]
    kdf = check_kdf(kdf_raw)
    kek = crypto.derive_password_key(password, bytes.fromhex(kdf["salt"]), kdf["n"], kdf["r"], kdf["p"])
    # v2 binds the exact stored parameters into the key wrap: a file whose cost was lowered by whoever
    # could write it no longer unwraps, so the weaker derivation is never trusted. v1 (older wallets)
    # bound only the wallet id; the next password change rewrites it as v2.
    wrap_aad = key_aad(wallet_id, kdf_raw if kdf.get("v") == KDF_VERSION else None)
    data_key = crypto.unwrap_key(kek, meta["wrapped_key"], wrap_aad)
    if data_key is None:
        return None
    cipher = Cipher(data_key)
    private_raw = cipher.open(aad("meta", "value", "private_key"), meta["private_key"])
    chain: tuple[bytes, ...] = ()
    if "lookup_chain" in meta:
        chain = tuple(bytes.fromhex(k) for k in
                      json.loads(cipher.open(aad("meta", "value", "lookup_chain"), meta["lookup_chain"])))
    keys = WalletKeys(data_key, private_raw, chain)
    if "rotating_from" in meta:
        keys.rotating_from = cipher.open(aad("meta", "value", "rotating_from"), meta["rotating_from"])
    if crypto.public_from_private(private_raw) != meta.get("public_key"):
        # Webhooks are sealed to meta.public_key while locked: a swapped one would send them to someone else.
        raise IntegrityError("the wallet's stored public key does not match its private key: the wallet file "
                             "was altered (inbox events sealed to it could not be opened by this wallet)")
    return keys


def key_aad(wallet_id: str | None, kdf: bytes | None = None) -> bytes:
    """Associated data of the key wrap: the wallet id, and (v2) the exact stored KDF parameters."""
    if kdf is None:
        return b"tachyon data key v1|" + (wallet_id or "").encode()
    return b"tachyon data key v2|" + (wallet_id or "").encode() + b"|" + kdf


def check_kdf(raw: bytes) -> dict:
    """Stored KDF parameters, refused (IntegrityError) when they are not a sane scrypt set."""
    try:
        kdf = json.loads(raw)
        n, r, p = kdf["n"], kdf["r"], kdf["p"]
        bytes.fromhex(kdf["salt"])
        ok = (kdf["alg"] == "scrypt" and all(type(x) is int for x in (n, r, p))
              and crypto.MIN_SCRYPT_N <= n <= crypto.MAX_SCRYPT_N and n & (n - 1) == 0
              and 1 <= r <= 32 and 1 <= p <= 16)
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise IntegrityError("the wallet's stored key-derivation parameters are damaged or out of range")
    return kdf


def check_password(password: object) -> None:
    if not isinstance(password, str) or not password:
        raise InvalidParams("password must be a non-empty string")


def check_timeout(timeout_s: object) -> float | None:
    if timeout_s is None:
        return None
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not math.isfinite(timeout_s) \
            or timeout_s < 0:
        raise InvalidParams("timeout_s must be a non-negative number of seconds")
    if timeout_s == 0:
        return None
    return float(min(timeout_s, MAX_UNLOCK_TIMEOUT_S))
