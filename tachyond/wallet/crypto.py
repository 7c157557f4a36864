"""Encryption at rest: AES-GCM under the data key, scrypt key wrapping, X25519 sealing of inbox events."""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import IntegrityError

NONCE_BYTES = 12


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
            raise IntegrityError(f"stored value at {where} failed authentication: the wallet file was altered or damaged") from exc
