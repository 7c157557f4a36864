"""The gates between a session Stripe calls complete and a credit: livemode, and where the crypto went.

Sessions are parsed by the real Stripe provider from Stripe's own object shape (tests/data); the gates are the
daemon's own functions. Every case that cannot say where the money went must park (fail closed).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from tachyon_stripe.provider import StripeOnrampProvider

from tachyond.onramp.inbox import destination_problem, livemode_problem

DATA = Path(__file__).parent.parent / "data"
ETH = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"   # the address in the fixture
SOL = "7EcDhSYGxXyscszYEp35KHN8vvw3svAuLKTzXwCFLtV"
ASKED_ETH = {"address": ETH, "network": "ethereum", "currency": "usdc"}


def complete(**details) -> dict:
    raw = json.loads((DATA / "stripe_session_fulfillment_complete.json").read_text())
    raw["transaction_details"].update(details)
    return raw


def parse(raw: dict):
    return StripeOnrampProvider._session(raw)


def provider(key: str) -> StripeOnrampProvider:
    return StripeOnrampProvider({"api_base": "http://127.0.0.1:9"},
                                environ={"STRIPE_SECRET_KEY": key, "STRIPE_WEBHOOK_SECRET": "whsec_x"})


def test_the_fixture_as_stripe_sends_it_is_credited():
    assert destination_problem(parse(complete()), ASKED_ETH) is None
    assert livemode_problem(provider("sk_test_abc"), parse(complete())) is None


@pytest.mark.parametrize("key,livemode,credited", [
    ("sk_test_abc", False, True), ("rk_test_abc", False, True), ("sk_live_abc", True, True),
    ("rk_live_abc", True, True), ("sk_live_abc", False, False), ("sk_test_abc", True, False),
])
def test_livemode_must_match_the_keys_mode(key, livemode, credited):
    raw = complete()
    raw["livemode"] = livemode
    assert (livemode_problem(provider(key), parse(raw)) is None) is credited


@pytest.mark.parametrize("value", ["missing", None, "false", 0, 1, "true"])
def test_a_session_that_does_not_say_its_mode_as_a_bool_is_parked(value):
    """A missing or non-boolean livemode never passes the gate, under either key."""
    raw = complete()
    if value == "missing":
        del raw["livemode"]
    else:
        raw["livemode"] = value
    for key in ("sk_test_abc", "sk_live_abc"):
        assert livemode_problem(provider(key), parse(raw)).startswith("livemode mismatch")


def test_evm_addresses_compare_without_case_others_exactly():
    assert destination_problem(parse(complete(wallet_address=ETH.lower())), ASKED_ETH) is None
    assert destination_problem(parse(complete(wallet_address=ETH.upper().replace("0X", "0x"))), ASKED_ETH) is None
    # base58 (Solana): a change of case is another address.
    asked_sol = {"address": SOL, "network": "solana", "currency": "usdc"}
    sol = complete(destination_network="solana", wallet_address=SOL.lower(),
                   wallet_addresses={"solana": SOL.lower()})
    assert destination_problem(parse(sol), asked_sol).startswith("delivered elsewhere: address")
    sol_ok = complete(destination_network="solana", wallet_address=SOL, wallet_addresses={"solana": SOL})
    assert destination_problem(parse(sol_ok), asked_sol) is None
    # Only a real hex address is compared without case.
    not_hex = "0xZZ" + ETH[4:].lower()
    assert destination_problem(parse(complete(wallet_address=not_hex, wallet_addresses={"ethereum": not_hex})),
                               {**ASKED_ETH, "address": not_hex.lower()}).startswith("delivered elsewhere")


def test_without_wallet_address_only_a_locked_session_says_where_it_went():
    """wallet_addresses is what was asked; unless the session was locked to it the buyer may have picked another."""
    locked = complete(wallet_address=None, lock_wallet_address=True)
    assert destination_problem(parse(locked), ASKED_ETH) is None
    unlocked = complete(wallet_address=None, lock_wallet_address=False)
    assert destination_problem(parse(unlocked), ASKED_ETH).startswith(
        "delivered elsewhere: the provider does not say which address")
    no_lock_field = complete(wallet_address=None)
    del no_lock_field["transaction_details"]["lock_wallet_address"]
    assert destination_problem(parse(no_lock_field), ASKED_ETH).startswith("delivered elsewhere")


def test_a_session_without_transaction_details_is_parked():
    raw = complete()
    del raw["transaction_details"]
    assert destination_problem(parse(raw), ASKED_ETH).startswith("delivered elsewhere")
    raw["transaction_details"] = None
    assert destination_problem(parse(raw), ASKED_ETH).startswith("delivered elsewhere")


def test_base_is_read_from_stripes_base_network_key():
    raw = complete(destination_network="base", wallet_address=None,
                   wallet_addresses={"base_network": ETH, "ethereum": None})
    assert destination_problem(parse(raw), {**ASKED_ETH, "network": "base"}) is None
    other = copy.deepcopy(raw)
    other["transaction_details"]["wallet_addresses"]["base_network"] = "0x" + "1" * 40
    assert destination_problem(parse(other), {**ASKED_ETH, "network": "base"}).startswith(
        "delivered elsewhere: address 0x1111")


def test_wrong_network_or_currency_or_no_record_is_parked():
    assert destination_problem(parse(complete(destination_network="polygon")), ASKED_ETH).startswith(
        "delivered elsewhere: network 'polygon'")
    assert destination_problem(parse(complete(destination_currency="eth")), ASKED_ETH).startswith(
        "delivered elsewhere: currency 'eth'")
    assert destination_problem(parse(complete()), None) == "this wallet has no record of creating the session"


# ---- the embedded page: whatever the provider says is text, never markup or script ----

def test_the_embedded_page_escapes_what_the_provider_says():
    import re

    from tachyond.onramp.page import render_page
    from tachyond.providers import SessionInfo

    hostile = '</dd><script>alert(1)</script><img src=x onerror=alert(2)>"\''
    info = SessionInfo(id="cos_ok", status=hostile, created=0, currency=hostile, network=hostile, amount=hostile,
                       client_secret="cos_ok_secret_</script><script>alert(3)</script>")
    stripe = provider("sk_test_abc")
    stripe.publishable_key = "pk_test_abc"
    text, csp = render_page(info, stripe.embed(info))
    assert "<script>alert" not in text and "<img" not in text and "&lt;img src=x onerror=alert(2)&gt;" in text
    assert '<dd id="status">&lt;/dd&gt;&lt;script&gt;alert(1)&lt;/script&gt;' in text
    # The client secret reaches the widget intact, as JSON the HTML parser cannot end early.
    config = re.search(r"window\.ONRAMP_CONFIG = (.*?);</script>", text).group(1)
    assert json.loads(config)["client_secret"] == info.client_secret and "</" not in config
    # Every script on the page carries the nonce, and the policy allows no other inline script.
    nonce = re.search(r"'nonce-([^']+)'", csp).group(1)
    assert text.count("<script") == text.count(f'<script nonce="{nonce}"') == 4
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp and "default-src 'none'" in csp
    assert render_page(info, stripe.embed(info))[1] != csp   # a fresh nonce per answer
