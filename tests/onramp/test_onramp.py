"""The onramp service end to end: a real tachyond process, the real Stripe emulator, real webhooks and claims."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import DaemonProc, base_document
from tachyon_stripe.emulator import EmulatorConfig, serve_emulator
from tachyon_stripe.emulator.app import StripeEmulator

from tachyon_ctl.client import RpcError

WHSEC_A = "whsec_onramp_test_secret_aaaa"
WHSEC_B = "whsec_onramp_test_secret_bbbb"
API_KEY = "sk_test_onramp_0123456789"
PUBLISHABLE_KEY = "pk_test_onramp_0123456789"
PASSWORD = "correct horse battery"
ETH = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
USDC = {"symbol": "USDC", "decimals": 6, "networks": ["ethereum", "solana", "polygon", "base"]}


@dataclass
class Env:
    """A running tachyond with an onramp provider pointed at an in-process emulator."""

    daemon: DaemonProc
    emu: StripeEmulator
    http: str
    wallet_id: str | None
    dir: Path

    async def call(self, method: str, params: Any = None) -> Any:
        return await trio.to_thread.run_sync(self.daemon.call, method, params)

    async def error(self, method: str, params: Any = None) -> RpcError:
        with pytest.raises(RpcError) as info:
            await self.call(method, params)
        return info.value

    async def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of /metrics (0 when absent)."""
        async with httpx.AsyncClient() as client:
            text = (await client.get(self.http + "/metrics", timeout=10)).text
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        prefix = f"{name}{{{want}}} " if labels else f"{name} "
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))

    async def wait_pending(self, count: int = 1) -> list[dict]:
        """Poll onramp.pending until it lists ``count`` topups (the worker confirms in the background)."""
        while True:
            pending = await self.call("onramp.pending")
            if len(pending) >= count:
                return pending
            await trio.sleep(0.05)

    async def create(self, amount: str = "25.5", **params: Any) -> dict:
        return await self.call("onramp.create_session", {"destination_address": ETH, "amount": amount, **params})

    async def pay_in_page(self, url: str) -> None:
        """Pay on the hosted checkout page as a browser's form POST would."""
        async with httpx.AsyncClient() as client:
            r = await client.post(url, data={"action": "pay"}, timeout=10)
            assert r.status_code == 200 and "Payment complete" in r.text, r.text


@asynccontextmanager
async def onramp_env(nursery: trio.Nursery, dir_: Path, *, secrets: tuple[str, ...] = (WHSEC_A,),
                     stripe: dict | None = None, create_wallet: bool = True, test_plugin: bool = False,
                     env: dict | None = None, http: dict | None = None, api_key: str = API_KEY,
                     emulator: dict | None = None, embedded: bool = False) -> AsyncIterator[Env]:
    """Start the emulator (in its own nursery) and a tachyond whose [onramp.stripe] points at it.

    ``embedded``: sessions carry no redirect_url and the daemon's page mounts the emulator's stand-in widget.
    """
    stripe = dict(stripe or {})
    emulator = dict(emulator or {})
    if embedded:
        (dir_ / "pk").write_text(PUBLISHABLE_KEY)
        emulator["hosted_checkout"] = False
        stripe["publishable_key_file"] = str(dir_ / "pk")
    (dir_ / "sk").write_text(api_key)
    (dir_ / "whsec").write_text(",".join(secrets))
    (dir_ / "pw").write_text(PASSWORD)
    async with trio.open_nursery() as emu_nursery:
        emu = await emu_nursery.start(serve_emulator, EmulatorConfig(
            webhook_secrets=secrets, webhook_backoff_s=0.2, webhook_max_backoff_s=1.0, **(emulator or {})))
        doc = base_document(dir_, tokens=[USDC], wallet={"password_file": str(dir_ / "pw")}, onramp={"stripe": {
            "secret_key_file": str(dir_ / "sk"), "webhook_secret_file": str(dir_ / "whsec"),
            "api_base": emu.base_url, "reconcile_interval_s": 3600, "max_network_retries": 0, "timeout_s": 5,
            **({"widget_base_url": emu.base_url} if embedded else {}), **stripe}})
        if http:
            doc["http"].update(http)
        daemon = DaemonProc(dir_, doc, test_plugin=test_plugin, env=env)
        try:
            await trio.to_thread.run_sync(daemon.start)
            info = await trio.to_thread.run_sync(daemon.call, "daemon.info")
            base = info["http"][0]
            emu.set_webhook_endpoint(base + "/webhook/stripe")
            wallet_id = None
            if create_wallet:
                created = await trio.to_thread.run_sync(daemon.call, "wallet.create", {"password": PASSWORD})
                wallet_id = created["public_id"]
            yield Env(daemon, emu, base, wallet_id, dir_)
            assert daemon.proc.poll() is None, daemon.stderr()
        finally:
            # The emulator goes first: its keep-alive webhook connection would hold the daemon's HTTP drain.
            emu_nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                code = await trio.to_thread.run_sync(daemon.stop)
    assert code in (0, -9), daemon.stderr()



