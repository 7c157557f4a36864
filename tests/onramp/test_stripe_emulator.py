"""The Stripe onramp emulator over real sockets: wire format, schema, errors, checkout, signed webhooks, switches."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from tachyon_stripe.emulator import EmulatorConfig, serve_emulator
from tachyon_stripe.emulator.app import StripeEmulator
from tachyon_stripe.forms import FormError, decode_form
from webhook_receiver import start_receiver

DATA = Path(__file__).parent.parent / "data"
FRAGMENT = json.loads((DATA / "stripe_onramp_openapi_fragment.json").read_text())
SCHEMAS = FRAGMENT["components"]["schemas"]
LIST_SCHEMA = FRAGMENT["paths"]["/v1/crypto/onramp_sessions"]["get"]["responses"]["200"]["content"][
    "application/json"]["schema"]
KEY = "sk_test_emulator123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
ETH = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
SECRET = "whsec_emulator_test_secret"


# ---- a validator for the JSON Schema subset the fragment uses ----

class SchemaError(AssertionError):
    pass


def check_schema(schema: dict, value: Any, path: str = "$") -> None:
    """type, nullable, properties, required, additionalProperties, enum (unless bypassed), anyOf, items, $ref."""
    if "$ref" in schema:
        return check_schema(SCHEMAS[schema["$ref"].rsplit("/", 1)[1]], value, path)
    if value is None:
        if not schema.get("nullable"):
            raise SchemaError(f"{path}: null is not allowed")
        return
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                return check_schema(option, value, path)
            except SchemaError as exc:
                errors.append(str(exc))
        raise SchemaError(f"{path}: matches no anyOf option: {errors}")
    kinds = {"string": str, "integer": int, "boolean": bool, "object": dict, "array": list}
    kind = schema.get("type")
    if kind:
        if not isinstance(value, kinds[kind]) or (kind == "integer" and isinstance(value, bool)):
            raise SchemaError(f"{path}: expected {kind}, got {type(value).__name__}")
    if "enum" in schema and not schema.get("x-stripeBypassValidation") and value not in schema["enum"]:
        raise SchemaError(f"{path}: {value!r} not in {schema['enum']}")
    if kind == "string" and len(value) > schema.get("maxLength", 1 << 30):
        raise SchemaError(f"{path}: longer than {schema['maxLength']}")
    if kind == "array":
        for i, item in enumerate(value):
            check_schema(schema.get("items", {}), item, f"{path}[{i}]")
    if kind == "object":
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                raise SchemaError(f"{path}: missing required {name}")
        for name, item in value.items():
            if name in properties:
                check_schema(properties[name], item, f"{path}.{name}")
            elif isinstance(schema.get("additionalProperties"), dict):
                check_schema(schema["additionalProperties"], item, f"{path}.{name}")
            else:
                raise SchemaError(f"{path}: unexpected property {name}")


SESSION_SCHEMA = {"$ref": "#/components/schemas/crypto.onramp_session"}


def test_schema_validator_accepts_fixture_and_catches_errors():
    fixture = FRAGMENT["fixture"]
    check_schema(SESSION_SCHEMA, fixture)
    broken = json.loads(json.dumps(fixture))
    del broken["transaction_details"]["wallet_addresses"]["base_network"]
    with pytest.raises(SchemaError, match="base_network"):
        check_schema(SESSION_SCHEMA, broken)
    for mutate, match in [
        (lambda o: o.__setitem__("created", "1234"), "expected integer"),
        (lambda o: o.__setitem__("livemode", None), "null is not allowed"),
        (lambda o: o.__setitem__("object", "checkout.session"), "not in"),
        (lambda o: o["transaction_details"].__setitem__("settlement_speed", "warp"), "not in"),
        (lambda o: o["transaction_details"].__setitem__("fees", {"network_fee_amount": 1}), "anyOf"),
        (lambda o: o.__setitem__("surprise", 1), "unexpected property"),
    ]:
        other = json.loads(json.dumps(fixture))
        mutate(other)
        with pytest.raises(SchemaError, match=match):
            check_schema(SESSION_SCHEMA, other)
    # A bypassed enum takes values Stripe adds later.
    newer = json.loads(json.dumps(fixture))
    newer["transaction_details"]["destination_network"] = "some_new_chain"
    check_schema(SESSION_SCHEMA, newer)


@pytest.mark.parametrize("name", ["stripe_session_fixture.json", "stripe_session_initialized.json",
                                  "stripe_session_fulfillment_complete.json"])
def test_sample_sessions_match_schema(name):
    check_schema(SESSION_SCHEMA, json.loads((DATA / name).read_text()))


def test_sample_events_and_list_match_schema():
    for name in ["stripe_event_session_updated_complete.json", "stripe_event_session_updated_requires_payment.json"]:
        event = json.loads((DATA / name).read_text())
        assert event["object"] == "event" and event["type"] == "crypto.onramp_session_updated"
        check_schema(SESSION_SCHEMA, event["data"]["object"])
    check_schema(LIST_SCHEMA, json.loads((DATA / "stripe_session_list.json").read_text()))


def test_form_decoding_as_stripe_python_encodes():
    assert decode_form("a%5Bb%5D%5Bc%5D=1&x%5B0%5D=p&x%5B1%5D=q&y%5B%5D=r&flag=true&e=") == {
        "a": {"b": {"c": "1"}}, "x": ["p", "q"], "y": ["r"], "flag": "true", "e": ""}
    with pytest.raises(FormError):
        decode_form("a=1&a%5Bb%5D=2")


# ---- a webhook receiver: a real ASGI app on hypercorn ----

async def start_emulator(nursery, **overrides) -> StripeEmulator:
    clock = overrides.pop("clock", None)
    config = EmulatorConfig(**overrides)
    emulator = StripeEmulator(config, **({"clock": clock} if clock else {}))
    return await nursery.start(partial(serve_emulator, config, emulator=emulator))


def verify_signature(body: bytes, header: str, secret: str) -> bool:
    items = [item.split("=", 1) for item in header.split(",")]
    timestamp = next(v for k, v in items if k == "t")
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return any(k == "v1" and hmac.compare_digest(v, expected) for k, v in items)


def create_form(**extra: str) -> dict[str, str]:
    form = {"wallet_addresses[ethereum]": ETH, "destination_currency": "usdc", "destination_network": "ethereum",
            "destination_currencies[0]": "usdc", "destination_networks[0]": "ethereum",
            "destination_amount": "10.00", "lock_wallet_address": "true", "metadata[tachyon_wallet]": "wal_1"}
    form.update(extra)
    return form


# ---- API ----

async def test_create_retrieve_list_match_schema(nursery):
    with trio.fail_after(20):
        emu = await start_emulator(nursery)
        async with httpx.AsyncClient(base_url=emu.base_url, headers=AUTH) as http:
            created = (await http.post("/v1/crypto/onramp_sessions", data=create_form(**{
                "wallet_addresses[base_network]": ETH, "destination_networks[1]": "base",
                "customer_ip_address": "198.51.100.7"}))).json()
            check_schema(SESSION_SCHEMA, created)
            assert created["id"].startswith("cos_") and created["status"] == "initialized"
            assert created["client_secret"].startswith(created["id"] + "_secret_")
            assert created["redirect_url"] == f"{emu.base_url}/checkout/{created['id']}"
            assert created["metadata"] == {"tachyon_wallet": "wal_1"}
            details = created["transaction_details"]
            assert details["destination_amount"] == "10.00" and details["lock_wallet_address"] is True
            assert details["wallet_addresses"]["base_network"] == ETH and "base" not in details["wallet_addresses"]
            assert details["destination_networks"] == ["ethereum", "base"]
            fetched = await http.get(f"/v1/crypto/onramp_sessions/{created['id']}")
            assert fetched.json() == created and fetched.headers["request-id"].startswith("req_")
            listed = (await http.get("/v1/crypto/onramp_sessions")).json()
            check_schema(LIST_SCHEMA, listed)
            assert listed["url"] == "/v1/crypto/onramp_sessions" and listed["data"][0]["id"] == created["id"]
            emu.complete_session(created["id"])
            done = (await http.get(f"/v1/crypto/onramp_sessions/{created['id']}")).json()
            check_schema(SESSION_SCHEMA, done)
            assert done["status"] == "fulfillment_complete"
            assert done["transaction_details"]["transaction_id"].startswith("0x")
            assert done["transaction_details"]["wallet_address"] == ETH
            check_schema(SESSION_SCHEMA, emu.create_foreign_session())


# One request per cross-field rule of the emulator's tables (sessions.DESTINATION_RULES, SOURCE_RULES).
RULE_CASES = [
    ({"destination_currencies[0]": "btc", "destination_networks[0]": "solana"},
     "crypto_onramp_invalid_destination_currencies_and_networks", None),
    (create_form(**{"destination_networks[0]": "solana", "destination_currencies[0]": "usdc",
                    "destination_networks[1]": "polygon", "wallet_addresses[ethereum]": ETH}),
     "crypto_onramp_conflicting_destination_network", "destination_network"),
    ({"destination_amount": "5", "source_currency": "usd", "source_amount": "5"},
     "crypto_onramp_invalid_source_destination_pair", None),
    ({"source_currency": "jpy"}, "crypto_onramp_invalid_source_currency", "source_currency"),
    ({"source_amount": "10"}, "crypto_onramp_missing_source_currency", None),
]
# A destination_amount with a currency and no network is refused as an incomplete pair first.
UNREACHABLE_RULES = {"crypto_onramp_missing_destination_network"}


def test_every_create_rule_has_a_case():
    from tachyon_stripe.sessions import DESTINATION_RULES, SOURCE_RULES

    codes = {code for _holds, code, _message, _param in (*DESTINATION_RULES, *SOURCE_RULES)}
    cases = {code for _form, code, _param in RULE_CASES} | {
        "crypto_onramp_invalid_destination_currency_and_network_pair",
        "crypto_onramp_incomplete_destination_currency_and_network_pair",
        "crypto_onramp_conflicting_destination_currency", "crypto_onramp_missing_destination_currency"}
    assert codes - UNREACHABLE_RULES == cases


@pytest.mark.parametrize(
    "form,code,param",
    [
        (
            {"destination_currency": "usdc", "destination_network": "bitcoin"},
            "crypto_onramp_invalid_destination_currency_and_network_pair",
            None,
        ),
        ({"destination_currency": "usdc"}, "crypto_onramp_incomplete_destination_currency_and_network_pair", None),
        (
            create_form(**{"wallet_addresses[ethereum]": "0x1234"}),
            "crypto_onramp_wallet_address_invalid",
            "wallet_addresses[ethereum]",
        ),
        (create_form(favourite_colour="blue"), "parameter_unknown", "favourite_colour"),
        (create_form(**{"wallet_addresses[base]": ETH}), "parameter_unknown", "wallet_addresses[base]"),
        (create_form(source_amount="10", source_currency="usd"), "crypto_onramp_invalid_source_destination_pair", None),
        (create_form(destination_amount="-1"), "crypto_onramp_invalid_destination_amount", "destination_amount"),
        (create_form(destination_amount="1.0000001"), "crypto_onramp_invalid_destination_amount", "destination_amount"),
        (create_form(customer_ip_address="203.0.113.9"), "crypto_onramp_unsupported_country", "customer_ip_address"),
        (
            create_form(**{"destination_currency": "eth"}),
            "crypto_onramp_conflicting_destination_currency",
            "destination_currency",
        ),
        ({"lock_wallet_address": "true"}, "crypto_onramp_no_wallet_address_to_lock", "lock_wallet_address"),
        # "When set [destination_amount], both destination_currency and destination_network must also be set."
        (
            {"wallet_addresses[ethereum]": ETH, "destination_currencies[0]": "usdc", "destination_amount": "5"},
            "crypto_onramp_missing_destination_currency",
            "destination_currency",
        ),
        ({"destination_currency[x]": "usdc", "destination_network": "ethereum"}, None, "destination_currency"),
        (
            {
                "wallet_addresses[solana]": "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v",
                "destination_networks[0]": "ethereum",
            },
            "crypto_onramp_wallet_addresses_not_all_networks_supported",
            "wallet_addresses",
        ),
        *RULE_CASES,
    ],
)
async def test_create_errors_use_stripe_codes(nursery, form, code, param):
    with trio.fail_after(20):
        emu = await start_emulator(nursery)
        async with httpx.AsyncClient(base_url=emu.base_url, headers=AUTH) as http:
            response = await http.post("/v1/crypto/onramp_sessions", data=form)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error.get("code") == code and error["message"]
        assert error.get("param") == param
        assert emu.store.sessions == {}


async def test_auth_and_unknown_urls(nursery):
    with trio.fail_after(20):
        emu = await start_emulator(nursery, secret_keys=(KEY,))
        async with httpx.AsyncClient(base_url=emu.base_url) as http:
            missing = await http.get("/v1/crypto/onramp_sessions")
            assert missing.status_code == 401 and "did not provide an API key" in missing.json()["error"]["message"]
            wrong_key = "sk_test_someoneelse987654321"
            wrong = await http.get("/v1/crypto/onramp_sessions", headers={"Authorization": f"Bearer {wrong_key}"})
            assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "invalid_request_error"
            assert wrong_key not in wrong.text and "4321" in wrong.json()["error"]["message"]
            basic = await http.get("/v1/crypto/onramp_sessions", auth=(KEY, ""))
            assert basic.status_code == 200
            unknown = await http.get("/v1/crypto/onramp_sessions/cos_nope", headers=AUTH)
            assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "resource_missing"
            bad_url = await http.post("/v1/crypto/onramp_sessions/cos_x/frobnicate", headers=AUTH)
            assert bad_url.status_code == 404 and "Unrecognized request URL" in bad_url.json()["error"]["message"]
        open_emu = await start_emulator(nursery)  # no keys configured: any test key, never a live one
        async with httpx.AsyncClient(base_url=open_emu.base_url) as http:
            assert (await http.get("/v1/crypto/onramp_sessions", headers=AUTH)).status_code == 200
            live = await http.get(
                "/v1/crypto/onramp_sessions", headers={"Authorization": "Bearer sk_live_abcdefgh1234"}
            )
            assert live.status_code == 401


async def test_idempotency_key(nursery):
    with trio.fail_after(20):
        emu = await start_emulator(nursery)
        async with httpx.AsyncClient(base_url=emu.base_url, headers=AUTH) as http:
            first = await http.post("/v1/crypto/onramp_sessions", data=create_form(), headers={"Idempotency-Key": "k1"})
            again = await http.post("/v1/crypto/onramp_sessions", data=create_form(), headers={"Idempotency-Key": "k1"})
            assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
            other = await http.post("/v1/crypto/onramp_sessions", data=create_form(destination_amount="11"),
                                    headers={"Idempotency-Key": "k1"})
            assert other.status_code == 400 and other.json()["error"]["type"] == "idempotency_error"
            fresh = await http.post("/v1/crypto/onramp_sessions", data=create_form(), headers={"Idempotency-Key": "k2"})
            assert fresh.json()["id"] != first.json()["id"]
        assert len(emu.store.sessions) == 2


async def test_idempotency_saves_a_500_once_the_endpoint_ran_and_never_a_validation_failure(nursery):
    """Stripe's idempotency page: results are saved once the endpoint began, 500s included; a request that
    failed validation is not saved, so the key can be used again with corrected params."""
    with trio.fail_after(20):
        emu = await start_emulator(nursery)
        async with httpx.AsyncClient(base_url=emu.base_url, headers=AUTH) as http:
            key = {"Idempotency-Key": "ran-then-failed"}
            emu.inject_errors(500, count=1, in_endpoint=True)
            first = await http.post("/v1/crypto/onramp_sessions", data=create_form(), headers=key)
            assert first.status_code == 500 and first.json()["error"]["type"] == "api_error"
            replay = await http.post("/v1/crypto/onramp_sessions", data=create_form(), headers=key)
            assert replay.status_code == 500 and replay.headers["idempotent-replayed"] == "true"
            assert replay.json() == first.json()
            # The same key with other params conflicts with the saved 500.
            other = await http.post("/v1/crypto/onramp_sessions", data=create_form(destination_amount="11"),
                                    headers=key)
            assert other.status_code == 400 and other.json()["error"]["type"] == "idempotency_error"
            # A validation failure is not saved: the key then carries the corrected request.
            key = {"Idempotency-Key": "invalid-then-fixed"}
            invalid = await http.post("/v1/crypto/onramp_sessions", data=create_form(destination_network="nowhere"),
                                      headers=key)
            assert invalid.status_code == 400 and "idempotent-replayed" not in invalid.headers
            fixed = await http.post("/v1/crypto/onramp_sessions", data=create_form(), headers=key)
            assert fixed.status_code == 200 and "idempotent-replayed" not in fixed.headers
            again = await http.post("/v1/crypto/onramp_sessions", data=create_form(), headers=key)
            assert again.json()["id"] == fixed.json()["id"] and again.headers["idempotent-replayed"] == "true"
        assert len(emu.store.sessions) == 1


async def test_switches_livemode_live_keys_and_embedded_only(nursery):
    with trio.fail_after(20):
        emu = await start_emulator(nursery, livemode=True, accept_live_keys=True, hosted_checkout=False)
        live = {"Authorization": "Bearer sk_live_emulator123456789"}
        async with httpx.AsyncClient(base_url=emu.base_url) as http:
            made = (await http.post("/v1/crypto/onramp_sessions", data=create_form(), headers=live)).json()
            assert made["livemode"] is True and made["redirect_url"] is None
            check_schema(SCHEMAS["crypto.onramp_session"], made)
            emu.complete_session(made["id"])
            assert {e["livemode"] for e in emu.events} == {True}
            # The stand-in widget: its scripts, and its calls authenticated by the client secret alone.
            script = await http.get("/crypto-onramp-outer.js")
            assert script.status_code == 200 and "window.StripeOnramp" in script.text
            assert script.headers["content-type"].startswith("text/javascript")
            assert (await http.get("/v3/")).status_code == 200
            seen = (await http.get("/embedded/session", params={"client_secret": made["client_secret"]})).json()
            assert seen["id"] == made["id"] and seen["status"] == "fulfillment_complete"
            assert made["client_secret"] not in json.dumps(seen)
            assert (await http.get("/embedded/session", params={"client_secret": "nope"})).status_code == 404
            # A non-ASCII secret is just another wrong one (compare_digest refuses non-ASCII str: no 500).
            odd = await http.post("/embedded/pay", data={"client_secret": "cos_\u00e9_secret"})
            assert odd.status_code == 404 and odd.json()["error"]["message"] == "No such onramp session."


async def test_quotes_answer_with_fixed_fees(nursery):
    with trio.fail_after(20):
        emu = await start_emulator(nursery)
        async with httpx.AsyncClient(base_url=emu.base_url, headers=AUTH) as http:
            r = await http.get("/v1/crypto/onramp/quotes", params={
                "destination_amount": "100", "destination_currencies[]": "usdc", "destination_networks[]": "base"})
            quote = r.json()
            assert r.status_code == 200 and quote["object"] == "crypto.onramp.quotes" and quote["livemode"] is False
            [entry] = quote["destination_network_quotes"]["base_network"]
            assert entry["fees"] == {"network_fee_monetary": "0.01", "transaction_fee_monetary": "1.50"}
            assert (entry["destination_amount"], entry["source_total_amount"]) == ("100", "101.51")
            two = await http.get("/v1/crypto/onramp/quotes", params={
                "destination_amount": "1", "destination_currencies[0]": "usdc", "destination_currencies[1]": "eth",
                "destination_networks[0]": "base"})
            assert two.status_code == 400 and two.json()["error"]["code"] == \
                "crypto_onramp_invalid_destination_currencies_and_networks"
            fiat = (await http.get("/v1/crypto/onramp/quotes", params={"source_amount": "30",
                                                                       "source_currency": "usd"})).json()
            assert {"base_network", "ethereum", "solana"} <= set(fiat["destination_network_quotes"])


async def test_refusals_on_demand(nursery):
    with trio.fail_after(20):
        emu = await start_emulator(nursery)
        async with httpx.AsyncClient(base_url=emu.base_url, headers=AUTH) as http:
            for code, kind in (("crypto_onramp_disabled", "api_error"),
                               ("crypto_onramp_merchant_not_properly_setup", "invalid_request_error"),
                               ("crypto_onramp_unsupported_country", "invalid_request_error"),
                               ("crypto_onramp_unsupportable_customer", "invalid_request_error")):
                assert (await http.post("/_emulator/refuse", data={"code": code})).json() == {"code": code}
                r = await http.post("/v1/crypto/onramp_sessions", data=create_form())
                assert r.status_code == 400 and r.json()["error"]["code"] == code
                assert r.json()["error"]["type"] == kind
            await http.post("/_emulator/refuse", data={})
            assert (await http.post("/v1/crypto/onramp_sessions", data=create_form())).status_code == 200
            assert len(emu.store.sessions) == 1


async def test_list_filters_and_paging(nursery):
    with trio.fail_after(20):
        now = [1_700_000_000]
        emu = await start_emulator(nursery, clock=lambda: now[0])
        ids = []
        for i in range(7):
            now[0] += 10
            network = "solana" if i % 2 else "ethereum"
            address = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v" if i % 2 else ETH
            ids.append(emu.create_foreign_session({"destination_currency": "usdc", "destination_network": network,
                                                   "wallet_addresses": {network: address}})["id"])
        emu.complete_session(ids[6], destination_amount="5")
        newest_first = ids[::-1]
        async with httpx.AsyncClient(base_url=emu.base_url, headers=AUTH) as http:
            async def page(**params):
                response = await http.get("/v1/crypto/onramp_sessions", params=params)
                assert response.status_code == 200, response.text
                return response.json()

            first = await page(limit=3)
            assert [s["id"] for s in first["data"]] == newest_first[:3] and first["has_more"] is True
            second = await page(limit=3, starting_after=first["data"][-1]["id"])
            assert [s["id"] for s in second["data"]] == newest_first[3:6] and second["has_more"] is True
            third = await page(limit=3, starting_after=second["data"][-1]["id"])
            assert [s["id"] for s in third["data"]] == newest_first[6:] and third["has_more"] is False
            back = await page(limit=2, ending_before=newest_first[3])
            assert [s["id"] for s in back["data"]] == newest_first[1:3]
            since = await page(**{"created[gte]": 1_700_000_040})
            assert [s["id"] for s in since["data"]] == newest_first[:4]
            window = await page(**{"created[gt]": 1_700_000_020, "created[lte]": 1_700_000_040})
            assert [s["id"] for s in window["data"]] == newest_first[3:5]
            solana = await page(destination_network="solana")
            assert [s["id"] for s in solana["data"]] == [ids[5], ids[3], ids[1]]
            complete = await page(status="fulfillment_complete")
            assert [s["id"] for s in complete["data"]] == [ids[6]]
            for params, code in [
                ({"limit": 0}, "parameter_invalid_integer"),
                ({"limit": 101}, "parameter_invalid_integer"),
                ({"created[gte]": "soon"}, "parameter_invalid_integer"),
                ({"starting_after": "cos_missing"}, "resource_missing"),
                ({"colour": "red"}, "parameter_unknown"),
                ({"starting_after[x]": "cos_1"}, None),
            ]:
                response = await http.get("/v1/crypto/onramp_sessions", params=params)
                assert response.status_code == 400 and response.json()["error"].get("code") == code


# ---- errors on demand ----

async def test_error_injection_methods_and_routes(nursery):
    with trio.fail_after(20):
        emu = await start_emulator(nursery)
        async with httpx.AsyncClient(base_url=emu.base_url, headers=AUTH) as http:
            emu.inject_errors(500, count=2)
            for _ in range(2):
                failed = await http.get("/v1/crypto/onramp_sessions")
                assert failed.status_code == 500 and failed.json()["error"]["type"] == "api_error"
            assert (await http.get("/v1/crypto/onramp_sessions")).status_code == 200
            assert (await http.post("/_emulator/errors", data={"status": "429", "count": "all"})).status_code == 200
            for _ in range(3):
                limited = await http.get("/v1/crypto/onramp_sessions")
                assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit"
            await http.post("/_emulator/errors/clear")
            assert (await http.get("/v1/crypto/onramp_sessions")).status_code == 200
            # A 500 injected before the endpoint began (a front door failure) is not saved under the key.
            emu.inject_errors(500, count=1)
            key = {"Idempotency-Key": "retry-me"}
            assert (await http.post("/v1/crypto/onramp_sessions", data=create_form(), headers=key)).status_code == 500
            assert (await http.post("/v1/crypto/onramp_sessions", data=create_form(), headers=key)).status_code == 200
            assert len(emu.store.sessions) == 1


# ---- checkout and webhooks ----

async def test_checkout_form_post_sends_three_signed_webhooks(nursery):
    with trio.fail_after(20):
        receiver, url = await start_receiver(nursery)
        emu = await start_emulator(nursery, webhook_url=url, webhook_secrets=(SECRET, "whsec_second"))
        async with httpx.AsyncClient(base_url=emu.base_url, headers=AUTH) as http:
            session = (await http.post("/v1/crypto/onramp_sessions", data=create_form())).json()
            page = await http.get(session["redirect_url"])
            assert page.status_code == 200 and 'method="post"' in page.text and 'value="pay"' in page.text
            paid = await http.post(session["redirect_url"], data={"action": "pay", "destination_amount": "10.00"})
            assert paid.status_code == 200 and "fulfillment_complete" in paid.text
        await receiver.wait_for(3)
        await emu.wait_webhooks_idle()
        statuses = [e["data"]["object"]["status"] for e in receiver.events()]
        assert statuses == ["requires_payment", "fulfillment_processing", "fulfillment_complete"]
        for (body, headers), event in zip(receiver.requests, receiver.events(), strict=False):
            signature = headers["stripe-signature"]
            assert signature.count("v1=") == 2
            assert verify_signature(body, signature, SECRET) and verify_signature(body, signature, "whsec_second")
            assert not verify_signature(body, signature, "whsec_other")
            assert headers["content-type"].startswith("application/json")
            assert event["object"] == "event" and event["id"].startswith("evt_") and event["livemode"] is False
            assert event["type"] == "crypto.onramp_session_updated" and event["api_version"]
            check_schema(SESSION_SCHEMA, event["data"]["object"])
        assert receiver.events()[-1]["data"]["object"]["transaction_details"]["transaction_id"]
        assert emu.pending_deliveries() == []


async def test_checkout_decline_and_bad_input(nursery):
    with trio.fail_after(20):
        emu = await start_emulator(nursery)
        session = emu.create_foreign_session()
        async with httpx.AsyncClient() as http:
            bad = await http.post(session["redirect_url"], data={"action": "pay", "destination_amount": "lots"})
            assert bad.status_code == 400 and emu.get_session(session["id"])["status"] == "initialized"
            declined = await http.post(session["redirect_url"], data={"action": "decline"})
            assert declined.status_code == 200 and emu.get_session(session["id"])["status"] == "rejected"
            again = await http.post(session["redirect_url"], data={"action": "pay"})
            assert again.status_code == 409
            assert (await http.get(f"{emu.base_url}/checkout/cos_missing")).status_code == 404
        assert [e["data"]["object"]["status"] for e in emu.events] == ["rejected"]


async def test_webhook_retries_with_fresh_signatures_and_redirects_fail(nursery):
    with trio.fail_after(20):
        receiver, url = await start_receiver(nursery)
        receiver.statuses = [500, 302, 200]
        ticks = iter(range(1_800_000_000, 1_900_000_000, 7))
        emu = await start_emulator(nursery, webhook_url=url, webhook_secrets=(SECRET,), webhook_backoff_s=0.01,
                                   clock=lambda: next(ticks))
        emu.set_session_status(emu.create_foreign_session()["id"], "requires_payment")
        await emu.wait_webhooks_idle()
        assert [a.status for a in emu.delivery_attempts] == [500, 302, 200]
        bodies = {body for body, _ in receiver.requests}
        signatures = [headers["stripe-signature"] for _, headers in receiver.requests]
        assert len(bodies) == 1 and len(set(signatures)) == 3
        assert all(verify_signature(receiver.requests[0][0], s, SECRET) for s in signatures)


async def test_webhook_gives_up_after_max_attempts(nursery):
    with trio.fail_after(20):
        receiver, url = await start_receiver(nursery)
        receiver.statuses = [503] * 10
        emu = await start_emulator(nursery, webhook_url=url, webhook_secrets=(SECRET,), webhook_backoff_s=0.01,
                                   webhook_max_attempts=3)
        emu.reject_session(emu.create_foreign_session()["id"])
        await emu.wait_webhooks_idle()
        assert len(receiver.requests) == 3 and emu.webhooks.abandoned == [emu.events[0]["id"]]


async def test_stop_resume_redeliver_and_control_routes(nursery):
    with trio.fail_after(20):
        receiver, url = await start_receiver(nursery)
        emu = await start_emulator(nursery, webhook_url=url, webhook_secrets=(SECRET,))
        async with httpx.AsyncClient(base_url=emu.base_url) as http:
            assert (await http.post("/_emulator/webhooks/stop")).json() == {"paused": True}
            foreign = (await http.post("/_emulator/sessions")).json()
            assert foreign["metadata"] == {"app": "another-app"}
            done = (await http.post(f"/_emulator/sessions/{foreign['id']}/complete")).json()
            assert done["status"] == "fulfillment_complete"
            # Not a sleep: once every task here (the sender, the receiver) is blocked, an unpaused sender would
            # already have delivered over loopback.
            await trio.testing.wait_all_tasks_blocked()
            assert receiver.requests == [] and len(emu.pending_deliveries()) == 3
            state = (await http.get("/_emulator/webhooks")).json()
            assert state["paused"] is True and len(state["pending"]) == 3
            await http.post("/_emulator/webhooks/resume")
            await receiver.wait_for(3)
            await emu.wait_webhooks_idle()
            first_id = emu.events[0]["id"]
            assert (await http.post(f"/_emulator/events/{first_id}/redeliver")).json() == {"queued": True}
            await receiver.wait_for(4)
            assert receiver.events()[3]["id"] == first_id
            odd = (await http.post(f"/_emulator/sessions/{foreign['id']}/status", data={"status": "on_hold"})).json()
            assert odd["status"] == "on_hold"
            await receiver.wait_for(5)
            assert (await http.post("/_emulator/sessions/cos_missing/complete")).status_code == 404


async def test_main_serves_and_never_prints_the_secret(tmp_path):
    secret = "whsec_do_not_print_me_42"
    env = {**os.environ, "STRIPE_WEBHOOK_SECRET": secret, "PYTHONPATH": os.pathsep.join(["plugins", "."])}
    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "tachyon_stripe.emulator", "--listen", "127.0.0.1:0",
             "--webhook-url", "http://127.0.0.1:9/webhook"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            cwd=Path(__file__).resolve().parent.parent.parent)
        line = b""
        while not line.endswith(b"\n"):
            line += await process.stdout.receive_some(1)
        text = line.decode()
        assert "serving http://127.0.0.1:" in text and secret not in text and "1 signing secret" in text
        url = text.split("serving ", 1)[1].split(" ", 1)[0]
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{url}/health")).json()["object"] == "stripe_onramp_emulator"
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0
        rest = (await process.stdout.receive_some(65536) or b"") + (await process.stderr.receive_some(65536) or b"")
        assert secret.encode() not in rest
