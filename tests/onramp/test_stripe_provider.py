"""The Stripe provider: real stripe-python against the real emulator on 127.0.0.1, config rules, webhook checks."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from functools import partial
from pathlib import Path

import httpx
import pluggy
import pytest
import tachyon_stripe
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from tachyon_stripe.emulator import EmulatorConfig, serve_emulator
from tachyon_stripe.emulator.app import StripeEmulator
from tachyon_stripe.provider import StripeOnrampProvider
from webhook_receiver import Receiver

from tachyond import PROJECT, hookspecs
from tachyond.config import ConfigError
from tachyond.errors import OnrampError
from tachyond.providers import OnrampProvider, SessionRequest, WebhookRejected

DATA = Path(__file__).parent.parent / "data"
KEY = "sk_test_provider_key_0123456789"
OLD, NEW = "whsec_old_secret_aaaa", "whsec_new_secret_bbbb"
ENV = {"STRIPE_SECRET_KEY": KEY, "STRIPE_WEBHOOK_SECRET": f"{OLD},{NEW}"}
ETH = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"


def provider_for(api_base: str = "http://127.0.0.1:9", env: dict | None = None, **config) -> StripeOnrampProvider:
    return StripeOnrampProvider({"api_base": api_base, **config}, environ=ENV if env is None else env)


def sign(body: bytes, *secrets: str, timestamp: int | None = None, scheme: str = "v1") -> str:
    t = int(time.time()) if timestamp is None else timestamp
    sigs = [f"{scheme}={hmac.new(s.encode(), f'{t}.'.encode() + body, hashlib.sha256).hexdigest()}" for s in secrets]
    return ",".join([f"t={t}", *sigs])


async def start(nursery, *, secrets=(NEW,), clock=None, **config):
    receiver = Receiver()
    hc = HypercornConfig()
    hc.bind = ["127.0.0.1:0"]
    hc.accesslog = None
    binds = await nursery.start(serve, receiver, hc)
    cfg = EmulatorConfig(webhook_url=binds[0] + "/webhook/stripe", webhook_secrets=secrets, **config)
    emulator = StripeEmulator(cfg, **({"clock": clock} if clock else {}))
    emu = await nursery.start(partial(serve_emulator, cfg, emulator=emulator))
    return emu, receiver


# ---- configuration ----

def test_defaults_and_attributes():
    provider = provider_for(allowed={"ethereum": ["usdc"], "base": ["usdc", "eth"]}, reconcile_interval_s=60)
    assert isinstance(provider, OnrampProvider) and provider.name == "stripe"
    assert (provider.default_network, provider.default_currency) == ("ethereum", "usdc")
    assert provider.allowed == {"ethereum": ("usdc",), "base": ("usdc", "eth")}
    assert (provider.reconcile_interval_s, provider.reconcile_lookback_h, provider.tolerance_s) == (60, 72, 300)
    assert KEY not in repr(provider) and OLD not in repr(provider)
    assert provider_for().allowed is None


@pytest.mark.parametrize("config,key,reason", [
    ({"secret_key": "sk_test_x"}, "onramp.stripe.secret_key", "unknown key"),
    ({"tolerance_s": "300"}, "onramp.stripe.tolerance_s", "integer"),
    ({"tolerance_s": True}, "onramp.stripe.tolerance_s", "integer"),
    ({"tolerance_s": 0}, "onramp.stripe.tolerance_s", "> 0"),
    ({"timeout_s": -1}, "onramp.stripe.timeout_s", "> 0"),
    ({"max_network_retries": 1.5}, "onramp.stripe.max_network_retries", "integer"),
    ({"api_base": "ftp://x"}, "onramp.stripe.api_base", "http"),
    ({"default_network": 5}, "onramp.stripe.default_network", "string"),
    ({"allowed": {"ethereum": "usdc"}}, "onramp.stripe.allowed.ethereum", "list"),
    ({"allowed": {"solana": ["usdc"]}}, "onramp.stripe.default_network", "not in onramp.stripe.allowed"),
    ({"secret_key_env": "A", "secret_key_file": "/x"}, "onramp.stripe.secret_key_file", "only one"),
])
def test_bad_config_names_the_key(config, key, reason):
    with pytest.raises(ConfigError) as info:
        provider_for(**config)
    assert info.value.key == key and reason in info.value.reason


def test_key_mode_publishable_key_and_widget_base(tmp_path):
    """The key's mode is the livemode gate; the publishable key must share it; the stand-in is test-only."""
    assert provider_for().livemode is False and provider_for().publishable_key is None
    live = {"STRIPE_SECRET_KEY": "rk_live_abc123", "STRIPE_WEBHOOK_SECRET": NEW}
    assert provider_for(env=live).livemode is True
    pk = tmp_path / "pk"
    pk.write_text("pk_test_abc123\n")
    provider = provider_for(publishable_key_file=str(pk), widget_base_url="http://127.0.0.1:12111")
    assert provider.publishable_key == "pk_test_abc123" and provider.widget_base_url == "http://127.0.0.1:12111"
    with pytest.raises(ConfigError) as info:
        provider_for(env=live, publishable_key_file=str(pk))
    assert info.value.key == "onramp.stripe.publishable_key_file" and "mode" in info.value.reason
    with pytest.raises(ConfigError) as info:
        provider_for(env={**live, "PK": "pk_live_abc"}, publishable_key_env="PK", widget_base_url="http://127.0.0.1:1")
    assert info.value.key == "onramp.stripe.widget_base_url" and "test keys only" in info.value.reason
    with pytest.raises(ConfigError) as info:
        provider_for(env={**ENV, "PK": "sk_test_notpublic"}, publishable_key_env="PK")
    assert "sk_test_notpublic" not in str(info.value) and "pk_test_" in info.value.reason
    with pytest.raises(ConfigError) as info:
        provider_for(widget_base_url="http://127.0.0.1:1/path")
    assert info.value.key == "onramp.stripe.widget_base_url"
    with pytest.raises(ConfigError) as info:
        provider_for(env={"STRIPE_SECRET_KEY": "sk_other_abc", "STRIPE_WEBHOOK_SECRET": NEW})
    assert info.value.key == "onramp.stripe.secret_key_env"