async def complete_marker(env: Env, amount: str = "5") -> dict:
    """A session of ours, completed now: once it is pending, every webhook and reconcile before it was handled.

    Tests wait for it instead of sleeping to show that something else did NOT become pending."""
    env.emu.resume_webhooks()
    made = await env.create(amount)
    env.emu.complete_session(made["id"])
    await env.emu.wait_webhooks_idle()
    return made

async def test_create_pay_webhook_claim_credits_once(nursery, sockdir):
    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir) as env:
            await env.call("accounts.create", {"name": "alice"})
            session = await env.create("25.5", account="alice")
            assert session["provider"] == "stripe" and session["status"] == "initialized"
            assert session["id"].startswith("cos_") and session["url"].endswith("/checkout/" + session["id"])
            sent = env.emu.requests[-1]["params"]
            assert sent["metadata"] == {"tachyon_wallet": env.wallet_id}
            assert sent["destination_amount"] == "25.50" and sent["wallet_addresses"] == {"ethereum": ETH}
            await env.pay_in_page(session["url"])
            await env.emu.wait_webhooks_idle()
            assert all(a.status == 200 for a in env.emu.delivery_attempts)
            [topup] = await env.wait_pending()
            assert topup == {"session_id": session["id"], "provider": "stripe", "account": "alice", "token": "USDC",
                             "amount": "25.50", "amount_minor": 25_500_000, "network": "ethereum",
                             "received_at": topup["received_at"]}
            claimed = await env.call("onramp.claim", {"session_id": session["id"]})
            assert claimed["account"] == "alice" and claimed["amount_minor"] == 25_500_000
            assert claimed["token"] == "USDC" and claimed["amount"] == "25.50" and claimed["entry_id"] >= 1
            again = await env.error("onramp.claim", {"session_id": session["id"]})
            assert again.code == -32005 and again.message == f"not found: no pending topup {session['id']}"
            balances = await env.call("ledger.balances", {"account": "alice"})
            assert [b["available_minor"] for b in balances if b["token"] == "USDC"] == [25_500_000]
            assert await env.call("onramp.pending") == []
            verify = await env.call("ledger.verify")
            assert verify["ok"] and verify["problems"] == []
            [entry] = await env.call("ledger.history", {"account": "alice"})
            assert entry["key"] == f"onramp:{session['id']}" and entry["kind"] == "onramp"
            assert {(p["account"], p["amount_minor"]) for p in entry["postings"]} == {
                ("external:stripe", -25_500_000), ("alice", 25_500_000)}
            assert await env.metric("tachyon_topups_claimed_total", provider="stripe") == 1
            # Three status changes: each is queued, or a duplicate of a status the worker already saw at the API.
            enqueued = await env.metric("tachyon_webhook_events_enqueued_total", provider="stripe")
            duplicates = await env.metric("tachyon_webhook_events_duplicate_total", provider="stripe")
            assert enqueued >= 1 and enqueued + duplicates == 3
            assert await env.metric("tachyon_topups_pending") == 0


async def test_webhook_while_locked_is_kept_and_confirmed_after_unlock(nursery, sockdir):
    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir) as env:
            session = await env.create("10")
            await env.call("wallet.lock")
            env.emu.complete_session(session["id"])
            await env.emu.wait_webhooks_idle()
            # Every delivery was answered 200 on its first attempt, though nothing could be decrypted.
            assert [a.status for a in env.emu.delivery_attempts] == [200, 200, 200]
            assert (await env.error("onramp.pending")).code == -32001
            await env.call("wallet.unlock", {"password": PASSWORD})
            [topup] = await env.wait_pending()
            assert topup["session_id"] == session["id"] and topup["account"] == "default"
            assert topup["amount_minor"] == 10_000_000


