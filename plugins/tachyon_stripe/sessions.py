"""The emulator's onramp sessions: the object, its lifecycle, quotes and listing. Create params are checked
by ``create_params`` (Stripe's rules as tables)."""

from __future__ import annotations

import copy
import hashlib
import secrets
import time
from collections.abc import Callable, Mapping
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from typing import Any

from .create_params import (  # noqa: F401  (re-exported: the emulator, the widget and tests use these names)
    CURRENCY_DECIMALS,
    DESTINATION_RULES,
    NETWORKS,
    RATE_USD,
    SOURCE_RULES,
    STATUSES,
    SUPPORTED_PAIRS,
    ApiError,
    _decimal,
    _string_list,
    check_params,
    onramp_error,
    random_id,
    validate_create,
    wallet_key,
)

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"



def _b58encode(raw: bytes) -> str:
    number, out = int.from_bytes(raw, "big"), ""
    while number:
        number, digit = divmod(number, 58)
        out = _B58[digit] + out
    return "1" * (len(raw) - len(raw.lstrip(b"\0"))) + out


def fake_transaction_id(session_id: str, network: str) -> str:
    """A deterministic on-chain hash in the network's usual format."""
    digest = hashlib.sha256(session_id.encode()).digest()
    if network == "solana":
        return _b58encode(digest + hashlib.sha256(digest).digest())
    if network in ("bitcoin", "stellar"):
        return digest.hex()
    return "0x" + digest.hex()


