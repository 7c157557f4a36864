"""What the emulator's ``POST /v1/crypto/onramp_sessions`` accepts, checked as Stripe does: the supported
pairs and networks, Stripe's error objects, and the create params' cross-field rules as tables."""

from __future__ import annotations

import ipaddress
import re
import secrets
import string
from collections.abc import Callable, Mapping
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any, NamedTuple

# Pairs the emulator sells; an approximation of Stripe's US list (Stripe varies it by region).
SUPPORTED_PAIRS: dict[str, frozenset[str]] = {
    "ethereum": frozenset({"eth", "usdc", "usdt"}),
    "polygon": frozenset({"usdc", "matic"}),
    "solana": frozenset({"sol", "usdc"}),
    "base": frozenset({"eth", "usdc"}),
    "avalanche": frozenset({"avax", "usdc"}),
    "optimism": frozenset({"eth", "usdc"}),
    "worldchain": frozenset({"wld", "usdc", "eth"}),
    "celo": frozenset({"usdc"}),
    "stellar": frozenset({"xlm", "usdc"}),
    "bitcoin": frozenset({"btc"}),
    "sui": frozenset({"usdc"}),
    "tempo": frozenset({"usdc"}),
}
NETWORKS = frozenset(SUPPORTED_PAIRS)
CURRENCY_DECIMALS = {"avax": 18, "btc": 8, "eth": 18, "matic": 18, "ripusd": 18, "sol": 9, "usdc": 6,
                     "usdt": 6, "wld": 18, "xlm": 7}
RATE_USD = {"avax": "30", "btc": "60000", "eth": "3000", "matic": "0.5", "ripusd": "1", "sol": "150",
            "usdc": "1", "usdt": "1", "wld": "2", "xlm": "0.1"}
SOURCE_CURRENCIES = frozenset({"cad", "cop", "eur", "gbp", "php", "usd"})
STATUSES = ("initialized", "requires_payment", "fulfillment_processing", "fulfillment_complete", "rejected")
# Response objects name Base's address "base_network"; Stripe rejects wallet_addresses[base] on create.
WALLET_KEYS = ("avalanche", "base_network", "bitcoin", "celo", "ethereum", "optimism", "polygon", "solana",
               "stellar", "sui", "tempo", "worldchain")
CREATE_PARAMS = frozenset({
    "customer_ip_address", "destination_amount", "destination_currencies", "destination_currency",
    "destination_network", "destination_networks", "expand", "kyc_details", "lock_wallet_address", "metadata",
    "settlement_speed", "source_amount", "source_currency", "wallet_addresses",
})
_EVM = re.compile(r"0x[0-9a-fA-F]{40}")
_ADDRESS_FORMATS = {
    "solana": re.compile(r"[1-9A-HJ-NP-Za-km-z]{32,44}"),
    "stellar": re.compile(r"G[A-Z2-7]{55}"),
    "bitcoin": re.compile(r"(bc1[02-9ac-hj-np-z]{11,71}|[13][1-9A-HJ-NP-Za-km-z]{25,34})"),
    "sui": re.compile(r"0x[0-9a-fA-F]{64}"),
}
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


class ApiError(Exception):
    """A Stripe API error: HTTP status plus the ``{"error": {type, code, message, param}}`` body."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type_

    def body(self) -> dict[str, Any]:
        """The JSON body Stripe sends for this error."""
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param:
            error["param"] = self.param
        return {"error": error}


def onramp_error(code: str, message: str, param: str | None = None) -> ApiError:
    """A 400 with one of Stripe's ``crypto_onramp_*`` codes."""
    return ApiError(400, message, code=code, param=param)


def random_id(prefix: str, n: int = 24) -> str:
    """A Stripe-looking id: prefix plus random alphanumerics."""
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(n))


def wallet_key(network: str) -> str:
    """The key a network's address has in ``wallet_addresses``."""
    return "base_network" if network == "base" else network


def address_looks_valid(network: str, address: str) -> bool:
    """A loose format check per network, like Stripe's (it does not check EIP-55 case)."""
    pattern = _ADDRESS_FORMATS.get(network, _EVM)
    return bool(pattern.fullmatch(address))


def _decimal(value: Any, code: str, param: str) -> Decimal:
    """A positive finite decimal from a string param, or the given onramp error."""
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise onramp_error(code, f"Invalid {param}: {value!r} is not a decimal number.", param) from None
    if not number.is_finite() or number <= 0:
        raise onramp_error(code, f"Invalid {param}: {value!r} must be a positive number.", param)
    return number


def _bool(value: Any, param: str) -> bool:
    if value in ("true", True):
        return True
    if value in ("false", False):
        return False
    raise ApiError(400, f"Invalid boolean: {value}", param=param)


