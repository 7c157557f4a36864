"""The onramp against what real Stripe does: livemode, where the crypto went, events ahead of the API, refusals,
quotes. A real tachyond, the real emulator (with its switches), real webhooks, the real tachyon-ctl."""

from __future__ import annotations

import json
import time
from typing import Any

import trio
from conftest import run_ctl
from test_onramp import ETH, Env, onramp_env

OTHER_ETH = "0x52908400098527886E0F7030069857D2E4169EE7"
LIVE_KEY = "sk_live_onramp_0123456789"


async def wait_parked(env: Env, session_id: str) -> dict:
    """Poll onramp.parked until it lists ``session_id`` (the worker decides in the background)."""
    while True:
        for row in await env.call("onramp.parked"):
            if row["session_id"] == session_id:
                return row
        await trio.sleep(0.05)


def ctl(env: Env, *args: str) -> Any:
    r = run_ctl("--json", *args, socket_path=str(env.daemon.socket))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


async def test_a_live_key_daemon_never_credits_a_sandbox_session(nursery, sockdir):
    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir, api_key=LIVE_KEY, emulator={"accept_live_keys": True}) as env:
            session = await env.create("10")
            assert env.emu.get_session(session["id"])["livemode"] is False
            env.emu.complete_session(session["id"])
            parked = await wait_parked(env, session["id"])
            assert parked["reason"].startswith("livemode mismatch: a test (sandbox) session under a live key")
            assert parked["status"] == "fulfillment_complete" and parked["account"] == "default"
            await env.emu.wait_webhooks_idle()
            # Neither the late webhooks nor a reconcile make it pending: the gate holds on every path.
            assert (await env.call("onramp.reconcile"))["enqueued"] == 1
            while env.daemon.stderr().count(f"onramp session {session['id']} still parked") < 1:
                await trio.sleep(0.05)
            assert await env.call("onramp.pending") == []
            assert f"onramp session {session['id']} parked: livemode mismatch" in env.daemon.stderr()


async def test_a_test_key_daemon_never_credits_a_live_session(nursery, sockdir):
    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir, emulator={"livemode": True}) as env:
            session = await env.create("10")
            env.emu.complete_session(session["id"])
            parked = await wait_parked(env, session["id"])
            assert parked["reason"] == "livemode mismatch: a live session under a test (sandbox) key"
            assert await env.call("onramp.pending") == []


async def test_the_emulator_refuses_live_keys_unless_switched(nursery, sockdir):
    """By default the emulator is a sandbox: a live key is refused as Stripe refuses an unknown key."""
    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir, api_key=LIVE_KEY) as env:
            err = await env.error("onramp.create_session", {"destination_address": ETH, "amount": "1"})
            assert err.code == -32031 and "api_key_invalid" in err.message
            assert LIVE_KEY not in err.message and LIVE_KEY not in env.daemon.stderr()


async def test_a_session_completed_to_another_address_or_network_is_parked(nursery, sockdir):
    with trio.fail_after(60):
        async with onramp_env(nursery, sockdir) as env:
            env.emu.stop_webhooks()   # the API's final state is in place before the daemon asks
            elsewhere = await env.create("5")
            details = env.emu.store.sessions[elsewhere["id"]]["transaction_details"]
            details["lock_wallet_address"] = False   # the buyer may pick another wallet when not locked
            env.emu.complete_session(elsewhere["id"], wallet_address=OTHER_ETH)
            other_net = await env.create("6")
            env.emu.complete_session(other_net["id"])
            env.emu.store.sessions[other_net["id"]]["transaction_details"]["destination_network"] = "polygon"
            fine = await env.create("7")
            env.emu.complete_session(fine["id"])
            env.emu.resume_webhooks()
            a = await wait_parked(env, elsewhere["id"])
            assert a["reason"] == f"delivered elsewhere: address {OTHER_ETH}, asked {ETH}"
            b = await wait_parked(env, other_net["id"])
            assert b["reason"] == "delivered elsewhere: network 'polygon', asked 'ethereum'"
            [topup] = await env.wait_pending()
            assert topup["session_id"] == fine["id"]
            # The operator sees each one and why: RPC, tachyon-ctl and the log.
            rows = await trio.to_thread.run_sync(ctl, env, "onramp", "parked")
            assert {r["session_id"]: r["reason"] for r in rows} == {elsewhere["id"]: a["reason"],
                                                                 other_net["id"]: b["reason"]}
            human = await trio.to_thread.run_sync(lambda: run_ctl("onramp", "parked",
                                                                  socket_path=str(env.daemon.socket)))
            assert human.returncode == 0 and elsewhere["id"] in human.stdout and "delivered elsewhere" in human.stdout
            stderr = env.daemon.stderr()
            assert f"onramp session {elsewhere['id']} parked: delivered elsewhere: address {OTHER_ETH}" in stderr
            assert f"onramp session {other_net['id']} parked: delivered elsewhere: network 'polygon'" in stderr
            await env.emu.wait_webhooks_idle()
            assert [p["session_id"] for p in await env.call("onramp.pending")] == [fine["id"]]