class SessionStore:
    """Every session the emulator knows, in creation order; ``on_change(session)`` runs after each status change."""

    def __init__(self, *, clock: Callable[[], float] = time.time, on_change: Callable[[dict], None] | None = None,
                 public_url: Callable[[], str] = lambda: "http://127.0.0.1",
                 livemode: Callable[[], bool] = lambda: False, hosted: Callable[[], bool] = lambda: True):
        self.clock = clock
        self.livemode = livemode
        self.hosted = hosted
        self.on_change = on_change or (lambda session: None)
        self.public_url = public_url
        self.sessions: dict[str, dict[str, Any]] = {}

    def create(self, params: Mapping[str, Any], unsupported_ips: tuple[str, ...] = (),
               unsupportable_ips: tuple[str, ...] = ()) -> dict[str, Any]:
        """Validate and store a new session in ``initialized``; returns a copy of the object."""
        details = validate_create(params, unsupported_ips, unsupportable_ips)
        session_id = random_id("cos_")
        session = {
            "id": session_id,
            "object": "crypto.onramp_session",
            "client_secret": f"{session_id}_secret_{random_id('', 32)}",
            "created": int(self.clock()),
            "kyc_details_provided": details["kyc_details_provided"],
            "livemode": bool(self.livemode()),
            "metadata": details["metadata"],
            "redirect_url": f"{self.public_url()}/checkout/{session_id}" if self.hosted() else None,
            "status": "initialized",
            "transaction_details": details["transaction_details"],
        }
        self.sessions[session_id] = session
        return copy.deepcopy(session)

    def get(self, session_id: str) -> dict[str, Any]:
        """A copy of one session, or a Stripe 404."""
        session = self.sessions.get(session_id)
        if session is None:
            raise ApiError(404, f"No such crypto.onramp_session: '{session_id}'", code="resource_missing", param="id")
        return copy.deepcopy(session)

    def newest_first(self) -> list[dict[str, Any]]:
        """Every session, newest first (creation order breaks ties within a second)."""
        return list(reversed(self.sessions.values()))

    def set_status(self, session_id: str, status: str, *, destination_amount: str | None = None,
                   wallet_address: str | None = None) -> dict[str, Any]:
        """Move a session to ``status`` (any string: tests may use statuses Stripe adds later), then notify."""
        session = self.sessions.get(session_id)
        if session is None:
            raise ApiError(404, f"No such crypto.onramp_session: '{session_id}'", code="resource_missing")
        details = session["transaction_details"]
        if status == "fulfillment_processing":
            self._settle_terms(session, destination_amount, wallet_address)
        if status == "fulfillment_complete":
            if details["destination_amount"] is None:
                self._settle_terms(session, destination_amount, wallet_address)
            details["transaction_id"] = fake_transaction_id(session_id, details["destination_network"])
        session["status"] = status
        snapshot = copy.deepcopy(session)
        self.on_change(snapshot)
        return snapshot

    def _settle_terms(self, session: dict, destination_amount: str | None, wallet_address: str | None) -> None:
        """Fix what the buyer chose at checkout: network, currency, amount, wallet, fees."""
        d = session["transaction_details"]
        network = d["destination_network"] or (d["destination_networks"] or ["ethereum"])[0]
        currency = d["destination_currency"] or next(
            (c for c in (d["destination_currencies"] or ["usdc"]) if c in SUPPORTED_PAIRS.get(network, ())), "usdc")
        address = d["wallet_addresses"].get(wallet_key(network))
        if wallet_address is not None:
            if d["lock_wallet_address"] and address and wallet_address != address:
                raise ApiError(400, "The wallet address cannot be changed when locked.",
                               code="crypto_onramp_invalid_parameter", param="wallet_address")
            address = wallet_address
        if address is None:
            raise ApiError(400, "No wallet address for the destination network: enter one at checkout.",
                           code="crypto_onramp_invalid_parameter", param="wallet_address")
        rate = Decimal(RATE_USD.get(currency, "1"))
        places = Decimal(1).scaleb(-CURRENCY_DECIMALS.get(currency, 18))
        if destination_amount is not None:
            amount = _decimal(destination_amount, "crypto_onramp_invalid_destination_amount", "destination_amount")
            d["destination_amount"] = destination_amount.strip()
            d["source_amount"] = None
        elif d["destination_amount"] is not None:
            amount = Decimal(d["destination_amount"])
        elif d["source_amount"] is not None:
            amount = (Decimal(d["source_amount"]) / rate).quantize(places, rounding=ROUND_DOWN)
            d["destination_amount"] = str(amount)
        else:
            raise ApiError(400, "No amount: enter an amount at checkout.", code="crypto_onramp_invalid_amount",
                           param="destination_amount")
        if d["source_amount"] is None:
            d["source_amount"] = str((amount * rate).quantize(Decimal("0.01"), rounding=ROUND_UP))
        source = Decimal(d["source_amount"])
        d["fees"] = {"network_fee_amount": "0.01",
                     "transaction_fee_amount": str(max(Decimal("0.01"), (source * Decimal("0.015")).quantize(
                         Decimal("0.01"), rounding=ROUND_UP)))}
        d["destination_network"], d["destination_currency"], d["wallet_address"] = network, currency, address

    def complete(self, session_id: str, *, destination_amount: str | None = None,
                 wallet_address: str | None = None) -> dict[str, Any]:
        """Walk a session through payment to ``fulfillment_complete``, one status change (and webhook) per step."""
        session = self.get(session_id)
        path = {"initialized": ["requires_payment", "fulfillment_processing", "fulfillment_complete"],
                "requires_payment": ["fulfillment_processing", "fulfillment_complete"],
                "fulfillment_processing": ["fulfillment_complete"]}.get(session["status"])
        if path is None:
            raise ApiError(409, f"Session {session_id} is {session['status']}: it cannot be paid.",
                           code="crypto_onramp_session_error")
        if "fulfillment_processing" in path:
            # Check the buyer's terms before the first status change, so a bad form changes nothing.
            trial = copy.deepcopy(self.sessions[session_id])
            self._settle_terms(trial, destination_amount, wallet_address)
        for status in path:
            session = self.set_status(session_id, status, destination_amount=destination_amount,
                                      wallet_address=wallet_address)
        return session

    def reject(self, session_id: str) -> dict[str, Any]:
        """Move a session to ``rejected`` (Stripe declined the buyer), unless it was already fulfilled."""
        session = self.get(session_id)
        if session["status"] in ("fulfillment_complete", "rejected"):
            raise ApiError(409, f"Session {session_id} is {session['status']}: it cannot be rejected.",
                           code="crypto_onramp_session_error")
        return self.set_status(session_id, "rejected")