def test_missing_or_bad_secrets_name_key_and_variable_never_value(tmp_path):
    with pytest.raises(ConfigError) as info:
        provider_for(env={"STRIPE_WEBHOOK_SECRET": NEW})
    assert info.value.key == "onramp.stripe.secret_key_env" and "STRIPE_SECRET_KEY" in str(info.value)
    with pytest.raises(ConfigError) as info:
        provider_for(env={"STRIPE_SECRET_KEY": KEY}, webhook_secret_env="MY_HOOK_SECRET")
    assert info.value.key == "onramp.stripe.webhook_secret_env" and "MY_HOOK_SECRET" in str(info.value)
    with pytest.raises(ConfigError) as info:
        provider_for(env={"STRIPE_SECRET_KEY": "pk_test_public123", "STRIPE_WEBHOOK_SECRET": NEW})
    assert "pk_test_public123" not in str(info.value) and "sk_" in str(info.value)
    with pytest.raises(ConfigError) as info:
        provider_for(env={"STRIPE_SECRET_KEY": KEY, "STRIPE_WEBHOOK_SECRET": "not_a_whsec_value"})
    assert "not_a_whsec_value" not in str(info.value) and info.value.key == "onramp.stripe.webhook_secret_env"
    key_file, hook_file = tmp_path / "key", tmp_path / "hook"
    key_file.write_text(KEY + "\n")
    hook_file.write_text(f"{OLD}, {NEW}\n")
    from_files = provider_for(env={}, secret_key_file=str(key_file), webhook_secret_file=str(hook_file))
    assert from_files._webhook_secrets == (OLD, NEW)
    with pytest.raises(ConfigError) as info:
        provider_for(env={}, secret_key_file=str(tmp_path / "absent"))
    assert info.value.key == "onramp.stripe.secret_key_file" and "cannot read" in info.value.reason


def test_hook_registers_stripe_factory(monkeypatch):
    monkeypatch.setenv("STRIPE_SECRET_KEY", KEY)
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", NEW)
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(tachyon_stripe, name="stripe")
    pm.check_pending()
    factories = {}
    pm.hook.register_onramp_providers(register=lambda name, factory: factories.__setitem__(name, factory))
    provider = factories["stripe"]({"api_base": "http://127.0.0.1:9"})
    assert isinstance(provider, StripeOnrampProvider)
    with pytest.raises(ConfigError):
        factories["stripe"]({"bogus": 1})


# ---- API calls through stripe-python ----

