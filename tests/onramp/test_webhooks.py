"""POST /webhook/stripe under abuse: forged, stale, replayed, oversized and flooding requests against a real tachyond."""  # noqa: E501 (shown verbatim)

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time

import httpx
import trio
from test_onramp import WHSEC_A, WHSEC_B, Env, onramp_env


def sign(body: bytes, *keys: str, t: int | None = None, scheme: str = "v1") -> str:
    t = int(time.time()) if t is None else t
    sigs = [f"{scheme}={hmac.new(k.encode(), f'{t}.'.encode() + body, hashlib.sha256).hexdigest()}" for k in keys]
    return ",".join([f"t={t}", *sigs])


def event_body(session: dict, event_id: str | None = None, type_: str = "crypto.onramp_session_updated") -> bytes:
    event = {"id": event_id or "evt_" + secrets.token_hex(12), "object": "event", "type": type_,
             "created": int(time.time()), "data": {"object": session}, "livemode": False}
    return json.dumps(event).encode()


async def post(env: Env, body: bytes, signature: str | None, content_type: str = "application/json") -> httpx.Response:
    headers = {"Content-Type": content_type}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    async with httpx.AsyncClient() as client:
        return await client.post(env.http + "/webhook/stripe", content=body, headers=headers, timeout=10)


async def completed_session(env: Env) -> dict:
    """A session of this wallet, complete at the emulator, whose webhooks the emulator holds back."""
    env.emu.stop_webhooks()
    made = await env.create("2")
    return env.emu.complete_session(made["id"])


async def post_marker_and_wait(env: Env) -> dict:
    """Send a valid webhook for a new completed session and wait until it is pending: webhooks sent before it
    have been handled by then. Asserts that it is the only pending topup, and returns it."""
    marker = await completed_session(env)
    body = event_body(marker)
    assert (await post(env, body, sign(body, WHSEC_A))).json() == {"received": True}
    pending = await env.wait_pending()
    assert [p["session_id"] for p in pending] == [marker["id"]], pending
    return pending[0]


async def assert_nothing_credited(env: Env) -> None:
    balances = await env.call("ledger.balances")
    assert all(b["available_minor"] == 0 for b in balances)
    assert (await env.call("ledger.verify"))["ok"]


async def test_forged_stale_malformed_and_oversized_requests_are_refused(nursery, sockdir):
    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir, secrets=(WHSEC_A, WHSEC_B)) as env:
            target = await completed_session(env)
            body = event_body(target)
            old = int(time.time()) - 301
            refused = [
                (await post(env, body, None), 400, "no_signature"),
                (await post(env, body, sign(body, "whsec_not_the_secret")), 400, "bad_signature"),
                (await post(env, body, sign(body, WHSEC_A, scheme="v0")), 400, "bad_signature"),
                (await post(env, body, sign(body, WHSEC_A, t=old)), 400, "stale"),
                (await post(env, body, sign(body, WHSEC_A, t=int(time.time()) + 400)), 400, "future"),
                (await post(env, b"{not json", sign(b"{not json", WHSEC_A)), 400, "bad_json"),
                (await post(env, body, sign(body, WHSEC_A), content_type="text/plain"), 415, "content_type"),
            ]
            for response, status, reason in refused:
                assert response.status_code == status, (reason, response.text)
                assert "error" in response.json()
                assert await env.metric("tachyon_webhook_events_rejected_total", provider="stripe",
                                        reason=reason) >= 1
            big = b'{"pad": "' + b"x" * (2 << 20) + b'"}'
            assert (await post(env, big, sign(big, WHSEC_A))).status_code == 413
            # A body tampered after signing fails, whatever secret signed it.
            signature = sign(body, WHSEC_A)
            assert (await post(env, body[:-1] + b', "extra": 1}', signature)).status_code == 400
            assert await env.metric("tachyon_webhook_events_enqueued_total", provider="stripe") == 0
            # Not a sleep: a valid webhook sent after the refused ones becomes pending; by then any of them would
            # have too. Only the marker's session is pending.
            await post_marker_and_wait(env)
            assert await env.metric("tachyon_webhook_events_enqueued_total", provider="stripe") == 1
            await assert_nothing_credited(env)
            assert (await env.call("daemon.info"))["wallet"] == "unlocked"