def by_client_secret(store: SessionStore, client_secret: str) -> dict[str, Any] | None:
    """The stored session a client secret belongs to (the embedded widget's only credential)."""
    given = client_secret.encode("utf-8", "surrogatepass")   # bytes: compare_digest refuses non-ASCII str
    return next((s for s in store.sessions.values()
                 if secrets.compare_digest(s["client_secret"].encode(), given)), None)


QUOTE_PARAMS = frozenset({"source_amount", "source_currency", "destination_amount", "destination_currencies",
                          "destination_networks", "expand"})
QUOTE_NETWORK_FEE = "0.01"        # fixed fees of the emulator's quotes (USD)
QUOTE_FEE_RATE = Decimal("0.015")  # transaction fee: 1.5 % of the fiat amount, at least 0.01


def quote_answer(query: Mapping[str, Any], livemode: bool, now: float) -> dict[str, Any]:
    """``GET /v1/crypto/onramp/quotes``: a quote per requested (or supported) network and currency."""
    check_params(query, QUOTE_PARAMS, frozenset({"source_amount", "source_currency", "destination_amount"}))
    currencies = _string_list(query["destination_currencies"], "destination_currencies") \
        if "destination_currencies" in query else None
    networks = _string_list(query["destination_networks"], "destination_networks") \
        if "destination_networks" in query else sorted(NETWORKS)
    if "source_amount" in query and "destination_amount" in query:
        raise onramp_error("crypto_onramp_invalid_source_destination_pair",
                           "source_amount and destination_amount are mutually exclusive: set only one.")
    source_currency = query.get("source_currency", "usd")
    if source_currency != "usd":
        raise onramp_error("crypto_onramp_invalid_source_currency", "Quotes are in usd.", "source_currency")
    destination = None
    if "destination_amount" in query:
        if currencies is None or len(currencies) != 1 or len(networks) != 1:
            raise onramp_error("crypto_onramp_invalid_destination_currencies_and_networks",
                               "With destination_amount, set exactly one destination_currencies and one "
                               "destination_networks.")
        destination = _decimal(query["destination_amount"], "crypto_onramp_invalid_destination_amount",
                               "destination_amount")
        source = None
    else:
        source = _decimal(query.get("source_amount", "100"), "crypto_onramp_invalid_source_amount", "source_amount")
        if source != source.quantize(Decimal("0.01"), rounding=ROUND_DOWN):
            raise onramp_error("crypto_onramp_invalid_source_amount",
                               "source_amount can have at most 2 decimal places.", "source_amount")
    by_network: dict[str, list[dict[str, Any]]] = {}
    for network in networks:
        if network not in NETWORKS:
            raise ApiError(400, f"Invalid destination_networks: {network}", param="destination_networks")
        for currency in currencies or sorted(SUPPORTED_PAIRS[network]):
            if currency not in SUPPORTED_PAIRS[network]:
                if currencies is not None and len(networks) == 1:
                    raise onramp_error("crypto_onramp_invalid_destination_currency_and_network_pair",
                                       f"The destination currency and network pair ({currency} on {network}) "
                                       "isn't supported.")
                continue
            rate = Decimal(RATE_USD.get(currency, "1"))
            places = Decimal(1).scaleb(-CURRENCY_DECIMALS.get(currency, 18))
            if destination is not None:
                fiat = (destination * rate).quantize(Decimal("0.01"), rounding=ROUND_UP)
                crypto = destination
            else:
                fiat = source
                crypto = (source / rate).quantize(places, rounding=ROUND_DOWN)
            fee = max(Decimal("0.01"), (fiat * QUOTE_FEE_RATE).quantize(Decimal("0.01"), rounding=ROUND_UP))
            by_network.setdefault(wallet_key(network), []).append({
                "id": random_id("cpq_"), "destination_amount": str(crypto), "destination_currency": currency,
                "destination_network": network,
                "fees": {"network_fee_monetary": QUOTE_NETWORK_FEE, "transaction_fee_monetary": str(fee)},
                "source_total_amount": str(fiat + fee + Decimal(QUOTE_NETWORK_FEE)),
            })
    first = next(iter(by_network.values()), [{}])[0]
    source_amount = str(source) if source is not None else \
        (str(Decimal(first["source_total_amount"]) - Decimal(first["fees"]["transaction_fee_monetary"])
             - Decimal(QUOTE_NETWORK_FEE)) if first else None)
    return {"id": random_id("cpqs_"), "object": "crypto.onramp.quotes", "livemode": livemode,
            "rate_fetched_at": now, "source_amount": source_amount, "source_currency": "usd",
            "destination_network_quotes": by_network}


