"""Reload without a restart: SIGHUP and daemon.reload on a real tachyond, secrets rotated with webhooks flowing."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import httpx
import pytest
import tomli_w
import trio
from conftest import base_document, run_ctl
from test_onramp import API_KEY, WHSEC_A, WHSEC_B, onramp_env

from tachyon_ctl.client import RpcError
from tachyond.config import diff, flatten, from_mapping, is_dynamic, restart_only

pytestmark = pytest.mark.slow


async def _pay_and_settle(env, amount: str) -> tuple[str, list]:
    """Create and pay a session; wait until the emulator has delivered (or given up on) its webhooks."""
    before = len(env.emu.delivery_attempts)
    session = await env.create(amount)
    await env.pay_in_page(session["url"])
    await env.emu.wait_webhooks_idle()
    return session["id"], env.emu.delivery_attempts[before:]


async def _reload(env) -> list[str]:
    return (await env.call("daemon.reload"))["changed"]


async def test_webhook_secret_rotation_a_then_ab_then_b_with_no_restart(nursery, sockdir):
    """A -> A,B -> reload -> B-signed and A-signed events both accepted -> B -> reload -> A refused.
    Same process throughout, wallet unlocked throughout."""
    with trio.fail_after(90):
        async with onramp_env(nursery, sockdir, secrets=(WHSEC_A,)) as env:
            pid = env.daemon.proc.pid
            sid, attempts = await _pay_and_settle(env, "10")
            assert attempts and all(a.status == 200 for a in attempts)

            (sockdir / "whsec").write_text(f"{WHSEC_A},{WHSEC_B}")
            assert await _reload(env) == ["onramp.stripe.webhook_secret"]
            for secret in (WHSEC_B, WHSEC_A):  # both listed: events signed with either are accepted
                env.emu.webhooks.secrets = (secret,)
                _, attempts = await _pay_and_settle(env, "11")
                assert attempts and all(a.status == 200 for a in attempts), attempts
            assert await env.metric("tachyon_webhook_events_rejected_total", provider="stripe",
                                    reason="bad_signature") == 0
            assert len(await env.wait_pending(3)) == 3

            (sockdir / "whsec").write_text(WHSEC_B)
            os.kill(pid, signal.SIGHUP)  # systemctl reload: ExecReload=/bin/kill -HUP $MAINPID
            # SIGHUP answers nothing: wait until daemon.config shows the reload.
            while (await env.call("daemon.config"))["reloads"] < 2:
                await trio.sleep(0.05)
            env.emu.webhooks.secrets = (WHSEC_A,)
            env.emu.webhooks.max_attempts = 2
            rejected_sid, attempts = await _pay_and_settle(env, "12")
            assert attempts and all(a.status == 400 for a in attempts), attempts
            assert await env.metric("tachyon_webhook_events_rejected_total", provider="stripe",
                                    reason="bad_signature") == len(attempts)
            env.emu.webhooks.secrets = (WHSEC_B,)
            _, attempts = await _pay_and_settle(env, "13")
            assert attempts and all(a.status == 200 for a in attempts)
            pending = await env.wait_pending(4)
            assert rejected_sid not in {p["session_id"] for p in pending}

            info = await env.call("daemon.info")
            assert env.daemon.proc.pid == pid and env.daemon.proc.poll() is None
            assert info["wallet"] == "unlocked"
            secret_view = (await env.call("daemon.config"))["keys"]["onramp.stripe.webhook_secret"]
            assert secret_view == {"value": "<set>", "from": "file"}
            assert WHSEC_A not in env.daemon.stderr() and WHSEC_B not in env.daemon.stderr()


async def test_stripe_api_key_rotates_from_a_file_without_a_restart(nursery, sockdir):
    new_key = "sk_test_rotated_9876543210"
    with trio.fail_after(60):
        async with onramp_env(nursery, sockdir) as env:
            env.emu.config = dataclasses.replace(env.emu.config, secret_keys=(API_KEY, new_key))
            (sockdir / "sk").write_text(new_key)
            assert await _reload(env) == ["onramp.stripe.secret_key"]
            # Stripe revokes the old key: calls still work, with the new one.
            env.emu.config = dataclasses.replace(env.emu.config, secret_keys=(new_key,))
            session = await env.create("5")
            assert session["status"] == "initialized"
            assert (await env.call("daemon.info"))["wallet"] == "unlocked"
            # An unreadable secret refuses the reload by key; the running key goes on working.
            (sockdir / "sk").unlink()
            err = await env.error("daemon.reload")
            assert err.code == -32060 and err.message.startswith("onramp.stripe.secret_key_file: cannot read")
            assert "nothing applied" in err.message
            assert (await env.create("6"))["status"] == "initialized"


async def test_reconciler_settings_apply_on_reload(nursery, sockdir):
    """reconcile_interval_s 3600 -> 0.5 by reload: the reconciler backfills a session no webhook brought."""
    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir, stripe={"reconcile_interval_s": 3600}) as env:
            env.emu.stop_webhooks()
            session = await env.create("7")
            env.emu.complete_session(session["id"])
            doc = env.daemon.doc
            doc["onramp"]["stripe"]["reconcile_interval_s"] = 0.5
            _write(sockdir, doc)
            assert await _reload(env) == ["onramp.stripe.reconcile_interval_s"]
            [topup] = await env.wait_pending()  # the timer, restarted with 0.5 s, found it
            assert topup["session_id"] == session["id"]
            assert not env.emu.delivery_attempts


def _write(dir_, doc) -> None:
    (dir_ / "tachyond.toml").write_text(tomli_w.dumps(doc))


async def test_reload_refuses_a_broken_file_and_a_socket_change_and_keeps_serving(daemon_factory, sockdir):
    doc = base_document(sockdir)
    d = daemon_factory(doc)
    await trio.to_thread.run_sync(d.start)
    call = lambda m, p=None: trio.to_thread.run_sync(d.call, m, p)  # noqa: E731
    with trio.fail_after(30):
        assert await call("daemon.reload") == {"changed": []}

        (sockdir / "tachyond.toml").write_text("[daemon\nsocket = 'x'\n")
        with pytest.raises(RpcError) as info:
            await call("daemon.reload")
        assert info.value.code == -32060 and info.value.message.startswith("config: ")
        assert "not valid TOML" in info.value.message and "nothing applied" in info.value.message
        # SIGHUP answers no one: the refusal is logged with its key and shown by daemon.config.
        d.signal(signal.SIGHUP)
        while (last := (await call("daemon.config"))["last_reload"])["by"] != "SIGHUP":
            await trio.sleep(0.05)
        assert last["ok"] is False and last["error"].startswith("config: ") and "not valid TOML" in last["error"]
        assert "reload (SIGHUP) refused, the running configuration is kept: config: " in d.stderr()

        moved = dict(doc, daemon={**doc["daemon"], "socket": str(sockdir / "other.sock"), "log_level": "warning"})
        _write(sockdir, moved)
        with pytest.raises(RpcError) as info:
            await call("daemon.reload")
        assert info.value.code == -32060 and info.value.message.startswith("daemon.socket: ")
        assert "restart" in info.value.message
        # Nothing applied: not even the log level that changed alongside the socket.
        effective = (await call("daemon.config"))["keys"]
        assert effective["daemon.log_level"] == {"value": "debug", "from": "file"}
        assert effective["daemon.socket"]["value"] == doc["daemon"]["socket"]
        assert not (sockdir / "other.sock").exists()

        bad_value = dict(doc, http={**doc["http"], "rate_limit_per_s": 0})
        _write(sockdir, bad_value)
        with pytest.raises(RpcError) as info:
            await call("daemon.reload")
        assert info.value.message.startswith("http.rate_limit_per_s: must be at least 1")

        # The same file with only dynamic keys changed: applied.
        _write(sockdir, dict(doc, daemon={**doc["daemon"], "log_level": "warning"},
                             http={**doc["http"], "allow_ips": ["10.0.0.0/8"], "max_body_bytes": 4096}))
        r = run_ctl("--json", "reload", socket_path=d.socket)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {"changed": ["daemon.log_level", "http.allow_ips", "http.max_body_bytes"]}
        # allow_ips applies to the next request: this test's 127.0.0.1 is now outside it.
        base = (await call("daemon.info"))["http"][0]
        async with httpx.AsyncClient() as client:
            r2 = await client.post(
                base + "/webhook/stripe", content=b"{}", headers={"content-type": "application/json"}
            )
        assert r2.status_code == 403 and "http.allow_ips" in r2.text
        assert (await call("daemon.info"))["wallet"] == "absent"  # same daemon, still serving
        r = run_ctl("reload", socket_path=d.socket)  # nothing changed since
        assert r.returncode == 0 and json.loads(r.stdout) == {"changed": []}
        assert (await call("daemon.config"))["keys"]["daemon.log_level"] == {"value": "warning", "from": "file"}
        # The log format applies to the next line: the reload's own report is JSON.
        _write(sockdir, dict(doc, daemon={**doc["daemon"], "log_format": "json"},
                             http={**doc["http"], "allow_ips": ["10.0.0.0/8"], "max_body_bytes": 4096}))
        assert await call("daemon.reload") == {"changed": ["daemon.log_format", "daemon.log_level"]}
        last = json.loads(d.stderr().strip().splitlines()[-1])
        assert last["logger"] == "tachyond.reload" and "daemon.log_format" in last["msg"]
        # trusted_proxies applies to the next request too: 127.0.0.1 becomes a proxy, and the forwarded
        # client inside allow_ips gets through, where the same request was refused before the reload.
        forwarded = {"content-type": "application/json", "X-Forwarded-For": "10.1.2.3"}
        async with httpx.AsyncClient() as client:
            r3 = await client.post(base + "/webhook/stripe", content=b"{}", headers=forwarded)
        assert r3.status_code == 403
        _write(sockdir, dict(doc, daemon={**doc["daemon"], "log_format": "json"},
                             http={**doc["http"], "allow_ips": ["10.0.0.0/8"], "max_body_bytes": 4096,
                                   "trusted_proxies": ["127.0.0.1/32"]}))
        assert await call("daemon.reload") == {"changed": ["http.trusted_proxies"]}
        async with httpx.AsyncClient() as client:
            r4 = await client.post(base + "/webhook/stripe", content=b"{}", headers=forwarded)
        assert r4.status_code != 403, r4.text


async def test_adding_or_removing_a_provider_table_of_secret_references_only_is_refused(daemon_factory, sockdir):
    """Every key of a minimal [onramp.stripe] (its two secret references) may change live, but the table itself
    may not come or go: refused by name, by RPC and by SIGHUP, and the daemon keeps serving (was: an added
    table was applied, a provider without its reconciler; a removed one was refused as a KeyError)."""
    (sockdir / "whsec").write_text(WHSEC_A)
    with_stripe = base_document(sockdir, tokens=[{"symbol": "USDC", "decimals": 6}], onramp={"stripe": {
        "secret_key_env": "RELOAD_TEST_SK", "webhook_secret_file": str(sockdir / "whsec")}})
    without = base_document(sockdir, tokens=[{"symbol": "USDC", "decimals": 6}])
    d = daemon_factory(with_stripe, env={"RELOAD_TEST_SK": API_KEY})
    await trio.to_thread.run_sync(d.start)
    call = lambda m, p=None: trio.to_thread.run_sync(d.call, m, p)  # noqa: E731
    with trio.fail_after(30):
        _write(sockdir, without)
        with pytest.raises(RpcError) as info:
            await call("daemon.reload")
        assert info.value.code == -32060 and info.value.message.startswith("onramp.stripe: "), info.value.message
        assert "restart" in info.value.message
        d.signal(signal.SIGHUP)
        while (last := (await call("daemon.config"))["last_reload"])["by"] != "SIGHUP":
            await trio.sleep(0.05)
        assert last["ok"] is False and last["error"].startswith("onramp.stripe: ")
        info_now = await call("daemon.info")
        assert d.proc.poll() is None and info_now["onramp_providers"] == ["stripe"]
        _write(sockdir, with_stripe)
        assert await call("daemon.reload") == {"changed": []}
    assert d.stop() == 0
    (sockdir / "rpc.sock").unlink(missing_ok=True)
    _write(sockdir, without)
    d2 = daemon_factory(without, env={"RELOAD_TEST_SK": API_KEY})
    await trio.to_thread.run_sync(d2.start)
    with trio.fail_after(30):
        _write(sockdir, with_stripe)
        with pytest.raises(RpcError) as info:
            await trio.to_thread.run_sync(d2.call, "daemon.reload", None)
        assert info.value.code == -32060 and info.value.message.startswith("onramp.stripe: ")
        assert (await trio.to_thread.run_sync(d2.call, "daemon.info", None))["onramp_providers"] == []
    assert d2.stop() == 0


async def test_min_password_length_applies_on_reload(daemon_factory, sockdir):
    doc = base_document(sockdir)
    d = daemon_factory(doc)
    await trio.to_thread.run_sync(d.start)
    call = lambda m, p=None: trio.to_thread.run_sync(d.call, m, p)  # noqa: E731
    with trio.fail_after(30):
        _write(sockdir, dict(doc, wallet={"min_password_length": 20}))
        assert await call("daemon.reload") == {"changed": ["wallet.min_password_length"]}
        with pytest.raises(RpcError) as info:
            await call("wallet.create", {"password": "twelve chars"})
        assert info.value.code == -32602 and "at least 20 characters" in info.value.message
        assert (await call("wallet.create", {"password": "twenty characters ok"}))["created"] is True
    assert d.stop() == 0


async def test_daemon_config_shows_where_each_key_came_from_and_hides_secrets(daemon_factory, sockdir):
    (sockdir / "whsec").write_text(WHSEC_A)
    doc = base_document(sockdir, tokens=[{"symbol": "USDC", "decimals": 6}], onramp={"stripe": {
        "secret_key_env": "RELOAD_TEST_SK", "webhook_secret_file": str(sockdir / "whsec")}})
    d = daemon_factory(doc, env={"RELOAD_TEST_SK": API_KEY, "TACHYON_DISABLED_PLUGINS": "addresses"})
    await trio.to_thread.run_sync(d.start)
    with trio.fail_after(30):
        r = run_ctl("--json", "config", socket_path=d.socket)
        assert r.returncode == 0, r.stderr
        cfg = json.loads(r.stdout)
        keys = cfg["keys"]
        assert cfg["source"] == str(sockdir / "tachyond.toml")
        assert keys["daemon.socket"] == {"value": doc["daemon"]["socket"], "from": "file"}
        assert keys["daemon.log_format"] == {"value": "text", "from": "default"}
        assert keys["http.max_body_bytes"] == {"value": 65536, "from": "default"}
        assert keys["onramp.stripe.secret_key_env"] == {"value": "RELOAD_TEST_SK", "from": "file"}
        assert keys["onramp.stripe.secret_key"] == {"value": "<set>", "from": "env"}
        assert keys["onramp.stripe.webhook_secret"] == {"value": "<set>", "from": "file"}
        assert keys["plugins.disabled"] == {"value": ["addresses"], "from": "env"}
        assert API_KEY not in r.stdout and WHSEC_A not in r.stdout
        os.environ.pop("RELOAD_TEST_SK", None)


def test_diff_names_changed_keys_and_restart_only_names_the_fixed_ones(tmp_path):
    secret = tmp_path / "whsec"
    secret.write_text(WHSEC_A)
    base = {"daemon": {"socket": "/tmp/a.sock"}, "tokens": [{"symbol": "USDC", "decimals": 6}],
            "onramp": {"stripe": {"webhook_secret_file": str(secret), "reconcile_interval_s": 60, "api_base": "x"}}}
    a = flatten(from_mapping(base))  # a snapshot: secrets as read now
    assert diff(a, from_mapping(base)) == []
    secret.write_text(WHSEC_B)  # the same file, another content: a change of the secret, not of the reference
    b = from_mapping(base)
    assert diff(a, b) == ["onramp.stripe.webhook_secret"] and restart_only(diff(a, b)) == []
    c = from_mapping({**base, "daemon": {"socket": "/tmp/b.sock", "log_level": "debug"},
                      "tokens": [{"symbol": "USDC", "decimals": 8}],
                      "onramp": {"stripe": {**base["onramp"]["stripe"], "api_base": "y", "reconcile_interval_s": 5}}})
    changed = diff(b, c)
    assert changed == ["daemon.log_level", "daemon.socket", "onramp.stripe.api_base",
                       "onramp.stripe.reconcile_interval_s", "tokens[0]"]
    assert restart_only(changed) == ["daemon.socket", "onramp.stripe.api_base", "tokens[0]"]
    for key in ("daemon.data_dir", "markets[0]", "http.listen", "engines.http.url", "plugins.disabled",
                "onramp.stripe.tolerance_s"):
        assert not is_dynamic(key), key
    for key in ("http.allow_ips", "http.trusted_proxies", "engines.http.token_file", "engines.http.token",
                "onramp.stripe.secret_key_file", "onramp.stripe.secret_key", "onramp.stripe.webhook_secret_env"):
        assert is_dynamic(key), key


def test_engine_token_rotates_from_a_file_without_a_restart(daemon_factory, sockdir, tmp_path):
    from test_http_engine import ServerProc, server_document
    from test_http_engine_daemon import PASSWORD as ENGINE_PW
    from test_http_engine_daemon import daemon_document

    token_a, token_b = "engine-token-aaaa-1111", "engine-token-bbbb-2222"
    server = ServerProc(tmp_path, server_document(tmp_path / "engine-data"), token=f"{token_a},{token_b}").start()
    try:
        doc = daemon_document(sockdir, server.url)
        (sockdir / "engine-token").write_text(token_a)
        doc["engines"]["http"] = {"url": server.url, "token_file": str(sockdir / "engine-token"), "timeout_s": 5}
        d = daemon_factory(doc).start()
        pid = d.proc.pid
        d.call("wallet.create", {"password": ENGINE_PW})
        d.call("ledger.deposit", {"token": "ZEC", "amount": "5", "reference": "z"})

        def ask(price: str) -> dict:
            return d.call("dex.place_order", {"market": "ZEC/USDC", "side": "sell", "type": "limit",
                                              "price": price, "qty": "1"})

        assert ask("40.00")["status"] == "open"
        (sockdir / "engine-token").write_text(token_b)
        assert d.call("daemon.reload") == {"changed": ["engines.http.token"]}
        assert ask("41.00")["status"] == "open"
        # The reloaded token is the one sent: one the server does not know is refused at the next request
        # (/healthz asks the engine for its last sequence).
        healthz = d.call("daemon.info")["http"][0] + "/healthz"
        (sockdir / "engine-token").write_text("engine-token-unknown-3333")
        assert d.call("daemon.reload") == {"changed": ["engines.http.token"]}
        r = httpx.get(healthz, timeout=10)
        assert r.status_code == 503 and "engine:http" in r.json()["failing"], r.text
        (sockdir / "engine-token").write_text(token_b)
        d.call("daemon.reload")
        assert httpx.get(healthz, timeout=10).status_code == 200
        assert ask("43.00")["status"] == "open"
        assert d.proc.pid == pid and d.call("daemon.info")["wallet"] == "unlocked"
        assert token_a not in d.stderr() and token_b not in d.stderr()
    finally:
        server.kill()