async def test_full_flow_create_checkout_three_verified_webhooks(nursery):
    with trio.fail_after(30):
        emu, receiver = await start(nursery, secrets=(NEW,))
        provider = provider_for(emu.base_url)
        try:
            request = SessionRequest(destination_address=ETH, network="base", currency="usdc", amount="12.50",
                                     wallet_tag="wal_abc", customer_ip="198.51.100.4")
            info = await provider.create_session(request)
            assert info.status == "initialized" and info.url == emu.get_session(info.id)["redirect_url"]
            assert info.client_secret.startswith(info.id) and info.wallet_tag == "wal_abc"
            assert (info.network, info.currency, info.amount) == ("base", "usdc", "12.50")
            sent = emu.requests[-1]
            assert sent["idempotency_key"]
            assert sent["params"] == {
                "wallet_addresses": {"base_network": ETH}, "destination_currency": "usdc",
                "destination_network": "base", "destination_currencies": ["usdc"], "destination_networks": ["base"],
                "destination_amount": "12.50", "lock_wallet_address": "true",
                "metadata": {"tachyon_wallet": "wal_abc"}, "customer_ip_address": "198.51.100.4"}
            async with httpx.AsyncClient() as browser:
                page = await browser.get(info.url)
                assert 'name="action" value="pay"' in page.text
                paid = await browser.post(info.url, data={"action": "pay", "destination_amount": "12.50"})
                assert paid.status_code == 200
            await receiver.wait_for(3)
            events = [provider.verify_webhook(body, headers) for body, headers in receiver.requests]
            assert [e.session_status for e in events] == ["requires_payment", "fulfillment_processing",
                                                          "fulfillment_complete"]
            assert {e.session_id for e in events} == {info.id} and {e.wallet_tag for e in events} == {"wal_abc"}
            assert all(e.type == "crypto.onramp_session_updated" and e.event_id.startswith("evt_") for e in events)
            final = await provider.retrieve_session(info.id)
            assert final.status == "fulfillment_complete" and final.transaction_id.startswith("0x")
            assert final.amount == "12.50" and final.raw["transaction_details"]["wallet_address"] == ETH
        finally:
            await provider.aclose()


async def test_stripe_errors_become_onramp_errors_without_the_key(nursery):
    with trio.fail_after(30):
        emu, _ = await start(nursery)
        provider = provider_for(emu.base_url, max_network_retries=0)
        try:
            with pytest.raises(OnrampError) as info:
                await provider.create_session(SessionRequest(ETH, "bitcoin", "usdc", "1", "wal_x"))
            assert info.value.data["code"] == "crypto_onramp_invalid_destination_currency_and_network_pair"
            assert "isn't supported" in info.value.message and info.value.data["http_status"] == 400
            with pytest.raises(OnrampError) as info:
                await provider.create_session(SessionRequest("0xnope", "ethereum", "usdc", "1", "wal_x"))
            assert info.value.data["code"] == "crypto_onramp_wallet_address_invalid"
            emu.inject_errors(500, count=1)
            with pytest.raises(OnrampError) as info:
                await provider.list_sessions(0)
            assert info.value.data["http_status"] == 500 and info.value.data["type"] == "api_error"
            emu.inject_errors(429, count=1)
            with pytest.raises(OnrampError) as info:
                await provider.retrieve_session("cos_whatever")
            assert info.value.data["code"] == "rate_limit"
            with pytest.raises(OnrampError) as info:
                await provider.retrieve_session("cos_missing")
            assert info.value.data["code"] == "resource_missing"
            with pytest.raises(OnrampError):
                await provider.retrieve_session("../v1/other")
        finally:
            await provider.aclose()
        locked = await start(nursery, secret_keys=("sk_test_only_this_one_9999",))
        wrong = provider_for(locked[0].base_url)
        try:
            with pytest.raises(OnrampError) as info:
                await wrong.list_sessions(0)
            assert info.value.data["http_status"] == 401 and KEY not in info.value.message
            assert KEY[-4:] not in info.value.message
        finally:
            await wrong.aclose()


async def test_network_retry_rides_over_one_injected_500(nursery):
    with trio.fail_after(30):
        emu, _ = await start(nursery)
        provider = provider_for(emu.base_url, max_network_retries=1)
        try:
            emu.inject_errors(500, count=1)
            info = await provider.create_session(SessionRequest(ETH, "ethereum", "usdc", "3", "wal_r"))
            assert len(emu.store.sessions) == 1 and info.id in emu.store.sessions
            keys = [r["idempotency_key"] for r in emu.requests if r["method"] == "POST"]
            assert len(keys) == 1  # the 500 was answered before the request was recorded
        finally:
            await provider.aclose()


async def test_unreachable_api_is_an_onramp_error():
    with trio.fail_after(30):
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        await listener.aclose()
        provider = provider_for(f"http://127.0.0.1:{port}", max_network_retries=0)
        try:
            with pytest.raises(OnrampError, match="cannot reach Stripe"):
                await provider.list_sessions(0)
        finally:
            await provider.aclose()


