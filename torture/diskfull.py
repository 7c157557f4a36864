"""A full disk mid-load: a tachyond whose data_dir is a size-limited tmpfs, filled up by a ballast file.

Writes must fail with an RPC error (the daemon keeps running and answering), nothing may be half-applied
(ledger.verify ok, the journal unchanged, no refused reference in it), and once the ballast is gone the same
writes succeed, each once.

The market runs on the SQLite engine, by default with its log in the wallet file (``in_wallet``): a refused
order rolls back with the wallet's transaction, the engine's books with it, so the same orders go through once
space returns, without a restart. With ``in_wallet = false`` (the engine's own file, ``own_file=True``) a failed
engine write stops the engine (fail-stop) and a daemon restart rebuilds it from its file.
"""

from __future__ import annotations

import errno
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from conftest import DaemonProc, base_document

from torture.rpc import Down, Rpc, RpcError

PASSWORD = "disk full horse"
SIZE = "8m"


def mount_tmpfs(where: Path) -> str | None:
    """Mount a small tmpfs at ``where``; None when done, else why not."""
    where.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0700", "tmpfs", str(where)],
                       capture_output=True, text=True)
    return None if r.returncode == 0 else f"mount -t tmpfs failed ({r.returncode}): {r.stderr.strip()}"


def fill(path: Path) -> int:
    """Write ``path`` until the filesystem is full; the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            chunk = b"\0" * size
            while True:
                try:
                    f.write(chunk)
                    written += size
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return written


def writes(tag: str) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(10):
        out.append(("ledger.deposit", {"account": "a", "token": "USDC", "amount": f"{i + 1}.5",
                                       "reference": f"{tag}-dep-{i}"}))
        out.append(("ledger.transfer", {"from": "a", "to": "b", "token": "USDC", "amount": "0.25",
                                        "reference": f"{tag}-tr-{i}"}))
        out.append(("dex.place_order", {"account": "b", "market": "ZEC/USDC", "side": "buy", "type": "limit",
                                        "price": "10.00", "qty": "0.5", "client_order_id": f"{tag}-o-{i}"}))
    out.append(("accounts.create", {"name": f"{tag}-acct"}))
    return out


async def run(base: Path, fail: Callable[[str], None], *, own_file: bool = False) -> dict:
    report: dict[str, Any] = {"filesystem": f"tmpfs size={SIZE}",
                              "sqlite_engine": "in_wallet = false (engine-sqlite.db)" if own_file
                              else "default (in_wallet: a table of wallet.db)"}
    mnt = base / "fs"
    base.mkdir(parents=True, exist_ok=True)
    why = await trio.to_thread.run_sync(mount_tmpfs, mnt)
    if why:
        fail(f"diskfull: cannot make the small filesystem: {why} (run as root)")
        return {"ran": False, "why": why}
    daemon = None
    try:
        doc = base_document(base, tokens=[{"symbol": "USDC", "decimals": 6}, {"symbol": "ZEC", "decimals": 8}],
                            markets=[{"symbol": "ZEC/USDC", "engine": "sqlite", "tick": "0.01", "lot": "0.0001",
                                      "min_notional": "1", "maker_fee_bps": 10, "taker_fee_bps": 20}])
        doc["daemon"]["data_dir"] = str(mnt / "data")
        doc["daemon"]["log_level"] = "info"
        if own_file:
            doc["engines"] = {"sqlite": {"in_wallet": False}}
        daemon = DaemonProc(base, doc)
        await trio.to_thread.run_sync(daemon.start)
        rpc = Rpc(daemon.socket)
        await rpc.call("wallet.create", {"password": PASSWORD})
        for a in ("a", "b"):
            await rpc.call("accounts.create", {"name": a})
        await rpc.call("ledger.deposit", {"account": "b", "token": "USDC", "amount": "100000", "reference": "seed"})
        for i in range(200):  # load before the disk fills: the journal and the book have something in them
            await rpc.call("ledger.deposit", {"account": "a", "token": "USDC", "amount": "1", "reference": f"pre-{i}"})
            await rpc.call("dex.place_order", {"account": "b", "market": "ZEC/USDC", "side": "buy", "type": "limit",
                                               "price": "9.00", "qty": "0.2", "client_order_id": f"pre-{i}"})
        head_before = (await rpc.call("ledger.history", {"limit": 1}))[0]["id"]
        balances_before = await rpc.call("ledger.balances")
        ballast = mnt / "ballast"
        report["ballast_bytes"] = await trio.to_thread.run_sync(fill, ballast)

        # SQLite may still have room in pages it holds: write until the first refusal.
        slack = 0
        for i in range(5000):
            try:
                await rpc.call("ledger.deposit", {"account": "a", "token": "USDC", "amount": "1",
                                                  "reference": f"slack-{i}"})
                slack += 1
            except RpcError as exc:
                report["first_refusal"] = f"{exc.code} {exc.message}"
                break
            except Down as exc:
                fail(f"diskfull: a deposit on a full disk: the daemon went away ({exc})")
                return report
        report["writes_accepted_after_ballast_before_first_refusal"] = slack
        head_before = (await rpc.call("ledger.history", {"limit": 1}))[0]["id"]
        balances_before = await rpc.call("ledger.balances")
        codes: Counter = Counter()
        messages: dict[int, str] = {}
        refused: list[tuple[str, dict]] = []
        for method, params in writes("full"):
            try:
                await rpc.call(method, params)
                codes["accepted"] += 1
            except RpcError as exc:
                refused.append((method, params))
                codes[exc.code] += 1
                messages.setdefault(exc.code, exc.message)
            except Down as exc:
                fail(f"diskfull: {method} on a full disk: the daemon went away ({exc})")
                return report
        report["writes_on_full_disk"] = {"tried": len(writes("full")), "refused": len(refused),
                                         "answers": {str(k): v for k, v in codes.items()},
                                         "messages": {str(k): v for k, v in messages.items()}}
        if daemon.proc.poll() is not None:
            fail(f"diskfull: the daemon exited with {daemon.proc.returncode} on a full disk")
            return report
        # A write may still fit after one was refused (a rolled-back transaction frees pages): that is not a
        # fault, so long as it is applied once (checked below) and the refused ones are not applied at all.
        # Reads still answer and nothing was half-applied.
        try:
            v = await rpc.call("ledger.verify")
            report["verify_on_full_disk"] = v["ok"]
            if not v["ok"]:
                fail(f"diskfull: ledger.verify on a full disk: {v['problems'][:5]}")
            head = (await rpc.call("ledger.history", {"limit": 1}))[0]["id"]
            report["journal_head_before_after"] = [head_before, head]
            if not codes["accepted"]:
                if head != head_before:
                    fail(f"diskfull: journal head moved from {head_before} to {head} with every write refused")
                if await rpc.call("ledger.balances") != balances_before:
                    fail("diskfull: balances changed with every write refused")
            orders = {o["client_order_id"]: o for o in await rpc.call("dex.orders", {"account": "b"})}
            for method, params in refused:
                if method == "dex.place_order" and orders.get(params["client_order_id"], {}).get("status") == "open":
                    fail(f"diskfull: refused order {params['client_order_id']} is open")
        except RpcError as exc:
            fail(f"diskfull: a read on a full disk was refused: {exc.code} {exc.message}")
        except Down as exc:
            fail(f"diskfull: a read on a full disk: the daemon went away ({exc})")
            return report

        # Space returns: the refused writes go through, each once.
        ballast.unlink()

        async def retry(todo: list[tuple[str, dict]]) -> tuple[Counter, list[tuple[str, dict]]]:
            answers: Counter = Counter()
            still: list[tuple[str, dict]] = []
            for method, params in todo:
                try:
                    await rpc.call(method, params)
                    answers["ok"] += 1
                except RpcError as exc:
                    answers[f"{method}: {exc.code} {exc.message}"] += 1
                    still.append((method, params))
            return answers, still

        answers, still = await retry(refused)
        report["writes_after_space_returned"] = dict(answers)
        if any(m != "dex.place_order" for m, _ in still):
            fail(f"diskfull: after space returned, ledger writes answered {dict(answers)}")
        engine_file = (mnt / "data" / "engine-sqlite.db").exists()
        if engine_file != own_file:
            fail(f"diskfull: engine-sqlite.db {'exists' if engine_file else 'is missing'} with "
                 f"{report['sqlite_engine']}")
        if still and not own_file:
            fail(f"diskfull: the in-wallet engine refused orders after space returned: {dict(answers)} (its books "
                 "roll back with the wallet's transaction: no restart should be needed)")
        if still:
            # The SQLite engine on its own file stops on a failed write (fail-stop: "restart it to rebuild from
            # the file").
            await rpc.aclose()
            await trio.to_thread.run_sync(daemon.stop)
            await trio.to_thread.run_sync(daemon.start)
            rpc = Rpc(daemon.socket)
            await rpc.call("wallet.unlock", {"password": PASSWORD})
            answers, still = await retry(still)
            report["engine_writes_after_daemon_restart"] = dict(answers)
            if still:
                fail(f"diskfull: orders refused even after a restart with space back: {dict(answers)}")
        v = await rpc.call("ledger.verify")
        history = await rpc.call("ledger.history", {"limit": 1000})
        keys = Counter(e["key"] for e in history)
        for method, params in writes("full"):
            if "reference" in params:
                key = f"{method.split('.')[1]}:{params['reference']}"
                if keys[key] != 1:
                    fail(f"diskfull: {key} is in the journal {keys[key]} times")
        orders = Counter(o["client_order_id"] for o in await rpc.call("dex.orders", {"account": "b"}))
        for method, params in writes("full"):
            if method == "dex.place_order" and orders[params["client_order_id"]] != 1:
                fail(f"diskfull: order {params['client_order_id']} placed {orders[params['client_order_id']]} times")
        report["verify_after"] = v["ok"]
        if not v["ok"]:
            fail(f"diskfull: ledger.verify after space returned: {v['problems'][:5]}")
        await rpc.aclose()
        report["daemon_log_tracebacks"] = daemon.stderr().count("Traceback (most recent call last)")
        if report["daemon_log_tracebacks"]:   # a full disk is said plainly, never as a traceback
            fail(f"diskfull: the daemon logged {report['daemon_log_tracebacks']} tracebacks on a full disk")
        report["daemon_log_disk_lines"] = [line for line in daemon.stderr().splitlines()
                                           if "full" in line.lower() or "nothing was written" in line][:5]
        report["ran"] = True
        return report
    finally:
        if daemon is not None:
            await trio.to_thread.run_sync(daemon.stop)
            for fh in (getattr(daemon, "_stderr", None), getattr(daemon, "_stdout", None)):
                if fh is not None:
                    fh.close()
        await trio.to_thread.run_sync(lambda: subprocess.run(["umount", str(mnt)], capture_output=True))