async def test_fifty_concurrent_claims_credit_exactly_once(nursery, sockdir):
    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir) as env:
            session = await env.create("7.25")
            env.emu.complete_session(session["id"])
            await env.wait_pending()
            results: list[Any] = []

            async def claim() -> None:
                try:
                    results.append(await env.call("onramp.claim", {"session_id": session["id"]}))
                except RpcError as exc:
                    results.append(exc)

            async with trio.open_nursery() as claims:
                for _ in range(50):
                    claims.start_soon(claim)
            wins = [r for r in results if isinstance(r, dict)]
            losses = [r for r in results if isinstance(r, RpcError)]
            assert len(wins) == 1 and len(losses) == 49
            assert all(e.code == -32005 for e in losses)
            balances = await env.call("ledger.balances", {"account": "default"})
            assert [b["available_minor"] for b in balances if b["token"] == "USDC"] == [7_250_000]
            assert (await env.call("ledger.verify"))["ok"]


async def test_foreign_session_is_acknowledged_and_never_pending(nursery, sockdir):
    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir) as env:
            foreign = env.emu.create_foreign_session()
            env.emu.complete_session(foreign["id"])
            ours = await env.create("3")
            env.emu.complete_session(ours["id"])
            await env.emu.wait_webhooks_idle()
            assert all(a.status == 200 for a in env.emu.delivery_attempts)
            pending = await env.wait_pending()
            assert [p["session_id"] for p in pending] == [ours["id"]]
            assert await env.metric("tachyon_webhook_events_ignored_total", provider="stripe", reason="foreign") == 3
            assert (await env.call("onramp.reconcile"))["enqueued"] == 0
            marker = await complete_marker(env)   # pending after everything before it was handled
            assert [p["session_id"] for p in await env.wait_pending(2)] == [ours["id"], marker["id"]]
            err = await env.error("onramp.claim", {"session_id": foreign["id"]})
            assert err.code == -32005


async def test_reconcile_backfills_sessions_whose_webhooks_never_came(nursery, sockdir):
    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir) as env:
            env.emu.stop_webhooks()
            session = await env.create("12")
            env.emu.complete_session(session["id"])
            unpaid = await env.create("1")
            assert await env.call("onramp.pending") == []
            # Only complete sessions are listed (Stripe's list takes status=): the unpaid one is not fetched.
            assert await env.call("onramp.reconcile", {"lookback_h": 1}) == {"checked": 1, "enqueued": 1}
            [listed] = [r for r in env.emu.requests if r["method"] == "GET" and r["path"].endswith("sessions")]
            assert listed["params"]["status"] == "fulfillment_complete" and listed["params"]["limit"] == "100"
            [topup] = await env.wait_pending()
            assert topup["session_id"] == session["id"] and topup["amount_minor"] == 12_000_000
            assert await env.call("onramp.reconcile") == {"checked": 1, "enqueued": 0}
            # The late webhooks change nothing: the complete one is a duplicate, the others are not final.
            env.emu.resume_webhooks()
            await env.emu.wait_webhooks_idle()
            assert await env.metric("tachyon_webhook_events_duplicate_total", provider="stripe") == 1
            await env.call("onramp.claim", {"session_id": session["id"]})
            assert await env.call("onramp.reconcile") == {"checked": 1, "enqueued": 0}
            marker = await complete_marker(env)
            assert [p["session_id"] for p in await env.wait_pending()] == [marker["id"]]
            assert unpaid["id"] != session["id"]


async def test_reconcile_and_confirm_use_the_provider_a_reload_swapped_in(nursery, sockdir):
    """The reconciler and the inbox worker read the service's provider table, not a copy: once a reload rotated
    the API key and Stripe revoked the old one, onramp.reconcile lists, and the worker confirms, with the new key."""
    new_key = "sk_test_onramp_rotated_9876543210"
    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir) as env:
            env.emu.stop_webhooks()
            session = await env.create("3")
            env.emu.complete_session(session["id"])
            env.emu.config = dataclasses.replace(env.emu.config, secret_keys=(API_KEY, new_key))
            (sockdir / "sk").write_text(new_key)
            assert (await env.call("daemon.reload"))["changed"] == ["onramp.stripe.secret_key"]
            env.emu.config = dataclasses.replace(env.emu.config, secret_keys=(new_key,))
            assert await env.call("onramp.reconcile", {"lookback_h": 1}) == {"checked": 1, "enqueued": 1}
            [topup] = await env.wait_pending()
            assert topup["session_id"] == session["id"] and topup["amount_minor"] == 3_000_000
            assert await env.metric("tachyon_onramp_api_errors_total", provider="stripe") == 0

