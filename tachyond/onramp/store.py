"""The onramp's tables in the wallet file and the operations on them (each runs inside one wallet.write or read).

Tables:
- ``onramp_seen``: dedupe keys (SHA-256, usable while locked) of every webhook event id, and of each
  (session, status) the provider's API confirmed (never a status an event body merely claimed).
- ``onramp_inbox``: verified events sealed to the wallet's X25519 key; ``processed_at`` set once handled;
  processed rows are deleted after ``INBOX_RETENTION_S`` (their outcome lives in the tables below).
- ``onramp_sessions``: the account each session this daemon created is for, and the address, network and
  currency it asked the provider to deliver to (a session delivered elsewhere is parked).
- ``onramp_pending``: confirmed topups waiting for a claim (deleted by the claim).
- ``onramp_outcomes``: what became of a session that is not pending: claimed, reversed, parked, rejected.
Everything but the seen keys, the sealed inbox and timestamps is AES-GCM under the data key, and the session
tables are keyed by an HMAC of the session id under the data key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from ..amounts import fmt_minor
from ..errors import NotFound
from ..ledger.journal import LedgerTx, Posting
from ..wallet.writer import ReadTx, Tx

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS onramp_seen (key_hash BLOB PRIMARY KEY) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS onramp_inbox (id INTEGER PRIMARY KEY, sealed BLOB NOT NULL,"
    " received_at REAL NOT NULL, processed_at REAL)",
    "CREATE INDEX IF NOT EXISTS onramp_inbox_unprocessed ON onramp_inbox (id) WHERE processed_at IS NULL",
    "CREATE TABLE IF NOT EXISTS onramp_sessions (id INTEGER PRIMARY KEY, session_hash BLOB NOT NULL UNIQUE,"
    " value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS onramp_pending (id INTEGER PRIMARY KEY, session_hash BLOB NOT NULL UNIQUE,"
    " value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS onramp_outcomes (id INTEGER PRIMARY KEY, session_hash BLOB NOT NULL UNIQUE,"
    " value BLOB NOT NULL)",
]

# Outcomes after which a session never becomes pending again.
SETTLED = ("claimed", "reversed")


def dedupe_key(wallet_id: str, provider: str, kind: str, value: str) -> bytes:
    """SHA-256 over (wallet public id | provider | kind | value): computable while locked (no data key)."""
    return hashlib.sha256("\x00".join(("tachyon-onramp-dedupe-v1", wallet_id, provider, kind, value)).encode()).digest()


def _session_hash(tx: Tx | ReadTx, session_id: str) -> bytes:
    return tx.lookup("onramp_session", session_id)


def _get(tx: Tx | ReadTx, table: str, session_id: str) -> tuple[int, dict] | None:
    row = tx.conn.execute(f"SELECT id, value FROM {table} WHERE session_hash = ?",
                          (_session_hash(tx, session_id),)).fetchone()
    if row is None:
        return None
    return row[0], tx.open_json(table, "value", row[0], row[1])


def _put(tx: Tx, table: str, session_id: str, value: dict) -> None:
    """Insert or replace a session's sealed row (sealed to its rowid, so a moved value fails to open)."""
    found = _get(tx, table, session_id)
    if found is None:
        rowid = tx.conn.execute(f"INSERT INTO {table} (session_hash, value) VALUES (?, x'')",
                                (_session_hash(tx, session_id),)).lastrowid
    else:
        rowid = found[0]
    tx.conn.execute(f"UPDATE {table} SET value = ? WHERE id = ?", (tx.seal_json(table, "value", rowid, value), rowid))


# ----- the inbox (works while locked: only SQL, no cipher) -----

def enqueue_op(tx: Tx, keys: list[bytes], sealed: bytes, received_at: float,
               confirmed: Sequence[bytes] = ()) -> bool:
    """Record the dedupe ``keys`` and the sealed event; False (nothing queued) when any key was already seen,
    or when any of ``confirmed`` (looked up, never recorded here) was."""
    fresh = True
    for key in keys:
        if tx.conn.execute("INSERT OR IGNORE INTO onramp_seen (key_hash) VALUES (?)", (key,)).rowcount == 0:
            fresh = False
    for key in confirmed:
        if tx.conn.execute("SELECT 1 FROM onramp_seen WHERE key_hash = ?", (key,)).fetchone() is not None:
            fresh = False
    if fresh:
        tx.conn.execute("INSERT INTO onramp_inbox (sealed, received_at) VALUES (?, ?)", (sealed, received_at))
    return fresh


