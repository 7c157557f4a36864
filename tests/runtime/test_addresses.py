"""Address validators: EIP-55 spec vectors, Solana base58, Stellar StrKey (SEP-23 vectors), via the hook."""

from __future__ import annotations

import base64
import binascii

import pluggy
import pytest
import tachyon_addresses
from hypothesis import given, settings
from hypothesis import strategies as st
from tachyon_addresses.validators import b58decode, eip55_checksum, validate_evm, validate_solana, validate_stellar

from tachyond import PROJECT, hookspecs
from tachyond.errors import InvalidAddress

# The EIP-55 specification's own examples.
EIP55_ALL_CAPS = ["0x52908400098527886E0F7030069857D2E4169EE7", "0x8617E340B3D01FA5F11F306F4090FD50E238070D"]
EIP55_ALL_LOWER = ["0xde709f2102306220921060314715629080e2fb77", "0x27b1fdb04752bbc536007a920d24acb045561c26"]
EIP55_NORMAL = [
    "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
    "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
    "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
]
# SEP-23's account id and two more published account ids.
STELLAR_ACCOUNTS = [
    "GA7QYNF7SOWQ3GLR2BGMZEHXAVIRZA4KVWLTJJFC7MGXUA74P7UJVSGZ",
    "GBRPYHIL2CI3FNQ4BXLFMNDLFJUNPU2HY3ZMFSHONUCEOASW7QC7OX2H",
    "GAAZI4TCR3TY5OJHCTJC2A4QSY6CJWJH5IAJTGKIN2ER7LBNVKOCCWN7",
]
# System program (32 zero bytes), SPL token program, USDC mint.
SOLANA_ADDRESSES = [
    "11111111111111111111111111111111",
    "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA",
    "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v",
]


@pytest.mark.parametrize("address", EIP55_NORMAL)
def test_eip55_spec_vectors_checksum(address):
    assert eip55_checksum(address.lower()) == address
    assert validate_evm(address) == address


@pytest.mark.parametrize("address", EIP55_ALL_CAPS + EIP55_ALL_LOWER)
def test_eip55_single_case_accepted_and_checksummed(address):
    assert validate_evm(f"  {address}\n") == eip55_checksum(address)


def _checksum_with(digest_hex: str, body: str) -> str:
    """EIP-55's casing rule applied with a given digest (to build what a wrong hash would give)."""
    return "0x" + "".join(c.upper() if c.isalpha() and int(digest_hex[i], 16) >= 8 else c for i, c in enumerate(body))


@pytest.mark.parametrize("address", EIP55_NORMAL)
def test_checksum_is_keccak_256_not_sha3_256(address):
    """The project's eip55_checksum gives the spec's casing; the same rule over SHA3-256 (which pads
    differently from Keccak-256) gives another one that validate_evm refuses."""
    import hashlib

    body = address[2:].lower()
    with_sha3 = _checksum_with(hashlib.sha3_256(body.encode()).hexdigest(), body)
    assert with_sha3 != address
    assert eip55_checksum("0x" + body) == address
    with pytest.raises(InvalidAddress, match="fails its EIP-55 checksum"):
        validate_evm(with_sha3)


@pytest.mark.parametrize("address", EIP55_NORMAL)
def test_eip55_one_flipped_case_fails(address):
    i = next(i for i, c in enumerate(address[2:], 2) if c.isalpha())
    flipped = address[:i] + address[i].swapcase() + address[i + 1:]
    with pytest.raises(InvalidAddress, match="fails its EIP-55 checksum: check for a typo"):
        validate_evm(flipped)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "0x",
        "5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAe",
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAedd",
        "0xZaAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    ],
)
def test_evm_malformed(bad):
    with pytest.raises(InvalidAddress, match="not an EVM address"):
        validate_evm(bad)


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=20, max_size=20))
def test_evm_checksum_roundtrip(raw):
    lower = "0x" + raw.hex()
    checksummed = validate_evm(lower)
    assert checksummed.lower() == lower
    assert validate_evm(checksummed) == checksummed


@pytest.mark.parametrize("address", SOLANA_ADDRESSES)
def test_solana_valid(address):
    assert validate_solana(f" {address} ") == address
    assert len(b58decode(address)) == 32


def test_b58_leading_ones_are_zero_bytes():
    assert b58decode("1") == b"\0"
    assert b58decode("11z") == b"\0\0\x39"
    assert b58decode("") == b""