async def test_provider_api_failure_is_retried_not_lost(nursery, sockdir):
    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir) as env:
            session = await env.create("5")
            env.emu.inject_errors(500, None)
            env.emu.complete_session(session["id"])
            await env.emu.wait_webhooks_idle()
            while await env.metric("tachyon_onramp_api_errors_total", provider="stripe") < 3:
                await trio.sleep(0.05)
            assert await env.call("onramp.pending") == []
            env.emu.clear_errors()
            [topup] = await env.wait_pending()
            assert topup["session_id"] == session["id"]


async def test_statuses_rejected_unknown_and_inexact_amounts_are_never_pending(nursery, sockdir):
    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir) as env:
            rejected = await env.create("1")
            env.emu.reject_session(rejected["id"])
            odd = await env.create("2")
            env.emu.set_session_status(odd["id"], "fulfillment_on_hold")
            inexact = await env.create("3")
            env.emu.store.sessions[inexact["id"]]["transaction_details"]["destination_amount"] = "3.0000001"
            env.emu.set_session_status(inexact["id"], "fulfillment_complete")
            wide = await env.create("4")  # Stripe's 18-place strings are fine when they are exact
            env.emu.store.sessions[wide["id"]]["transaction_details"]["destination_amount"] = "4.500000000000000000"
            env.emu.set_session_status(wide["id"], "fulfillment_complete")
            await env.emu.wait_webhooks_idle()
            [topup] = await env.wait_pending()
            assert topup["session_id"] == wide["id"] and topup["amount_minor"] == 4_500_000
            marker = await complete_marker(env)   # the odd ones had their chance before it
            assert [p["session_id"] for p in await env.wait_pending(2)] == [wide["id"], marker["id"]]
            stderr = env.daemon.stderr()
            assert "unknown status 'fulfillment_on_hold'" in stderr and "3.0000001" in stderr
            assert f"onramp session {rejected['id']} rejected" in stderr


