"""Pure address checks: EIP-55 for EVM chains, base58 for Solana, StrKey for Stellar accounts."""

from __future__ import annotations

import base64
import binascii
import re

from Crypto.Hash import keccak

from tachyond.errors import InvalidAddress

EVM_NETWORKS = ("ethereum", "polygon", "avalanche", "base", "optimism", "worldchain", "celo")

_EVM_RE = re.compile(r"0x[0-9a-fA-F]{40}")
_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}
_STELLAR_ACCOUNT_VERSION = 6 << 3  # "G"
_STELLAR_LEN = 56


def _short(address: str) -> str:
    """An abbreviation of an address for messages: enough to spot it, not a wall of characters."""
    return address if len(address) <= 14 else f"{address[:6]}…{address[-4:]}"


def eip55_checksum(address: str) -> str:
    """The EIP-55 mixed-case form of a 0x-prefixed 40-hex-digit address (Keccak-256, not SHA3-256)."""
    body = address[2:].lower()
    digest = keccak.new(digest_bits=256, data=body.encode("ascii")).hexdigest()
    return "0x" + "".join(c.upper() if int(h, 16) >= 8 else c for c, h in zip(body, digest, strict=False))


def validate_evm(address: str) -> str:
    """An EVM address ("0x" + 40 hex); mixed case must match EIP-55. Returns the checksummed form."""
    text = address.strip()
    if not _EVM_RE.fullmatch(text):
        raise InvalidAddress(
            f"{_short(text)!r} is not an EVM address: expected 0x followed by 40 hex digits "
            f"(got {len(text)} characters)"
        )
    body = text[2:]
    checksummed = eip55_checksum(text)
    if body != body.lower() and body != body.upper() and text != checksummed:
        raise InvalidAddress(f"{_short(text)} fails its EIP-55 checksum: check for a typo")
    return checksummed


def b58decode(text: str) -> bytes:
    """Decode Bitcoin-alphabet base58; leading "1"s are leading zero bytes. Raises ValueError on a bad digit."""
    number = 0
    for char in text:
        digit = _B58_INDEX.get(char)
        if digit is None:
            raise ValueError(f"{char!r} is not a base58 digit")
        number = number * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\0" * zeros + body


def validate_solana(address: str) -> str:
    """A Solana address: base58 that decodes to exactly 32 bytes (an ed25519 public key)."""
    text = address.strip()
    if not text:
        raise InvalidAddress("empty Solana address")
    try:
        raw = b58decode(text)
    except ValueError as exc:
        raise InvalidAddress(f"{_short(text)!r} is not a Solana address: {exc} (0, O, I and l never appear)") from None
    if len(raw) != 32:
        raise InvalidAddress(
            f"{_short(text)!r} is not a Solana address: it decodes to {len(raw)} bytes, not 32; "
            "check that it was copied whole"
        )
    return text


def validate_stellar(address: str) -> str:
    """A Stellar account id (StrKey "G…": version 6<<3, 32-byte key, CRC16-XModem little-endian)."""
    text = address.strip()
    if text[:1] == "S":
        # Never echo this one: it may be a secret seed.
        raise InvalidAddress(
            "this looks like a Stellar secret seed (S…): never share it; give the public G… account id"
        )
    if text[:1] == "M":
        raise InvalidAddress(f"{_short(text)} is a muxed (M…) account: give the plain G… account id")
    if text[:1] == "C":
        raise InvalidAddress(f"{_short(text)} is a contract (C…) address: give a G… account id")
    if text != text.upper():
        raise InvalidAddress(f"{_short(text)!r} is not a Stellar account id: StrKeys are upper case")
    if len(text) != _STELLAR_LEN or not text.startswith("G"):
        raise InvalidAddress(
            f"{_short(text)!r} is not a Stellar account id: expected 56 characters starting with G "
            f"(got {len(text)})"
        )
    try:
        raw = base64.b32decode(text)
    except binascii.Error:
        raise InvalidAddress(f"{_short(text)} is not a Stellar account id: not base32 (A-Z, 2-7)") from None
    payload, checksum = raw[:-2], raw[-2:]
    if payload[0] != _STELLAR_ACCOUNT_VERSION:
        raise InvalidAddress(f"{_short(text)} is not a Stellar account id: wrong version byte")
    if binascii.crc_hqx(payload, 0).to_bytes(2, "little") != checksum:
        raise InvalidAddress(f"{_short(text)} fails its Stellar checksum: check for a typo")
    return text
