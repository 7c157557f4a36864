"""Address validators for the networks the onramp serves: EVM chains (EIP-55), Solana, Stellar."""

from __future__ import annotations

from collections.abc import Callable

from tachyond import hookimpl

from .validators import EVM_NETWORKS, validate_evm, validate_solana, validate_stellar

__all__ = ["register_address_validators", "validate_evm", "validate_solana", "validate_stellar"]


@hookimpl
def register_address_validators(register: Callable[[str, Callable[[str], str]], None]) -> None:
    """Register one validator per network; each returns the normalised address or raises InvalidAddress."""
    for network in EVM_NETWORKS:
        register(network, validate_evm)
    register("solana", validate_solana)
    register("stellar", validate_stellar)