# Processed webhook events are kept 30 days (for an operator looking into one), then deleted: what they
# decided is in onramp_pending / onramp_outcomes and the ledger, and their dedupe keys stay in onramp_seen.
INBOX_RETENTION_S = 30 * 86400


def prune_inbox_op(tx: Tx, older_than_s: float = INBOX_RETENTION_S) -> int:
    """Delete inbox rows processed more than ``older_than_s`` ago; unprocessed rows are never touched."""
    return tx.conn.execute("DELETE FROM onramp_inbox WHERE processed_at IS NOT NULL AND processed_at < ?",
                           (tx.now - older_than_s,)).rowcount


def due_inbox_sync(rtx: ReadTx, after_id: int, limit: int) -> list[tuple[int, bytes, float]]:
    """Unprocessed inbox rows after ``after_id``, oldest first."""
    return [(r[0], bytes(r[1]), r[2]) for r in rtx.conn.execute(
        "SELECT id, sealed, received_at FROM onramp_inbox WHERE processed_at IS NULL AND id > ? ORDER BY id LIMIT ?",
        (after_id, limit))]


def count_pending_sync(rtx: ReadTx) -> int:
    return rtx.conn.execute("SELECT count(*) FROM onramp_pending").fetchone()[0]


def inbox_backlog_sync(rtx: ReadTx) -> tuple[int, float | None]:
    """(unprocessed events, oldest received_at)."""
    count, oldest = rtx.conn.execute(
        "SELECT count(*), min(received_at) FROM onramp_inbox WHERE processed_at IS NULL").fetchone()
    return count, oldest


# ----- sessions, confirmation -----

def remember_session_op(tx: Tx, provider: str, session_id: str, account: str,
                        destination: dict | None = None) -> None:
    """Remember a session this wallet created: its account and ``destination`` (address, network, currency)."""
    _put(tx, "onramp_sessions", session_id, {"session_id": session_id, "provider": provider, "account": account,
                                             "created_at": tx.now, **(destination or {})})


def session_sync(rtx: ReadTx, session_id: str) -> dict | None:
    """What this wallet created a session for (None: not created here)."""
    found = _get(rtx, "onramp_sessions", session_id)
    return found[1] if found is not None else None


def parked_sync(rtx: ReadTx) -> list[dict]:
    """Every session parked (confirmed by the provider, not credited), oldest first."""
    _ = rtx.keys
    rows = [rtx.open_json("onramp_outcomes", "value", rowid, blob)
            for rowid, blob in rtx.conn.execute("SELECT id, value FROM onramp_outcomes ORDER BY id")]
    return [r for r in rows if r.get("state") == "parked"]


def confirm_op(tx: Tx, inbox_id: int, session_id: str, decision: dict[str, Any], seen_keys: list[bytes],
               forget_keys: Sequence[bytes] = ()) -> str:
    """Apply a decision for one inbox event in one transaction; returns what happened.

    ``decision["kind"]`` is ``pending`` (with token, amount_minor, network, provider, received_at,
    transaction_id), ``parked`` or ``rejected`` (with reason), or ``none`` (a non-final status).
    ``forget_keys`` are dedupe keys to drop, so that a later event or reconcile is queued again (a parked
    session is kept for review, not settled). The result is ``parked_again`` for the same park twice.
    """
    tx.conn.execute("UPDATE onramp_inbox SET processed_at = ? WHERE id = ?", (tx.now, inbox_id))
    for key in seen_keys:
        tx.conn.execute("INSERT OR IGNORE INTO onramp_seen (key_hash) VALUES (?)", (key,))
    for key in forget_keys:
        tx.conn.execute("DELETE FROM onramp_seen WHERE key_hash = ?", (key,))
    kind = decision["kind"]
    if kind == "none":
        return "none"
    pending = _get(tx, "onramp_pending", session_id)
    outcome = _get(tx, "onramp_outcomes", session_id)
    if pending is not None or (outcome is not None and outcome[1]["state"] in SETTLED):
        return "already"
    remembered = _get(tx, "onramp_sessions", session_id)
    account = remembered[1]["account"] if remembered is not None else None
    if kind == "pending":
        if outcome is not None:   # parked before, credited now that the cause is gone: no longer parked
            tx.conn.execute("DELETE FROM onramp_outcomes WHERE id = ?", (outcome[0],))
        account = account or "default"
        _put(tx, "onramp_pending", session_id, {
            "session_id": session_id, "provider": decision["provider"], "account": account,
            "token": decision["token"], "amount_minor": decision["amount_minor"], "network": decision["network"],
            "received_at": decision["received_at"], "transaction_id": decision.get("transaction_id")})
        return "pending"
    again = outcome is not None and outcome[1]["state"] == kind and outcome[1].get("reason") == decision["reason"]
    _put(tx, "onramp_outcomes", session_id, {"session_id": session_id, "provider": decision["provider"],
                                             "state": kind, "reason": decision["reason"], "at": tx.now,
                                             "status": decision.get("status"), "account": account})
    return f"{kind}_again" if again else kind