async def test_an_event_ahead_of_the_api_does_not_swallow_the_one_that_brings_the_truth(nursery, sockdir):
    """Body says complete, API says not yet; later the API says complete: pending by webhook, the API's amount."""
    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir) as env:
            session = await env.create("20")
            env.emu.set_session_status(session["id"], "requires_payment")
            env.emu.set_session_status(session["id"], "fulfillment_processing")
            await env.emu.wait_webhooks_idle()
            early = env.emu.emit_event(session["id"], status="fulfillment_complete",
                                       transaction_details={"destination_amount": "999.00"})
            await env.emu.wait_webhooks_idle()
            assert early["id"] in env.emu.webhooks.delivered
            # The worker asked the API, which still says fulfillment_processing: nothing to credit yet.
            line = (f"onramp session {session['id']} (event {early['id']}): stripe says fulfillment_processing, "
                    "nothing to credit yet")
            while line not in env.daemon.stderr():
                await trio.sleep(0.05)
            assert await env.call("onramp.pending") == []
            env.emu.set_session_status(session["id"], "fulfillment_complete")   # the API now says complete
            with trio.fail_after(5):
                [topup] = await env.wait_pending()
            assert topup["session_id"] == session["id"]
            assert topup["amount"] == "20.00" and topup["amount_minor"] == 20_000_000   # the API's, not the body's
            assert env.emu.get_session(session["id"])["transaction_details"]["destination_amount"] == "20.00"
            # By webhook: the reconciler (interval 3600 s here) never ran.
            assert not [r for r in env.emu.requests if r["method"] == "GET" and r["path"].endswith("sessions")]


async def test_stripe_refusals_reach_the_user_as_documented(nursery, sockdir):
    with trio.fail_after(60):
        async with onramp_env(nursery, sockdir) as env:
            base = {"destination_address": ETH, "amount": "1"}
            country = await env.error("onramp.create_session", {**base, "customer_ip_address": "203.0.113.9"})
            assert country.code == -32033
            assert country.message == ("Stripe: Transactions are not supported in this country. "
                                       "(crypto_onramp_unsupported_country)")
            customer = await env.error("onramp.create_session", {**base, "customer_ip_address": "192.0.2.1"})
            assert customer.code == -32033
            assert customer.message == ("Stripe: We are unable to support this customer. "
                                        "(crypto_onramp_unsupportable_customer)")
            assert env.emu.requests[-1]["params"]["customer_ip_address"] == "192.0.2.1"
            bad = await env.error("onramp.create_session", {**base, "customer_ip_address": "not-an-ip"})
            assert bad.code == -32602 and "customer_ip_address" in bad.message
            env.emu.refuse_sessions("crypto_onramp_disabled")
            disabled = await env.error("onramp.create_session", base)
            assert disabled.code == -32031
            assert disabled.message.startswith("Stripe refused (crypto_onramp_disabled): the onramp is switched "
                                               "off for this Stripe account")
            assert "Stripe said: Crypto onramp is disabled for this platform." in disabled.message
            env.emu.refuse_sessions("crypto_onramp_merchant_not_properly_setup")
            setup = await env.error("onramp.create_session", base)
            assert setup.code == -32031
            assert "fill in the business name and website URL in the Dashboard" in setup.message
            # The CLI: --customer-ip, exit 1 and Stripe's message on stderr.
            env.emu.refuse_sessions(None)
            r = await trio.to_thread.run_sync(lambda: run_ctl(
                "onramp", "create-session", "--destination", ETH, "--amount", "1000000", "--customer-ip",
                "203.0.113.77", socket_path=str(env.daemon.socket)))
            assert r.returncode == 1 and "Transactions are not supported in this country" in r.stderr
            made = await trio.to_thread.run_sync(ctl, env, "onramp", "create-session", "--destination", ETH,
                                                 "--amount", "1000000", "--customer-ip", "198.51.100.4")
            assert made["status"] == "initialized"
            assert env.emu.requests[-1]["params"]["customer_ip_address"] == "198.51.100.4"
            assert env.daemon.proc.poll() is None