@pytest.mark.parametrize("bad,why", [
    ("EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt10", "base58 digit"),  # 0 is not base58
    ("EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGklwyTDt1v", "base58 digit"),  # l is not base58
    ("EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt", "not 32"),  # truncated
    ("EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1vEPj", "not 32"),  # too long
    ("   ", "empty"),
])
def test_solana_invalid(bad, why):
    with pytest.raises(InvalidAddress, match=why):
        validate_solana(bad)


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_solana_roundtrip_with_independent_encoder(raw):
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    n, out = int.from_bytes(raw, "big"), ""
    while n:
        n, r = divmod(n, 58)
        out = alphabet[r] + out
    text = "1" * (len(raw) - len(raw.lstrip(b"\0"))) + out
    assert b58decode(text) == raw
    assert validate_solana(text) == text


@pytest.mark.parametrize("address", STELLAR_ACCOUNTS)
def test_stellar_valid(address):
    assert validate_stellar(address + "\n") == address


def _strkey(version: int, key: bytes) -> str:
    payload = bytes([version]) + key
    return base64.b32encode(payload + binascii.crc_hqx(payload, 0).to_bytes(2, "little")).decode()


def test_stellar_checksum_is_crc16_xmodem_little_endian():
    raw = base64.b32decode(STELLAR_ACCOUNTS[0])
    assert raw[0] == 6 << 3 and len(raw) == 35
    assert _strkey(6 << 3, raw[1:33]) == STELLAR_ACCOUNTS[0]
    # The same bytes with the checksum big-endian fail.
    payload = raw[:33]
    swapped = base64.b32encode(payload + binascii.crc_hqx(payload, 0).to_bytes(2, "big")).decode()
    with pytest.raises(InvalidAddress, match="checksum"):
        validate_stellar(swapped)


@pytest.mark.parametrize("bad,why", [
    ("GA7QYNF7SOWQ3GLR2BGMZEHXAVIRZA4KVWLTJJFC7MGXUA74P7UJVSGA", "checksum"),  # last char changed
    ("GA7QYNF7SOWQ3GLR2BGMZEHXAVIRZA4KVWLTJJFC7MGXUA74P7UJVSG", "56 characters"),  # truncated
    ("GA7QYNF7SOWQ3GLR2BGMZEHXAVIRZB4KVWLTJJFC7MGXUA74P7UJVSGZ", "checksum"),  # one char in the key
    ("ga7qynf7sowq3glr2bgmzehxavirza4kvwltjjfc7mgxua74p7ujvsgz", "upper case"),
    ("GA7QYNF7SOWQ3GLR2BGMZEHXAVIRZA4KVWLTJJFC7MGXUA74P7UJVSG1", "base32"),
    ("MA7QYNF7SOWQ3GLR2BGMZEHXAVIRZA4KVWLTJJFC7MGXUA74P7UJUAAAAAAAAAAAACJUQ", "muxed"),
    ("CA7QYNF7SOWQ3GLR2BGMZEHXAVIRZA4KVWLTJJFC7MGXUA74P7UJUWDA", "contract"),
])
def test_stellar_invalid(bad, why):
    with pytest.raises(InvalidAddress, match=why):
        validate_stellar(bad)


def test_stellar_wrong_version_byte():
    key = base64.b32decode(STELLAR_ACCOUNTS[0])[1:33]
    other = _strkey((6 << 3) | 1, key)  # still spells "G…", checksum valid, version byte wrong
    assert other.startswith("G")
    with pytest.raises(InvalidAddress, match="wrong version byte"):
        validate_stellar(other)


def test_stellar_secret_seed_is_not_echoed():
    seed = _strkey(18 << 3, bytes(range(32)))
    assert seed.startswith("S")
    with pytest.raises(InvalidAddress) as info:
        validate_stellar(seed)
    assert seed not in info.value.message and seed[:8] not in info.value.message


def test_hook_registers_every_network():
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(tachyon_addresses, name="addresses")
    pm.check_pending()
    registered: dict[str, object] = {}
    pm.hook.register_address_validators(register=lambda name, fn: registered.__setitem__(name, fn))
    assert set(registered) == {"ethereum", "polygon", "avalanche", "base", "optimism", "worldchain", "celo",
                               "solana", "stellar"}
    assert registered["base"](EIP55_ALL_LOWER[0]) == eip55_checksum(EIP55_ALL_LOWER[0])
    assert registered["solana"](SOLANA_ADDRESSES[1]) == SOLANA_ADDRESSES[1]
    assert registered["stellar"](STELLAR_ACCOUNTS[1]) == STELLAR_ACCOUNTS[1]
    with pytest.raises(InvalidAddress):
        registered["ethereum"](SOLANA_ADDRESSES[1])