def pending_sync(rtx: ReadTx) -> list[dict]:
    _ = rtx.keys  # locked -> WalletLocked even when nothing is pending
    rows = [rtx.open_json("onramp_pending", "value", rowid, blob)
            for rowid, blob in rtx.conn.execute("SELECT id, value FROM onramp_pending ORDER BY id")]
    return rows


def outcome_sync(rtx: ReadTx, session_id: str) -> dict | None:
    found = _get(rtx, "onramp_outcomes", session_id)
    return found[1] if found is not None else None


# ----- claims and reversals -----

def claim_op(tx: LedgerTx, session_id: str, account: str | None) -> dict:
    """Credit a pending topup in one entry keyed ``onramp:<session>`` and remove it; NotFound if not pending."""
    found = _get(tx, "onramp_pending", session_id)
    if found is None:
        raise NotFound(f"not found: no pending topup {session_id}")
    rowid, topup = found
    account = account or topup["account"]
    token, amount_minor, provider = topup["token"], topup["amount_minor"], topup["provider"]
    entry = tx.post_entry(
        f"onramp:{session_id}",
        "onramp",
        [Posting(f"external:{provider}", token, -amount_minor), Posting(account, token, amount_minor)],
        memo=f"onramp topup, {provider} session {session_id}",
    )
    tx.conn.execute("DELETE FROM onramp_pending WHERE id = ?", (rowid,))
    _put(tx, "onramp_outcomes", session_id, {"session_id": session_id, "provider": provider, "state": "claimed",
                                             "account": account, "token": token, "amount_minor": amount_minor,
                                             "entry_id": entry["id"], "at": tx.now})
    decimals = tx.tokens[token].decimals
    return {"session_id": session_id, "provider": provider, "account": account, "token": token,
            "amount": fmt_minor(amount_minor, decimals), "amount_minor": amount_minor, "entry_id": entry["id"]}


def reverse_op(tx: LedgerTx, session_id: str, reason: str) -> dict:
    """Book a refund or chargeback: the account gives back what it has available, the rest becomes its debt."""
    found = _get(tx, "onramp_outcomes", session_id)
    if found is None or found[1]["state"] not in SETTLED:
        raise NotFound(f"not found: no claimed topup {session_id}")
    claim = found[1]
    account, token, amount_minor, provider = claim["account"], claim["token"], claim["amount_minor"], claim["provider"]
    key = f"reverse:onramp:{session_id}"
    if claim["state"] == "reversed":
        entry = tx.post_entry(key, "onramp_reversal", [])  # the first reversal (idempotent by key)
        return {**entry, "reversal": claim["reversal"]}
    available, _locked = tx.balance(account, token)
    debited = min(available, amount_minor)
    shortfall = amount_minor - debited
    postings = [Posting(f"external:{provider}", token, amount_minor)]
    if debited:
        postings.append(Posting(account, token, -debited))
    if shortfall:
        postings.append(Posting(f"debt:{account}", token, -shortfall))
    entry = tx.post_entry(key, "onramp_reversal", postings, memo=f"reversal of {provider} session {session_id}: "
                          f"{reason}", links=[claim["entry_id"]])
    decimals = tx.tokens[token].decimals
    reversal = {"session_id": session_id, "account": account, "token": token,
                "amount": fmt_minor(amount_minor, decimals), "amount_minor": amount_minor,
                "debited": fmt_minor(debited, decimals), "debited_minor": debited,
                "shortfall": fmt_minor(shortfall, decimals), "shortfall_minor": shortfall,
                "debt_account": f"debt:{account}" if shortfall else None, "reason": reason,
                "claim_entry_id": claim["entry_id"]}
    _put(tx, "onramp_outcomes", session_id, {**claim, "state": "reversed", "reversal": reversal,
                                             "reversal_entry_id": entry["id"]})
    return {**entry, "reversal": reversal}
