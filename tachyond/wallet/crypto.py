"""Encryption at rest: AES-GCM under the data key, scrypt key wrapping, X25519 sealing of inbox events."""

from __future__ import annotations

import hmac
import math
import os
import time
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from ..errors import IntegrityError

NONCE_BYTES = 12
LOOKUP_CACHE_MAX = 1 << 16  # lookups remembered per unlocked key set (names, balance keys, holds)


class Cipher:
    """AES-256-GCM whose associated data binds each ciphertext to where it is stored (table|column|row)."""

    def __init__(self, key: bytes):
        if len(key) != 32:
            raise ValueError("data key must be 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, aad: bytes, blob: bytes) -> bytes:
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except (InvalidTag, ValueError) as exc:
            where = aad.decode("utf-8", "replace")
            raise IntegrityError(
                f"stored value at {where} failed authentication: the wallet file was altered or damaged"
            ) from exc


# scrypt cost for new wallets and password changes: N=2**17, r=8, p=1 (128 MiB). bench/bench_unlock.py on the
# reference machine (2 cores, load average 8 from other work): 1.4 s per unlock (N=2**15: 0.46 s); the same
# machine idle took 0.13 s at 2**15, so about 0.5 s at 2**17. Numbers in docs/security.md.
# Wallets made with older parameters still open; the next password change upgrades them.
DEFAULT_SCRYPT_N = 2**17
MIN_SCRYPT_N = 2**10  # below this a stored parameter set is refused as damaged, not derived
MAX_SCRYPT_N = 2**22  # 4 GiB at r=8: above this a stored parameter set is refused (memory exhaustion)
SCRYPT_R = 8
SCRYPT_P = 1
KEY_BYTES = 32
SALT_BYTES = 16
SEAL_VERSION = b"\x01"
_SEAL_INFO = b"tachyon seal-to-wallet v1"
# Version 2 (WindowSealer): one ephemeral key per short window, a key of its own per event (docs/security.md).
SEAL_VERSION_WINDOW = b"\x02"
_SEAL_INFO_WINDOW = b"tachyon seal-to-wallet v2|"
SEAL_SALT_BYTES = 16
SEAL_WINDOW_S = 1.0          # an ephemeral key seals for at most this long ...
SEAL_WINDOW_EVENTS = 1024    # ... and at most this many events


def derive_password_key(password: str, salt: bytes, n: int, r: int = SCRYPT_R, p: int = SCRYPT_P) -> bytes:
    """Derive the key-encryption key from the password with scrypt (slow on purpose; run it in a thread)."""
    return Scrypt(salt=salt, length=KEY_BYTES, n=n, r=r, p=p).derive(password.encode("utf-8"))


def wrap_key(kek: bytes, data_key: bytes, aad: bytes) -> bytes:
    """Encrypt the data key under the password-derived key (AES-GCM)."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(kek).encrypt(nonce, data_key, aad)


def unwrap_key(kek: bytes, wrapped: bytes, aad: bytes) -> bytes | None:
    """Decrypt the wrapped data key; None when the password (hence the kek) is wrong."""
    try:
        return AESGCM(kek).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError):
        return None


def hkdf(key: bytes, info: bytes, salt: bytes | None = None, length: int = KEY_BYTES) -> bytes:
    """Derive an independent sub-key (HKDF-SHA256) so one data key serves several purposes safely."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(key)


def new_private_key() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as (private_raw, public_raw), 32 bytes each."""
    priv = X25519PrivateKey.generate()
    return (priv.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()),
            priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def public_from_private(private_raw: bytes) -> bytes:
    """The raw X25519 public key of a raw private key."""
    return X25519PrivateKey.from_private_bytes(private_raw).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def seal_to_public(public_raw: bytes, plaintext: bytes) -> bytes:
    """Encrypt to an X25519 public key (ephemeral key, HKDF, AES-GCM): needs no secret, so it works while locked."""
    eph = X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    shared = eph.exchange(X25519PublicKey.from_public_bytes(public_raw))
    key = hkdf(shared, _SEAL_INFO, salt=eph_pub + public_raw)
    nonce = os.urandom(NONCE_BYTES)
    return SEAL_VERSION + eph_pub + nonce + AESGCM(key).encrypt(nonce, plaintext, SEAL_VERSION + eph_pub)


def open_sealed_with(private_raw: bytes, blob: bytes) -> bytes:
    """Open a blob made by seal_to_public (version 1) or WindowSealer (version 2); IntegrityError when it was
    altered or sealed to another wallet."""
    version = blob[:1]
    salt_len = SEAL_SALT_BYTES if version == SEAL_VERSION_WINDOW else 0
    if version not in (SEAL_VERSION, SEAL_VERSION_WINDOW) or len(blob) < 1 + 32 + salt_len + NONCE_BYTES + 16:
        raise IntegrityError("sealed blob is malformed or of an unknown version")
    header = blob[:33 + salt_len]
    eph_pub, salt = blob[1:33], blob[33:33 + salt_len]
    nonce, ct = blob[33 + salt_len:33 + salt_len + NONCE_BYTES], blob[33 + salt_len + NONCE_BYTES:]
    priv = X25519PrivateKey.from_private_bytes(private_raw)
    public_raw = priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    shared = priv.exchange(X25519PublicKey.from_public_bytes(eph_pub))
    if version == SEAL_VERSION:
        key = hkdf(shared, _SEAL_INFO, salt=eph_pub + public_raw)
    else:
        key = hkdf(shared, _SEAL_INFO_WINDOW + salt, salt=eph_pub + public_raw)
    try:
        return AESGCM(key).decrypt(nonce, ct, header)
    except InvalidTag as exc:
        raise IntegrityError("sealed blob failed authentication: altered, or sealed to another wallet") from exc


class WindowSealer:
    """Seals to an X25519 public key like :func:`seal_to_public`, with one ephemeral key per short window.

    A fresh ephemeral key and exchange cost ~100 us, most of a webhook's own work. Here one ephemeral key
    serves at most ``window_s`` seconds and ``max_events`` events (and one recipient: a rotated wallet key
    starts a new window); each event still gets an AES-256-GCM key of its own, HKDF-SHA256 of the window's
    shared secret with a fresh 16-byte random salt in the info, and a random nonce. Only HKDF's extract step
    (its PRK) is kept for the window, never the ephemeral private key, and never on disk; :meth:`expire`
    drops it once the window is over (the inbox worker calls it), so a copy of the process's memory opens
    at most the events of the current window. Blobs are version 2; :func:`open_sealed_with` opens both
    versions. The reasoning is in docs/security.md ("Sealed webhook events").
    """

    def __init__(self, window_s: float = SEAL_WINDOW_S, max_events: int = SEAL_WINDOW_EVENTS,
                 clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self.max_events = max_events
        self.clock = clock
        self._recipient: bytes | None = None
        self._header = b""           # version + ephemeral public key
        self._prk: bytes | None = None
        self._ends = -math.inf
        self._left = 0

    @property
    def open_window(self) -> bool:
        """True while a window's secret is held."""
        return self._prk is not None

    def seal(self, public_raw: bytes, plaintext: bytes) -> bytes:
        if self._prk is None or public_raw != self._recipient or self._left <= 0 or self.clock() >= self._ends:
            self._new_window(public_raw)
        self._left -= 1
        salt = os.urandom(SEAL_SALT_BYTES)
        # HKDF-Expand (RFC 5869) for one 32-byte block: T(1) = HMAC(PRK, info || 0x01); the same key as
        # hkdf(shared, _SEAL_INFO_WINDOW + salt, salt=eph_pub + public_raw), which open_sealed_with computes.
        key = hmac.digest(self._prk, _SEAL_INFO_WINDOW + salt + b"\x01", "sha256")  # type: ignore[arg-type]  # set by _new_window
        header = self._header + salt
        nonce = os.urandom(NONCE_BYTES)
        return header + nonce + AESGCM(key).encrypt(nonce, plaintext, header)

    def _new_window(self, public_raw: bytes) -> None:
        eph = X25519PrivateKey.generate()
        eph_pub = eph.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        shared = eph.exchange(X25519PublicKey.from_public_bytes(public_raw))
        del eph
        # HKDF-Extract: PRK = HMAC(salt = eph_pub + public_raw, shared)
        self._prk = hmac.digest(eph_pub + public_raw, shared, "sha256")
        self._recipient = public_raw
        self._header = SEAL_VERSION_WINDOW + eph_pub
        self._ends = self.clock() + self.window_s
        self._left = self.max_events

    def expire(self) -> float:
        """Drop the window's secret if its time is over; seconds until the held window ends (inf: none held)."""
        if self._prk is None:
            return math.inf
        left = self._ends - self.clock()
        if left <= 0 or self._left <= 0:
            self.forget()
            return math.inf
        return left

    def forget(self) -> None:
        self._prk, self._recipient, self._header, self._ends, self._left = None, None, b"", -math.inf, 0


class WalletKeys:
    """Everything derived from the unlocked data key: the value cipher, the lookup MAC key, the chain key."""

    def __init__(self, data_key: bytes, private_raw: bytes | None = None, previous_lookup_keys: tuple[bytes, ...] = ()):
        self.data_key = data_key
        self.cipher = Cipher(data_key)
        self._lookup_key = hkdf(data_key, b"tachyon lookup v1")
        # After a data-key rotation, lookups are HMAC(new, HMAC(older, ...)): rotation rehashes each stored
        # lookup with the new key without knowing the names behind it; the older keys come from the
        # previous data keys (sealed under this one in meta), so they protect nothing new on their own.
        self.previous_lookup_keys = tuple(previous_lookup_keys)
        self.chain_key = hkdf(data_key, b"tachyon journal chain v1")
        self.private_raw = private_raw
        self.rotating_from: bytes | None = None  # the previous data key while a rotation is pending
        # Lookups computed with these keys (the same names come back on every operation); dropped with the
        # keys, so nothing derived from them outlives a lock.
        self._lookups: dict[tuple[str, str], bytes] = {}

    def lookup(self, domain: str, value: str) -> bytes:
        """Deterministic HMAC of a name or key, stored in a UNIQUE column instead of the name itself."""
        cached = self._lookups.get((domain, value))
        if cached is not None:
            return cached
        digest = domain.encode() + b"\x00" + value.encode("utf-8")
        for key in self.previous_lookup_keys:
            digest = hmac.digest(key, digest, "sha256")
        digest = hmac.digest(self._lookup_key, digest, "sha256")
        if len(self._lookups) >= LOOKUP_CACHE_MAX:
            self._lookups.clear()
        self._lookups[(domain, value)] = digest
        return digest

    def rehash_lookup(self, stored: bytes) -> bytes:
        """A lookup stored under the previous data key, as this (next) key's lookup() computes it."""
        return hmac.digest(self._lookup_key, stored, "sha256")

    def lookup_chain(self) -> tuple[bytes, ...]:
        """The lookup keys a successor must apply before its own (see __init__)."""
        return (*self.previous_lookup_keys, self._lookup_key)

    def chain_mac(self, *parts: bytes) -> bytes:
        """HMAC over length-prefixed parts with the journal chain key."""
        return hmac.digest(self.chain_key, b"".join([len(p).to_bytes(4, "big") + bytes(p) for p in parts]), "sha256")