async def test_replays_and_duplicates_have_no_second_effect_and_either_secret_verifies(nursery, sockdir):
    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir, secrets=(WHSEC_A, WHSEC_B)) as env:
            target = await completed_session(env)
            body = event_body(target)
            first = await post(env, body, sign(body, WHSEC_A))
            assert first.status_code == 200 and first.json() == {"received": True}
            replay = await post(env, body, sign(body, WHSEC_B))  # Stripe's retry: a new signature, same event
            assert replay.status_code == 200 and replay.json() == {"duplicate": True}
            other_id = event_body(target)  # the same session and status under another event id
            assert (await post(env, other_id, sign(other_id, WHSEC_B))).json() == {"duplicate": True}
            dotted = event_body(target, type_="crypto.onramp_session.updated")  # the other spelling is a session event
            assert (await post(env, dotted, sign(dotted, WHSEC_A))).json() == {"duplicate": True}
            rolled = sign(body, "whsec_retired_secret", WHSEC_B)  # one v1 per secret during a roll
            assert (await post(env, body, rolled)).json() == {"duplicate": True}
            ping = event_body(target, type_="customer.created")
            answer = await post(env, ping, sign(ping, WHSEC_A))
            assert answer.status_code == 200 and "ignored" in answer.json()
            [topup] = await env.wait_pending()
            assert topup["session_id"] == target["id"]
            assert await env.metric("tachyon_webhook_events_duplicate_total", provider="stripe") == 4
            assert await env.metric("tachyon_webhook_events_enqueued_total", provider="stripe") == 1
            await env.call("onramp.claim", {"session_id": target["id"]})
            again = await post(env, body, sign(body, WHSEC_A))
            assert again.json() == {"duplicate": True}
            later = event_body(target)
            assert (await post(env, later, sign(later, WHSEC_A))).json() == {"duplicate": True}
            await post_marker_and_wait(env)   # the claimed session did not come back with the duplicates
            balances = await env.call("ledger.balances", {"account": "default"})
            assert [b["available_minor"] for b in balances if b["token"] == "USDC"] == [2_000_000]


async def test_a_flood_is_rate_limited_and_the_daemon_keeps_serving(nursery, sockdir):
    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir, http={"rate_limit_per_s": 5}) as env:
            target = await completed_session(env)
            statuses: list[int] = []

            async def forged(client: httpx.AsyncClient) -> None:
                body = event_body(target)
                # Connection: close, because http.py answers 429 without reading the body, and a keep-alive
                # connection then stalls on its next request (reported to the lead).
                r = await client.post(env.http + "/webhook/stripe", content=body, timeout=20,
                                      headers={"Content-Type": "application/json", "Connection": "close",
                                               "Stripe-Signature": sign(body, "whsec_x")})
                statuses.append(r.status_code)

            started = trio.current_time()
            async with httpx.AsyncClient(limits=httpx.Limits(max_connections=20)) as client:
                async with trio.open_nursery() as flood:
                    for _ in range(120):
                        flood.start_soon(forged, client)
            elapsed_s = trio.current_time() - started
            # A bucket of 2 x 5 tokens refilled at 5/s: whatever the machine's load stretched the flood to,
            # no more got past the limiter than the bucket allows in that time.
            assert set(statuses) <= {400, 429} and statuses.count(429) >= 1
            assert statuses.count(400) <= 10 + 5 * elapsed_s + 1
            assert await env.metric("tachyon_webhook_events_rejected_total", provider="stripe",
                                    reason="rate_limited") == statuses.count(429)
            assert (await env.call("daemon.info"))["wallet"] == "unlocked"
            await trio.sleep(1.0)  # the bucket refills at 5/s
            body = event_body(target)
            assert (await post(env, body, sign(body, WHSEC_A))).json() == {"received": True}
            [topup] = await env.wait_pending()
            assert topup["session_id"] == target["id"]
            async with httpx.AsyncClient() as client:
                assert (await client.get(env.http + "/healthz", timeout=10)).status_code == 200


async def test_without_a_wallet_a_verified_event_is_200_and_foreign(nursery, sockdir):
    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir, create_wallet=False) as env:
            session = {"id": "cos_" + secrets.token_hex(8), "object": "crypto.onramp_session",
                       "status": "fulfillment_complete", "metadata": {"tachyon_wallet": "tw_unknown"}}
            body = event_body(session)
            response = await post(env, body, sign(body, WHSEC_A))
            assert response.status_code == 200 and "ignored" in response.json()
            forged = await post(env, body, "t=1,v1=" + "0" * 64)
            assert forged.status_code == 400
            await env.call("wallet.create", {"password": "pw-for-this-test"})
            foreign = await post(env, body, sign(body, WHSEC_A))
            assert foreign.status_code == 200 and "ignored" in foreign.json()
            assert await env.call("onramp.pending") == []