def _string_list(value: Any, param: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ApiError(400, f"Invalid array: {param} must be a non-empty list of strings.", param=param)
    return value


def check_params(params: Mapping[str, Any], allowed: frozenset[str], strings: frozenset[str] = frozenset()) -> None:
    """Reject unknown top-level params (``parameter_unknown``) and hashes or lists where a string belongs."""
    for name in params:
        if name not in allowed:
            raise ApiError(400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name)
        if name in strings and not isinstance(params[name], str):
            raise ApiError(400, f"Invalid string: {name} must be a string, not a hash or an array.", param=name)


def _wallet_addresses(raw: Any) -> tuple[dict[str, str], str | None]:
    """Validate ``wallet_addresses[<network>]`` (Base as ``base_network``); returns (network -> address, tag)."""
    if not isinstance(raw, dict):
        raise ApiError(400, "Invalid hash: wallet_addresses", param="wallet_addresses")
    found: dict[str, str] = {}
    tag = None
    for key, value in raw.items():
        param = f"wallet_addresses[{key}]"
        if key == "destination_tags":
            if not isinstance(value, dict) or set(value) - {"stellar"}:
                raise ApiError(400, f"Received unknown parameter: {param}", code="parameter_unknown", param=param)
            tag = value.get("stellar")
            continue
        if key not in WALLET_KEYS or not isinstance(value, str):
            raise ApiError(400, f"Received unknown parameter: {param}", code="parameter_unknown", param=param)
        network = "base" if key == "base_network" else key
        if not address_looks_valid(network, value):
            raise onramp_error("crypto_onramp_wallet_address_invalid",
                               f"The wallet address provided isn't a valid address for the {network} network.",
                               param)
        found[network] = value
    return found, tag


class CreateFields(NamedTuple):
    """What the cross-field rules of a create look at."""

    p: dict[str, Any]
    currency: str | None
    network: str | None
    currencies: list[str] | None
    networks: list[str] | None


# Stripe's cross-field rules for a create, checked in order; the first that holds answers 400 with its code.
# (holds, code, message (formatted with the fields and the params), param)
Rule = tuple[Callable[[CreateFields], bool], str, str, str | None]
DESTINATION_RULES: tuple[Rule, ...] = (
    (lambda c: "source_amount" in c.p and "destination_amount" in c.p,
     "crypto_onramp_invalid_source_destination_pair",
     "source_amount and destination_amount are mutually exclusive: set only one.", None),
    (lambda c: (c.currency is None) != (c.network is None),
     "crypto_onramp_incomplete_destination_currency_and_network_pair",
     "Both destination_currency and destination_network must be specified together.", None),
    (lambda c: c.currency is not None and c.currency not in SUPPORTED_PAIRS.get(c.network or "", ()),
     "crypto_onramp_invalid_destination_currency_and_network_pair",
     "The destination currency and network pair ({currency} on {network}) isn't supported.", None),
    (lambda c: c.currencies is not None and c.networks is not None and not any(
        cur in SUPPORTED_PAIRS.get(net, ()) for cur in c.currencies for net in c.networks),
     "crypto_onramp_invalid_destination_currencies_and_networks",
     "None of the destination_currencies is supported on any of the destination_networks.", None),
    (lambda c: c.currency is not None and c.currencies is not None and c.currency not in c.currencies,
     "crypto_onramp_conflicting_destination_currency",
     "destination_currency isn't included in destination_currencies.", "destination_currency"),
    (lambda c: c.network is not None and c.networks is not None and c.network not in c.networks,
     "crypto_onramp_conflicting_destination_network",
     "destination_network isn't included in destination_networks.", "destination_network"),
    # Stripe's schema: "When set, both destination_currency and destination_network must also be set."
    (lambda c: "destination_amount" in c.p and c.currency is None,
     "crypto_onramp_missing_destination_currency",
     "Set destination_currency if you're setting a destination amount.", "destination_currency"),
    (lambda c: "destination_amount" in c.p and c.network is None,
     "crypto_onramp_missing_destination_network",
     "Set destination_network if you're setting a destination amount.", "destination_network"),
)
# Checked after the destination amount's own format, as Stripe answers them.
SOURCE_RULES: tuple[Rule, ...] = (
    (lambda c: c.p.get("source_currency") is not None and c.p["source_currency"] not in SOURCE_CURRENCIES,
     "crypto_onramp_invalid_source_currency", "The source currency {source_currency!r} isn't supported.",
     "source_currency"),
    (lambda c: "source_amount" in c.p and c.p.get("source_currency") is None,
     "crypto_onramp_missing_source_currency", "Set a source currency if you're setting a source amount.", None),
)


def _check(rules: tuple[Rule, ...], c: CreateFields) -> None:
    for holds, code, message, param in rules:
        if holds(c):
            fields = {**c._asdict(), "source_currency": c.p.get("source_currency")}
            raise onramp_error(code, message.format(**fields), param)


def validate_create(params: Mapping[str, Any], unsupported_ips: tuple[str, ...] = (),
                    unsupportable_ips: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check create params with Stripe's rules and codes; returns the session's transaction details and extras."""
    check_params(params, CREATE_PARAMS, frozenset({
        "customer_ip_address", "destination_amount", "destination_currency", "destination_network",
        "lock_wallet_address", "settlement_speed", "source_amount", "source_currency"}))
    p = dict(params)
    currencies = _string_list(p["destination_currencies"], "destination_currencies") \
        if "destination_currencies" in p else None
    networks = _string_list(p["destination_networks"], "destination_networks") if "destination_networks" in p else None
    c = CreateFields(p, p.get("destination_currency"), p.get("destination_network"), currencies, networks)
    _check(DESTINATION_RULES, c)
    currency, network = c.currency, c.network
    effective_currency = currency or (currencies[0] if currencies else None)
    destination_amount = None
    if "destination_amount" in p:
        amount = _decimal(p["destination_amount"], "crypto_onramp_invalid_destination_amount", "destination_amount")
        places = CURRENCY_DECIMALS.get(effective_currency, 18)
        if amount != amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_DOWN):
            raise onramp_error("crypto_onramp_invalid_destination_amount",
                               f"destination_amount has more than {places} decimal places for {effective_currency}.",
                               "destination_amount")
        destination_amount = p["destination_amount"].strip()
    source_amount = None
    source_currency = p.get("source_currency")
    _check(SOURCE_RULES, c)
    if "source_amount" in p:
        amount = _decimal(p["source_amount"], "crypto_onramp_invalid_source_amount", "source_amount")
        if amount != amount.quantize(Decimal("0.01"), rounding=ROUND_DOWN):
            raise onramp_error("crypto_onramp_invalid_source_amount",
                               "source_amount can have at most 2 decimal places.", "source_amount")
        source_amount = p["source_amount"].strip()
    addresses, tag = _wallet_addresses(p["wallet_addresses"]) if "wallet_addresses" in p else ({}, None)
    if addresses:
        allowed_networks = set(networks) if networks is not None else ({network} if network else set())
        if not allowed_networks or not set(addresses) <= allowed_networks:
            raise onramp_error("crypto_onramp_wallet_addresses_not_all_networks_supported",
                               "Specify a wallet only for a supported destination network "
                               "(set destination_network or destination_networks).", "wallet_addresses")
    lock = _bool(p["lock_wallet_address"], "lock_wallet_address") if "lock_wallet_address" in p else False
    if lock and not addresses:
        raise onramp_error("crypto_onramp_no_wallet_address_to_lock",
                           "lock_wallet_address is true but no wallet address was provided.", "lock_wallet_address")
    speed = p.get("settlement_speed", "instant")
    if speed not in ("instant", "standard"):
        raise ApiError(400, "Invalid settlement_speed: must be one of instant, standard", param="settlement_speed")
    if "customer_ip_address" in p:
        try:
            ip = ipaddress.ip_address(str(p["customer_ip_address"]).strip())
        except ValueError:
            raise onramp_error("crypto_onramp_invalid_parameter", "customer_ip_address is not a valid IPv4 or IPv6 "
                               "address.", "customer_ip_address") from None
        if any(ip in ipaddress.ip_network(net) for net in unsupported_ips):
            raise onramp_error("crypto_onramp_unsupported_country", "Transactions are not supported in this "
                               "country.", "customer_ip_address")
        if any(ip in ipaddress.ip_network(net) for net in unsupportable_ips):
            raise onramp_error("crypto_onramp_unsupportable_customer", "We are unable to support this customer.",
                               "customer_ip_address")
    metadata = p.get("metadata")
    if isinstance(metadata, list):
        metadata = {str(i): v for i, v in enumerate(metadata)}
    if metadata is not None:
        if metadata == "":
            metadata = None
        elif not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise ApiError(400, "Invalid hash: metadata must map keys to strings.", param="metadata")
        elif any(len(k) > 40 or len(v) > 500 for k, v in metadata.items()) or len(metadata) > 50:
            raise ApiError(400, "metadata: at most 50 keys, keys up to 40 and values up to 500 characters.",
                           param="metadata")
    wallet_addresses: dict[str, Any] = {k: None for k in WALLET_KEYS}
    wallet_addresses.update({wallet_key(n): a for n, a in addresses.items()})
    wallet_addresses["destination_tags"] = {"stellar": tag}
    return {
        "kyc_details_provided": bool(p.get("kyc_details")),
        "metadata": {k: v for k, v in metadata.items() if v != ""} if metadata else None,
        "transaction_details": {
            "destination_amount": destination_amount,
            "destination_currencies": currencies,
            "destination_currency": currency,
            "destination_network": network,
            "destination_networks": networks,
            "fees": {"network_fee_amount": None, "transaction_fee_amount": None},
            "lock_wallet_address": lock,
            "settlement_speed": speed,
            "source_amount": source_amount,
            "source_currency": source_currency or "usd",
            "transaction_id": None,
            "wallet_address": None,
            "wallet_addresses": wallet_addresses,
        },
    }