async def test_list_sessions_pages_with_starting_after(nursery):
    with trio.fail_after(30):
        now = [1_700_000_000]
        emu, _ = await start(nursery, clock=lambda: now[0])
        old = emu.create_foreign_session()["id"]
        now[0] += 100
        ids = [emu.create_foreign_session()["id"] for _ in range(230)]
        provider = provider_for(emu.base_url)
        try:
            sessions = await provider.list_sessions(1_700_000_050)
        finally:
            await provider.aclose()
        assert [s.id for s in sessions] == ids[::-1] and old not in {s.id for s in sessions}
        assert all(s.wallet_tag is None for s in sessions)  # another app's sessions carry no tachyon tag
        pages = [r["params"] for r in emu.requests if r["method"] == "GET"]
        assert len(pages) == 3 and "starting_after" not in pages[0]
        assert pages[1]["starting_after"] == ids[::-1][99] and pages[2]["starting_after"] == ids[::-1][199]
        assert all(p["created"] == {"gte": "1700000050"} and p["limit"] == "100" for p in pages)


# ---- webhook verification ----

def event_body(name: str = "stripe_event_session_updated_complete.json", **changes) -> bytes:
    event = json.loads((DATA / name).read_text())
    event.update(changes)
    return json.dumps(event, indent=2).encode()


def test_verify_accepts_any_v1_from_any_secret_during_a_roll():
    provider = provider_for()
    body = event_body()
    for header in (sign(body, OLD), sign(body, NEW), sign(body, "whsec_unknown", NEW), sign(body, OLD, NEW)):
        event = provider.verify_webhook(body, {"Stripe-Signature": header})
        assert event.session_id == "cos_1QaBcDeFgHiJkLmNoPqRsTuV" and event.session_status == "fulfillment_complete"
        assert event.wallet_tag == "wal_3f9a1c2b" and event.raw["id"] == event.event_id
    lower = provider.verify_webhook(body, {"stripe-signature": sign(body, NEW)})
    assert lower.type == "crypto.onramp_session_updated"


@pytest.mark.parametrize("make_headers,reason", [
    (lambda body: {}, "no_signature"),
    (lambda body: {"Stripe-Signature": sign(body, "whsec_someone_else")}, "bad_signature"),
    (lambda body: {"Stripe-Signature": sign(body, NEW, scheme="v0")}, "bad_signature"),
    (lambda body: {"Stripe-Signature": sign(body + b" ", NEW)}, "bad_signature"),
    (lambda body: {"Stripe-Signature": "v1=abc"}, "bad_signature"),
    (lambda body: {"Stripe-Signature": sign(body, NEW, timestamp=int(time.time()) - 301)}, "stale"),
    (lambda body: {"Stripe-Signature": sign(body, NEW, timestamp=int(time.time()) + 301)}, "future"),
    # A validly signed 10-day-old event with a fresh t= appended: stripe-python checks the HMAC over the first
    # t=, so the age check must not read another one.
    (lambda body: {"Stripe-Signature": sign(body, NEW, timestamp=int(time.time()) - 864000) + f",t={int(time.time())}"},
     "bad_signature"),
])
def test_verify_rejects(make_headers, reason):
    provider = provider_for()
    body = event_body()
    with pytest.raises(WebhookRejected) as info:
        provider.verify_webhook(body, make_headers(body))
    assert info.value.reason == reason and info.value.status == 400 and info.value.message
    assert NEW not in info.value.message and OLD not in info.value.message


def test_verify_tolerance_is_configurable_and_body_must_be_an_event():
    provider = provider_for(tolerance_s=600)
    body = event_body()
    assert provider.verify_webhook(body, {"Stripe-Signature": sign(body, NEW, timestamp=int(time.time()) - 500)})
    for junk in (b"not json", b"[1, 2]", b'{"type": "x"}'):
        with pytest.raises(WebhookRejected) as info:
            provider.verify_webhook(junk, {"Stripe-Signature": sign(junk, NEW)})
        assert info.value.reason == "bad_json"


def test_event_types_and_what_carries_a_session():
    provider = provider_for()
    dotted = event_body(type="crypto.onramp_session.updated")
    assert provider.verify_webhook(dotted, {"Stripe-Signature": sign(dotted, NEW)}).session_id.startswith("cos_")
    other = event_body(type="payment_intent.succeeded")
    event = provider.verify_webhook(other, {"Stripe-Signature": sign(other, NEW)})
    assert event.session_id is None and event.type == "payment_intent.succeeded"
    checkout = event_body(type="checkout.session.completed",
                          data={"object": {"id": "cs_test_123", "object": "checkout.session", "status": "complete"}})
    event = provider.verify_webhook(checkout, {"Stripe-Signature": sign(checkout, NEW)})
    assert event.session_id is None and event.type == "checkout.session.completed"
    early = event_body("stripe_event_session_updated_requires_payment.json")
    event = provider.verify_webhook(early, {"Stripe-Signature": sign(early, OLD)})
    assert event.session_status == "requires_payment"