LIST_PARAMS = frozenset({"created", "destination_currency", "destination_network", "ending_before", "expand",
                         "limit", "starting_after", "status"})


def _int(value: Any, param: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise ApiError(400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=param) from None


def _created_filter(raw: Any) -> Callable[[int], bool]:
    """``created=N`` or ``created[gt|gte|lt|lte]=N`` as a predicate."""
    if not isinstance(raw, dict):
        exact = _int(raw, "created")
        return lambda t: t == exact
    tests = {"gt": lambda t, v: t > v, "gte": lambda t, v: t >= v, "lt": lambda t, v: t < v, "lte": lambda t, v: t <= v}
    bounds = []
    for op, value in raw.items():
        if op not in tests:
            raise ApiError(400, f"Received unknown parameter: created[{op}]", code="parameter_unknown",
                           param=f"created[{op}]")
        bounds.append((tests[op], _int(value, f"created[{op}]")))
    return lambda t: all(test(t, v) for test, v in bounds)


def list_page(store: SessionStore, query: Mapping[str, Any], url: str) -> dict[str, Any]:
    """One page of ``GET /v1/crypto/onramp_sessions``: filters, newest first, ``starting_after``/``ending_before``."""
    check_params(query, LIST_PARAMS, LIST_PARAMS - {"created", "expand"})
    limit = _int(query.get("limit", "10"), "limit")
    if not 1 <= limit <= 100:
        raise ApiError(400, f"This value must be between 1 and 100 (it currently is {limit}).",
                       code="parameter_invalid_integer", param="limit")
    status = query.get("status")
    if status is not None and status not in STATUSES:
        raise ApiError(400, f"Invalid status: must be one of {', '.join(STATUSES)}", param="status")
    created = _created_filter(query["created"]) if "created" in query else (lambda t: True)
    rows = [s for s in store.newest_first()
            if created(s["created"]) and (status is None or s["status"] == status)
            and query.get("destination_currency") in (None, s["transaction_details"]["destination_currency"])
            and query.get("destination_network") in (None, s["transaction_details"]["destination_network"])]
    if "starting_after" in query and "ending_before" in query:
        raise ApiError(400, "You may only specify one of these parameters: starting_after, ending_before.",
                       code="parameters_exclusive")
    for cursor in ("starting_after", "ending_before"):
        if cursor in query and query[cursor] not in store.sessions:
            raise ApiError(400, f"No such crypto.onramp_session: '{query[cursor]}'", code="resource_missing",
                           param=cursor)
    # A cursor filtered out by the other params still marks a place in the full order.
    position = {s["id"]: i for i, s in enumerate(store.newest_first())}
    if "starting_after" in query:
        after = position[query["starting_after"]]
        rows = [s for s in rows if position[s["id"]] > after]
        page, has_more = rows[:limit], len(rows) > limit
    elif "ending_before" in query:
        before = position[query["ending_before"]]
        rows = [s for s in rows if position[s["id"]] < before]
        page, has_more = rows[-limit:], len(rows) > limit
    else:
        page, has_more = rows[:limit], len(rows) > limit
    return {"object": "list", "data": copy.deepcopy(page), "has_more": has_more, "url": url}
