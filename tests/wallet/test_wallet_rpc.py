"""The wallet and ledger through the real socket: CLI passwords, locking, idempotency under concurrency, SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from conftest import base_document, ctl_json, run_ctl

from tachyon_ctl.client import DaemonNotRunning

TOKENS = [{"symbol": "USDC", "decimals": 6, "networks": ["ethereum"]}, {"symbol": "ZEC", "decimals": 8}]
PASSWORD = "correct horse battery staple"


def ledger_doc(dir_, **extra):
    pw = dir_ / "pw"
    pw.write_text(PASSWORD + "\n")
    return base_document(dir_, tokens=TOKENS, wallet={"password_file": str(pw)}, **extra)


def test_create_unlock_lock_through_tachyon_ctl(daemon_factory, sockdir):
    d = daemon_factory(base_document(sockdir, tokens=TOKENS)).start()
    s = d.socket
    assert ctl_json("status", socket_path=s)["wallet"] == "absent"
    r = run_ctl("balance", socket_path=s)
    assert r.returncode == 1 and "no wallet" in r.stderr
    created = ctl_json("wallet", "create", "--password-stdin", socket_path=s, input_text=PASSWORD + "\n")
    assert created["created"] is True
    assert ctl_json("wallet", "lock", socket_path=s) == {"locked": True}
    r = run_ctl("balance", socket_path=s)
    assert r.returncode == 1 and "wallet is locked" in r.stderr
    r = run_ctl("wallet", "unlock", "--password-stdin", socket_path=s, input_text="wrong\n")
    assert r.returncode == 1 and "wrong password" in r.stderr
    unlocked = ctl_json(
        "wallet", "unlock", "--password-stdin", "--timeout", "600", socket_path=s, input_text=PASSWORD + "\n"
    )
    assert unlocked["unlocked"] is True and unlocked["until"] > time.time() + 590
    assert ctl_json("status", socket_path=s)["unlocked_until"] == pytest.approx(unlocked["until"])
    balances = ctl_json("balance", socket_path=s)
    assert {(b["account"], b["token"], b["available"]) for b in balances} == {
        ("default", "USDC", "0.00"),
        ("default", "ZEC", "0.00"),
    }
    r = run_ctl("wallet", "create", "--password-stdin", socket_path=s, input_text="another\n")
    assert r.returncode == 1 and "already exists" in r.stderr
    changed = ctl_json(
        "wallet", "change-password", "--password-stdin", socket_path=s, input_text=f"{PASSWORD}\nnew-secret-words\n"
    )
    assert changed == {"changed": True}
    ctl_json("wallet", "lock", socket_path=s)
    assert run_ctl("wallet", "unlock", "--password-stdin", socket_path=s, input_text=PASSWORD + "\n").returncode == 1
    assert ctl_json("wallet", "unlock", "--password-stdin", socket_path=s, input_text="new-secret-words\n")["unlocked"]
    logs = d.stderr()
    for secret in (PASSWORD, "new-secret-words"):
        assert secret not in logs


def test_password_file_unlocks_at_start_and_money_moves(daemon_factory, sockdir):
    d = daemon_factory(ledger_doc(sockdir)).start()
    d.call("wallet.create", {"password": PASSWORD}) if d.call("daemon.info")["wallet"] == "absent" else None
    s = d.socket
    ctl_json("accounts", "create", "alice", socket_path=s)
    dep = ctl_json(
        "ledger",
        "deposit",
        "--account",
        "alice",
        "--token",
        "USDC",
        "--amount",
        "120",
        "--reference",
        "tx-1",
        socket_path=s,
    )
    assert dep["kind"] == "deposit"
    again = ctl_json(
        "ledger",
        "deposit",
        "--account",
        "alice",
        "--token",
        "USDC",
        "--amount",
        "120",
        "--reference",
        "tx-1",
        socket_path=s,
    )
    assert again["id"] == dep["id"]
    r = run_ctl(
        "ledger", "transfer", "--from", "alice", "--to", "default", "--token", "USDC", "--amount", "500", socket_path=s
    )
    assert r.returncode == 1 and "insufficient available USDC: need 500.00, have 120.00" in r.stderr
    r = run_ctl(
        "ledger",
        "transfer",
        "--from",
        "alice",
        "--to",
        "default",
        "--token",
        "USDC",
        "--amount",
        "0.0000001",
        socket_path=s,
    )
    assert r.returncode == 1 and "finer than USDC's 6 decimals" in r.stderr
    ctl_json(
        "ledger", "transfer", "--from", "alice", "--to", "default", "--token", "USDC", "--amount", "20.5", socket_path=s
    )
    bal = {(b["account"], b["token"]): b for b in ctl_json("balance", socket_path=s)}
    assert bal[("alice", "USDC")]["available"] == "99.50" and bal[("alice", "USDC")]["available_minor"] == 99_500_000
    assert bal[("default", "USDC")]["available"] == "20.50"
    assert ctl_json("ledger", "verify", socket_path=s)["ok"] is True
    history = ctl_json("ledger", "history", "--account", "alice", socket_path=s)
    assert [e["kind"] for e in history] == ["transfer", "deposit"]


def _wallet_daemon(daemon_factory, sockdir):
    d = daemon_factory(ledger_doc(sockdir))
    d.start()
    if d.call("daemon.info")["wallet"] == "absent":
        d.call("wallet.create", {"password": PASSWORD})
    return d


def test_same_idempotency_key_from_50_concurrent_clients_is_one_entry(daemon_factory, sockdir):
    d = _wallet_daemon(daemon_factory, sockdir)
    barrier = threading.Barrier(50)
    ids = []
    lock = threading.Lock()

    def client():
        with d.client() as c:
            barrier.wait()
            entry = c.call("ledger.deposit", {"token": "ZEC", "amount": "1.5", "reference": "same-ref"})
        with lock:
            ids.append(entry["id"])

    threads = [threading.Thread(target=client) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(ids) == 50 and len(set(ids)) == 1
    bal = {b["token"]: b for b in d.call("ledger.balances", {"account": "default"})}
    assert bal["ZEC"]["available_minor"] == 150_000_000
    assert len(d.call("ledger.history")) == 1


def test_sigkill_while_8_clients_write_loses_no_acknowledged_write(daemon_factory, sockdir):
    d = _wallet_daemon(daemon_factory, sockdir)
    acked: list[str] = []
    unexpected: list[BaseException] = []
    lock = threading.Lock()
    stop = threading.Event()
    killed = threading.Event()
    enough = threading.Event()

    def writer(w: int):
        n = 0
        try:
            with d.client() as c:
                while not stop.is_set():
                    ref = f"w{w}-{n}"
                    c.call("ledger.deposit", {"token": "USDC", "amount": "0.01", "reference": ref})
                    with lock:
                        acked.append(ref)
                        if len(acked) >= 200:
                            enough.set()
                    n += 1
        except DaemonNotRunning:
            if not killed.is_set():  # only the SIGKILL may end a writer; only acknowledged writes count
                unexpected.append(AssertionError(f"writer {w} lost the daemon before the kill"))
        except BaseException as exc:  # an RPC error or a bug in the client: the test must see it
            unexpected.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    assert enough.wait(60), f"only {len(acked)} writes acknowledged in 60 s"
    killed.set()
    d.signal(signal.SIGKILL)
    d.proc.wait(10)
    stop.set()
    for t in threads:
        t.join(30)
    assert not unexpected, unexpected
    assert len(acked) >= 200
    d2 = daemon_factory(d.doc).start()
    verify = d2.call("ledger.verify")
    assert verify["ok"] is True, verify["problems"]
    total = {b["token"]: b for b in d2.call("ledger.balances", {"account": "default"})}["USDC"]["available_minor"]
    assert total >= len(acked) * 10_000
    # Every acknowledged reference is in the journal: a repeat returns the same entry, not a new one.
    entries_before = verify["entries"]
    for ref in acked[:: max(1, len(acked) // 40)]:
        assert d2.call("ledger.deposit", {"token": "USDC", "amount": "0.01", "reference": ref})["repeated"] is True
    assert d2.call("ledger.verify")["entries"] == entries_before


def test_backup_while_running_opens_with_the_password(daemon_factory, sockdir):
    d = _wallet_daemon(daemon_factory, sockdir)
    d.call("ledger.deposit", {"token": "USDC", "amount": "42", "reference": "before-backup"})
    backup = d.call("wallet.backup", {"path": str(sockdir / "copy.db")})
    assert backup["bytes"] > 0
    assert d.stop() == 0
    restored = sockdir / "restored"
    (restored / "data").mkdir(parents=True)
    os.replace(sockdir / "copy.db", restored / "data" / "wallet.db")
    d2 = daemon_factory(ledger_doc(restored)).start()
    bal = {b["token"]: b for b in d2.call("ledger.balances", {"account": "default"})}
    assert bal["USDC"]["available"] == "42.00"
    assert d2.call("ledger.verify")["ok"] is True


def test_amounts_past_decimal_precision_are_refused_not_rounded(daemon_factory, sockdir):
    d = _wallet_daemon(daemon_factory, sockdir)
    import json as _json

    line = {"jsonrpc": "2.0", "method": "ledger.deposit", "id": 1,
            "params": {"token": "USDC", "amount": "1.0000000000000000000000000000001", "reference": "precise"}}
    answer = _json.loads(d.raw(_json.dumps(line).encode() + b"\n"))
    assert answer["error"]["code"] == -32010 and "finer than USDC's 6 decimals" in answer["error"]["message"]
    assert {b["token"]: b for b in d.call("ledger.balances", {"account": "default"})}["USDC"]["available_minor"] == 0


def test_reused_reference_with_other_amount_answers_conflict_over_the_socket(daemon_factory, sockdir):
    d = _wallet_daemon(daemon_factory, sockdir)
    first = d.call("ledger.deposit", {"token": "USDC", "amount": "10", "reference": "tx-reused"})
    r = run_ctl("ledger", "deposit", "--token", "USDC", "--amount", "11", "--reference", "tx-reused",
                socket_path=d.socket)
    assert r.returncode == 1 and "-32014" in r.stderr and "deposit:tx-reused" in r.stderr
    raw = d.raw(b'{"jsonrpc":"2.0","id":1,"method":"ledger.deposit","params":'
                b'{"token":"ZEC","amount":"10","reference":"tx-reused"}}\n')
    error = json.loads(raw)["error"]
    assert error["code"] == -32014 and error["data"] == {"key": "deposit:tx-reused", "entry_id": first["id"]}
    again = d.call("ledger.deposit", {"token": "USDC", "amount": "10.00", "reference": "tx-reused"})
    assert again["id"] == first["id"] and again["repeated"] is True
    assert {b["token"]: b["available"] for b in d.call("ledger.balances", {"account": "default"})} == \
        {"USDC": "10.00", "ZEC": "0.00"}