async def test_quote_through_rpc_and_ctl(nursery, sockdir):
    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir) as env:
            quote = await trio.to_thread.run_sync(ctl, env, "onramp", "quote", "--currency", "usdc", "--network",
                                                  "base", "--amount", "100")
            assert quote == {"provider": "stripe", "network": "base", "currency": "usdc",
                             "destination_amount": "100.00", "source_amount": "100.00", "source_currency": "usd",
                             "source_total_amount": "101.51", "fees": {"network": "0.01", "transaction": "1.50"},
                             "fetched_at": quote["fetched_at"]}
            # Stripe's rate_fetched_at is a float: it arrives as the time of the rates, never dropped.
            assert isinstance(quote["fetched_at"], float) and abs(quote["fetched_at"] - time.time()) < 60
            [sent] = [r for r in env.emu.requests if r["path"] == "/v1/crypto/onramp/quotes"]
            assert sent["params"] == {"destination_amount": "100.00", "destination_currencies": ["usdc"],
                                      "destination_networks": ["base"]}
            fiat = await env.call("onramp.quote", {"amount": "50", "amount_is": "source", "network": "base"})
            assert (fiat["destination_amount"], fiat["source_amount"], fiat["fees"]["transaction"]) == (
                "50.000000", "50", "0.75")
            # --amount-is mirrors the RPC's amount_is (--fiat is its shorthand); the default is destination.
            for flags in (["--amount-is", "source"], ["--fiat"]):
                spent = await trio.to_thread.run_sync(ctl, env, "onramp", "quote", "--network", "base",
                                                      "--amount", "50", *flags)
                assert spent["source_amount"] == "50" and spent["destination_amount"] == "50.000000"
            received = await trio.to_thread.run_sync(ctl, env, "onramp", "quote", "--network", "base",
                                                     "--amount", "50", "--amount-is", "destination")
            assert received["destination_amount"] == "50.00" and received["source_total_amount"] == "50.76"
            both = await trio.to_thread.run_sync(lambda: run_ctl("onramp", "quote", "--amount", "1", "--fiat",
                                                                 "--amount-is", "destination",
                                                                 socket_path=str(env.daemon.socket)))
            assert both.returncode == 2 and "not allowed with" in both.stderr
            human = await trio.to_thread.run_sync(lambda: run_ctl(
                "onramp", "quote", "--network", "base", "--amount", "100", socket_path=str(env.daemon.socket)))
            assert human.returncode == 0 and "101.51" in human.stdout
            bad = await env.error("onramp.quote", {"amount": "-1"})
            assert bad.code == -32010
            odd = await env.error("onramp.quote", {"amount": "1", "network": "bitcoin", "currency": "usdc"})
            assert odd.code == -32031 and "crypto_onramp_invalid_destination_currency_and_network_pair" in odd.message