async def test_create_session_checks_everything_before_calling_stripe(nursery, sockdir):
    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir, stripe={"allowed": {"ethereum": ["usdc"], "base": ["usdc"]}}) as env:
            cases = [
                ({"network": "nosuchchain"}, -32602),
                ({"destination_address": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD"}, -32030),  # bad checksum
                ({"network": "polygon", "destination_address": ETH}, -32033),  # not in allowed
                ({"amount": "1.0000001"}, -32010),
                ({"amount": "0"}, -32010),
                ({"currency": "btc"}, -32602),
                ({"account": "nobody"}, -32012),
                ({"provider": "paypal"}, -32032),
            ]
            for extra, code in cases:
                err = await env.error("onramp.create_session", {"destination_address": ETH, "amount": "1", **extra})
                assert err.code == code, (extra, err.message)
            await env.call("wallet.lock")
            assert (
                await env.error("onramp.create_session", {"destination_address": ETH, "amount": "1"})
            ).code == -32001
            assert env.emu.requests == []
            await env.call("wallet.unlock", {"password": PASSWORD})
            made = await env.create("1", network="base")
            assert made["status"] == "initialized" and len(env.emu.requests) == 1


async def test_reverse_debits_what_is_available_and_records_the_rest_as_debt(nursery, sockdir):
    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir) as env:
            await env.call("accounts.create", {"name": "bob"})
            session = await env.create("10", account="bob")
            env.emu.complete_session(session["id"])
            await env.wait_pending()
            assert (await env.error("onramp.reverse", {"session_id": session["id"], "reason": "x"})).code == -32005
            claim = await env.call("onramp.claim", {"session_id": session["id"]})
            await env.call("ledger.withdraw", {"account": "bob", "token": "USDC", "amount": "6", "reference": "w1"})
            entry = await env.call("onramp.reverse", {"session_id": session["id"], "reason": "chargeback"})
            assert entry["key"] == f"reverse:onramp:{session['id']}" and entry["links"] == [claim["entry_id"]]
            assert "chargeback" in entry["memo"]
            assert {(p["account"], p["amount_minor"]) for p in entry["postings"]} == {
                ("external:stripe", 10_000_000), ("bob", -4_000_000), ("debt:bob", -6_000_000)}
            assert entry["reversal"]["shortfall_minor"] == 6_000_000 and entry["reversal"]["debited"] == "4.00"
            again = await env.call("onramp.reverse", {"session_id": session["id"], "reason": "chargeback"})
            assert again["id"] == entry["id"] and again["repeated"] is True
            balances = await env.call("ledger.balances", {"account": "bob"})
            assert [b["available_minor"] for b in balances if b["token"] == "USDC"] == [0]
            assert (await env.call("ledger.verify"))["ok"]
            assert (await env.error("onramp.reverse", {"session_id": "cos_nosuch", "reason": "x"})).code == -32005
            # At info level the claim and reversal lines carry ids only: no account, token or amount in journald.
            ours = [line for line in env.daemon.stderr().splitlines()
                    if session["id"] in line and ("claimed" in line or "reversed" in line)]
            lines = [line for line in ours if " DEBUG " not in line]
            assert any(" DEBUG " in line and "10.00 USDC to bob" in line for line in ours)  # this daemon asked
            assert any(f"claimed: entry {claim['entry_id']}" in line for line in lines)
            assert any(f"reversed: entry {entry['id']}" in line for line in lines)
            for line in lines:
                for detail in ("bob", "USDC", "10.00", "6.00", "chargeback"):
                    assert detail not in line, line


async def test_hook_topup_credited(nursery, sockdir):
    log_path = sockdir / "plugin.log"
    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir, test_plugin=True,
                              env={"TACHYON_TESTPLUGIN_LOG": str(log_path)}) as env:
            session = await env.create("8")
            env.emu.complete_session(session["id"])
            await env.wait_pending()
            claimed = await env.call("onramp.claim", {"session_id": session["id"]})
            calls = [json.loads(line) for line in log_path.read_text().splitlines()]
            [credited] = [c for c in calls if c["hook"] == "topup_credited"]
            assert credited["topup"] == claimed


async def test_onramp_survives_sigkill_with_events_in_the_inbox(nursery, sockdir):
    """A webhook answered 200 is on disk: after SIGKILL and restart (unlocked from password_file) it is confirmed."""
    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir) as env:
            session = await env.create("9")
            await env.call("wallet.lock")
            env.emu.complete_session(session["id"])
            await env.emu.wait_webhooks_idle()
            await trio.to_thread.run_sync(env.daemon.kill)
            await trio.to_thread.run_sync(env.daemon.start)
            [topup] = await env.wait_pending()
            assert topup["session_id"] == session["id"] and topup["amount_minor"] == 9_000_000
            assert os.path.exists(env.daemon.doc["daemon"]["data_dir"])


async def test_reconciler_timer_backfills_without_being_asked(nursery, sockdir):
    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir, stripe={"reconcile_interval_s": 0.5}) as env:
            env.emu.stop_webhooks()
            session = await env.create("6")
            env.emu.complete_session(session["id"])
            [topup] = await env.wait_pending()
            assert topup["session_id"] == session["id"]
            assert await env.metric("tachyon_topups_pending") == 1
            assert not [a for a in env.emu.delivery_attempts]  # no webhook was ever delivered


