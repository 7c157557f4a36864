"""ledger.verify: replay the journal and compare it with the stored balances and holds."""

from __future__ import annotations

import hmac
from collections import defaultdict

from ..errors import IntegrityError
from ..wallet.writer import ReadTx
from .journal import BUCKETS, ZERO_MAC, is_user_account


def _verify_sync(rtx: ReadTx) -> dict:
    keys = rtx.keys
    problems: list[str] = []
    balances: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    holds: dict[str, list] = {}
    prev_mac, last_id, count = ZERO_MAC, 0, 0
    for entry_id, key_hash, blob, mac in rtx.conn.execute(
            "SELECT id, key_hash, body, mac FROM ledger_journal ORDER BY id"):
        count += 1
        if entry_id != last_id + 1:
            problems.append(f"entry {entry_id} follows entry {last_id}: entries are missing")
        if not hmac.compare_digest(keys.chain_mac(prev_mac, entry_id.to_bytes(8, "big"), key_hash, blob), mac):
            problems.append(f"entry {entry_id}: chain MAC mismatch (this or an earlier entry was edited, removed "
                            f"or reordered)")
        prev_mac, last_id = bytes(mac), entry_id
        try:
            body = rtx.open_json("ledger_journal", "body", entry_id, blob)
        except IntegrityError:
            problems.append(f"entry {entry_id}: body failed authentication")
            continue
        if not hmac.compare_digest(keys.lookup("entry", body["key"]), key_hash):
            problems.append(f"entry {entry_id}: idempotency key hash does not match its body")
        _replay(entry_id, body, balances, holds, problems)
    head = rtx.conn.execute("SELECT last_id, last_mac, head_mac FROM ledger_head").fetchone()
    if head is None:
        if count:
            problems.append("journal head is missing")
    elif (head[0], bytes(head[1])) != (last_id, prev_mac) or not hmac.compare_digest(
            keys.chain_mac(b"head", head[0].to_bytes(8, "big"), head[1]), head[2]):
        problems.append(f"journal head (entry {head[0]}) does not match the last entry ({last_id}): "
                        f"entries were removed or the head was altered")
    _compare_stored(rtx, balances, holds, problems)
    return {"ok": not problems, "entries": count, "problems": problems}

def _replay(entry_id: int, body: dict, balances: dict, holds: dict, problems: list[str]) -> None:
    sums: dict[str, int] = defaultdict(int)
    touched = set()
    for account, token, bucket, delta, hold in body["postings"]:
        sums[token] += delta
        balances[(account, token)][BUCKETS.index(bucket)] += delta
        touched.add((account, token))
        if hold is not None:
            state = holds.setdefault(hold, [account, token, 0])
            state[2] += delta
            if state[2] < 0:
                problems.append(f"entry {entry_id}: hold {hold} goes below zero")
    for token, total in sums.items():
        if total:
            problems.append(f"entry {entry_id}: postings in {token} sum to {total}, not zero")
    for account, token in touched:
        if is_user_account(account) and min(balances[(account, token)]) < 0:
            problems.append(f"entry {entry_id}: user account {account} goes below zero in {token}")

def _compare_stored(rtx: ReadTx, balances: dict, holds: dict, problems: list[str]) -> None:
    stored: dict[tuple[str, str], list[int]] = {}
    for rowid, key_hash, blob in rtx.conn.execute("SELECT id, key_hash, value FROM ledger_balances"):
        try:
            account, token, available, locked = rtx.open_json("ledger_balances", "value", rowid, blob)
        except IntegrityError:
            problems.append(f"balance row {rowid} failed authentication")
            continue
        if not hmac.compare_digest(rtx.lookup("balance", f"{account}\x00{token}"), key_hash):
            problems.append(f"balance row {rowid} is filed under another account's key")
        stored[(account, token)] = [available, locked]
    for pair in set(stored) | set(balances):
        replayed, kept = balances.get(pair, [0, 0]), stored.get(pair, [0, 0])
        if replayed != kept:
            problems.append(f"balance {pair[0]} {pair[1]}: stored {kept}, journal gives {replayed}")
    open_locked: dict[tuple[str, str], int] = defaultdict(int)
    stored_holds = {}
    for rowid, hold_hash, blob in rtx.conn.execute("SELECT id, hold_hash, value FROM ledger_holds"):
        try:
            hold, account, token, remaining = rtx.open_json("ledger_holds", "value", rowid, blob)
        except IntegrityError:
            problems.append(f"hold row {rowid} failed authentication")
            continue
        if not hmac.compare_digest(rtx.lookup("hold", hold), hold_hash):
            problems.append(f"hold row {rowid} is filed under another hold's key")
        stored_holds[hold] = [account, token, remaining]
        open_locked[(account, token)] += remaining
    for hold in set(stored_holds) | set(holds):
        if stored_holds.get(hold) != holds.get(hold):
            problems.append(f"hold {hold}: stored {stored_holds.get(hold)}, journal gives {holds.get(hold)}")
    for pair, (_, locked) in stored.items():
        if locked != open_locked.get(pair, 0):
            problems.append(f"locked {pair[0]} {pair[1]} is {locked} but its open holds total "
                            f"{open_locked.get(pair, 0)}")