async def test_embedded_page_for_our_sessions_only_with_a_strict_csp(nursery, sockdir):
    """redirect_url null: create-session returns the daemon's page, which mounts the widget for our session only."""
    import httpx
    from test_onramp import PUBLISHABLE_KEY

    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir, embedded=True) as env:
            session = await env.create("12")
            assert env.emu.get_session(session["id"])["redirect_url"] is None
            assert session["url"] == f"{env.http}/onramp/{session['id']}" and session["url_kind"] == "embedded"
            assert set(session) >= {"id", "url", "client_secret", "status", "provider"}
            foreign = env.emu.create_foreign_session()
            async with httpx.AsyncClient() as http:
                page = await http.get(session["url"], timeout=10)
                assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
                csp = dict(part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";"))
                origin = env.emu.base_url
                assert csp["default-src"] == "'none'" and csp["frame-ancestors"] == "'none'"
                assert csp["script-src"].split()[1:] == [origin] and csp["script-src"].startswith("'nonce-")
                assert csp["connect-src"] == origin and csp["frame-src"] == origin
                assert page.headers["cache-control"] == "no-store"
                assert page.headers["referrer-policy"] == "no-referrer"
                assert f'src="{origin}/v3/"' in page.text and f'src="{origin}/crypto-onramp-outer.js"' in page.text
                assert session["client_secret"] in page.text and PUBLISHABLE_KEY in page.text
                assert '<dd id="status">initialized</dd>' in page.text
                # Any other id: 404, without asking Stripe about it (a foreign session Stripe knows included).
                before = len(env.emu.requests)
                for other in (foreign["id"], "cos_doesnotexist", "x" * 300, "cos_a%2Fb", "cos-dash"):
                    r = await http.get(f"{env.http}/onramp/{other}", timeout=10)
                    assert r.status_code == 404, other
                    assert foreign["client_secret"] not in r.text
                assert len(env.emu.requests) == before
                await env.call("wallet.lock")
                locked = await http.get(session["url"], timeout=10)
                assert locked.status_code == 503 and session["client_secret"] not in locked.text
            assert session["client_secret"] not in env.daemon.stderr()


async def test_without_a_publishable_key_the_daemon_says_it_has_no_page(nursery, sockdir):
    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir, emulator={"hosted_checkout": False}) as env:
            session = await env.create("3")
            assert session["url"] is None and session["url_kind"] == "none"
            assert "publishable_key" in env.daemon.stderr()


async def test_reconciler_lists_only_complete_sessions_through_every_page_of_72_hours(nursery, sockdir):
    import time

    with trio.fail_after(60):
        async with onramp_env(nursery, sockdir) as env:
            env.emu.stop_webhooks()
            tag = {"tachyon_wallet": env.wallet_id}
            params = {"destination_currency": "usdc", "destination_network": "ethereum", "destination_amount": "1",
                      "wallet_addresses": {"ethereum": ETH}, "metadata": tag}
            complete = []
            for _ in range(230):
                made = env.emu.create_foreign_session(params)
                env.emu.store.sessions[made["id"]]["status"] = "fulfillment_complete"
                complete.append(made["id"])
            for _ in range(5):   # tagged but unpaid: not listed at all
                env.emu.create_foreign_session(params)
            now = int(time.time())
            env.emu.store.sessions[complete[0]]["created"] = now - 70 * 3600   # resumed days later: in the window
            env.emu.store.sessions[complete[1]]["created"] = now - 73 * 3600   # outside the default 72 h
            assert await env.call("onramp.reconcile") == {"checked": 229, "enqueued": 229}
            pages = [r["params"] for r in env.emu.requests if r["method"] == "GET" and r["path"].endswith("sessions")]
            assert len(pages) == 3 and all(p["status"] == "fulfillment_complete" for p in pages)
            assert "starting_after" not in pages[0] and pages[1]["starting_after"] and pages[2]["starting_after"]
            assert abs(int(pages[0]["created"]["gte"]) - (now - 72 * 3600)) < 60
            assert (await env.call("onramp.reconcile", {"lookback_h": 74}))["checked"] == 230