async def test_tachyon_ctl_buys_usdc_with_the_interface_flags(nursery, sockdir):
    """create-session --destination --amount MINOR_UNITS, pay, pending, claim --session-id, balance: the CLI path."""
    from conftest import run_ctl

    def ctl(*args: str) -> Any:
        r = run_ctl("--json", *args, socket_path=str(env.daemon.socket))
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    with trio.fail_after(60):
        async with onramp_env(nursery, sockdir) as env:
            await env.call("accounts.create", {"name": "bob"})
            session = await trio.to_thread.run_sync(
                ctl, "onramp", "create-session", "--destination", ETH, "--network", "ethereum", "--amount", "12500000",
                "--account", "bob")
            sent = env.emu.requests[-1]["params"]
            # --amount is minor units of --currency (default usdc), named explicitly to the daemon and Stripe.
            assert (sent["destination_amount"], sent["destination_currency"]) == ("12.50", "usdc")
            await env.pay_in_page(session["url"])
            await env.emu.wait_webhooks_idle()
            await env.wait_pending()
            [pending] = await trio.to_thread.run_sync(ctl, "onramp", "pending")
            assert (pending["session_id"], pending["amount"], pending["account"]) == (session["id"], "12.50", "bob")
            claimed = await trio.to_thread.run_sync(ctl, "onramp", "claim", "--session-id", session["id"])
            assert (claimed["account"], claimed["amount_minor"]) == ("bob", 12_500_000)
            again = await trio.to_thread.run_sync(
                lambda: run_ctl("onramp", "claim", "--session-id", session["id"], socket_path=str(env.daemon.socket)))
            assert again.returncode == 1 and "not found" in again.stderr
            balances = await trio.to_thread.run_sync(ctl, "balance", "--account", "bob")
            assert [b["available"] for b in balances if b["token"] == "USDC"] == ["12.50"]


async def test_processed_inbox_events_are_pruned_after_their_retention_unprocessed_never(tmp_path):
    """The inbox does not grow forever: processed events go after 30 days; one still waiting is never deleted."""
    import time

    from tachyond.onramp.service import store
    from tachyond.wallet.wallet import Wallet

    wallet = Wallet(tmp_path, scrypt_n=2 ** 10)
    wallet.add_schema("onramp", store.SCHEMA)
    async with wallet:
        await wallet.create("pw")
        for i in range(3):
            assert await wallet.write(store.enqueue_op, [bytes([i]) * 32], b"sealed-event", time.time())
        rows = await wallet.read(store.due_inbox_sync, 0, 10)
        for inbox_id, _sealed, _at in rows[:2]:
            await wallet.write(store.confirm_op, inbox_id, f"cos_{inbox_id}", {"kind": "none"}, [])
        assert store.INBOX_RETENTION_S == 30 * 86400
        assert await wallet.write(store.prune_inbox_op) == 0          # processed a moment ago: kept
        assert await wallet.write(store.prune_inbox_op, -1.0) == 2    # as if 30 days had passed: both go
        assert [r[0] for r in await wallet.read(store.due_inbox_sync, 0, 10)] == [rows[2][0]]
        assert await wallet.write(store.prune_inbox_op, -1.0) == 0    # the unprocessed one stays
        # The dedupe keys outlive the rows: the same event is still a duplicate.
        assert not await wallet.write(store.enqueue_op, [bytes([0]) * 32], b"sealed-event", time.time())


async def test_a_parked_complete_session_is_looked_at_again_once_the_cause_is_gone(nursery, sockdir):
    """Parked is 'kept for review', not settled: after the cause is gone, a reconcile makes it pending."""
    with trio.fail_after(40):
        async with onramp_env(nursery, sockdir) as env:
            session = await env.create("6")
            env.emu.stop_webhooks()
            env.emu.complete_session(session["id"])
            # The API does not know the session when the webhook is confirmed (e.g. keys of another account).
            hidden = env.emu.store.sessions.pop(session["id"])
            env.emu.resume_webhooks()
            await env.emu.wait_webhooks_idle()
            # Three webhooks (requires_payment, fulfillment_processing, fulfillment_complete): wait until the
            # worker has parked all three (the same park again is logged as "still parked").
            while not (f"onramp session {session['id']} parked" in env.daemon.stderr()
                       and env.daemon.stderr().count(f"onramp session {session['id']} still parked") == 2):
                await trio.sleep(0.05)
            assert await env.call("onramp.pending") == []
            assert (await env.call("onramp.reconcile"))["enqueued"] == 0   # the API lists nothing either
            env.emu.store.sessions[session["id"]] = hidden
            assert (await env.call("onramp.reconcile"))["enqueued"] == 1
            [topup] = await env.wait_pending()
            assert topup["session_id"] == session["id"] and topup["amount_minor"] == 6_000_000
            assert (await env.call("onramp.reconcile"))["enqueued"] == 0   # pending now: settled for dedupe
            claimed = await env.call("onramp.claim", {"session_id": session["id"]})
            assert claimed["amount_minor"] == 6_000_000
