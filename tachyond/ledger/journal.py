"""The journal: postings, LedgerTx (balances, holds, hash-chained entries) and its rules."""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from ..amounts import Token, fmt_minor
from ..errors import (
    AmountError,
    Conflict,
    InsufficientFunds,
    IntegrityError,
    InvalidParams,
    UnknownAccount,
    UnknownToken,
)
from ..wallet.writer import _MISSING, DIRTY, Tx, dumps

BUCKETS = ("available", "locked")

MAX_KEY_CHARS = 256

MAX_MEMO_CHARS = 1000

ZERO_MAC = bytes(32)

_NAME = r"[a-z0-9][a-z0-9_.-]{0,63}"

USER_ACCOUNT_RE = re.compile(_NAME)

SYSTEM_ACCOUNT_RE = re.compile(rf"fees|(?:external|venue|debt):{_NAME}")

_KIND_RE = re.compile(r"[a-z][a-z0-9_.:-]{0,63}")

LEDGER_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS ledger_accounts (id INTEGER PRIMARY KEY, name_hash BLOB NOT NULL UNIQUE,"
    " value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ledger_balances (id INTEGER PRIMARY KEY, key_hash BLOB NOT NULL UNIQUE,"
    " value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ledger_holds (id INTEGER PRIMARY KEY, hold_hash BLOB NOT NULL UNIQUE,"
    " value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ledger_journal (id INTEGER PRIMARY KEY, key_hash BLOB NOT NULL UNIQUE,"
    " body BLOB NOT NULL, mac BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ledger_head (one INTEGER PRIMARY KEY CHECK (one = 1), last_id INTEGER NOT NULL,"
    " last_mac BLOB NOT NULL, head_mac BLOB NOT NULL)",
    # Migration 6 (release 0.2): the history index, one row per (account, entry) keyed by an HMAC of the
    # account (never its name). Entries that existed before it are indexed at the first unlock; until then
    # 'history_index_through' in meta holds the last id not indexed and history by account scans.
    "CREATE TABLE IF NOT EXISTS ledger_history (account_tag BLOB NOT NULL, entry_id INTEGER NOT NULL,"
    " PRIMARY KEY (account_tag, entry_id)) WITHOUT ROWID",
    "INSERT OR REPLACE INTO meta (key, value) SELECT 'history_index_through', CAST(CAST(id AS TEXT) AS BLOB)"
    " FROM ledger_journal ORDER BY id DESC LIMIT 1",
]

@dataclass(frozen=True)
class Posting:
    """One leg of an entry: a signed change to an account's available or locked balance (locked legs name a hold)."""

    account: str
    token: str
    delta_minor: int
    bucket: str = "available"
    hold: str | None = None

def lock_postings(account: str, token: str, amount_minor: int, hold: str) -> list[Posting]:
    """Move amount_minor from available to locked under hold (an order's lock)."""
    return [Posting(account, token, -amount_minor), Posting(account, token, amount_minor, "locked", hold)]

def release_postings(account: str, token: str, amount_minor: int, hold: str) -> list[Posting]:
    """Give amount_minor of hold back to available (cancel, expiry, price improvement)."""
    return [Posting(account, token, -amount_minor, "locked", hold), Posting(account, token, amount_minor)]

def is_user_account(name: object) -> bool:
    """True for a user account, False for a system account; InvalidParams for a name that is neither."""
    if isinstance(name, str):
        return _classify(name)
    raise InvalidParams(f"invalid account name {name!r}: use 1-64 of a-z 0-9 _ . - starting with a letter or digit")

@functools.lru_cache(maxsize=4096)
def _classify(name: str) -> bool:
    if SYSTEM_ACCOUNT_RE.fullmatch(name):  # first: "fees" is reserved, though it looks like a user name
        return False
    if USER_ACCOUNT_RE.fullmatch(name):
        return True
    raise InvalidParams(f"invalid account name {name!r}: use 1-64 of a-z 0-9 _ . - starting with a letter or digit")

@functools.lru_cache(maxsize=1024)
def _kind_ok(kind: str) -> bool:
    return _KIND_RE.fullmatch(kind) is not None

def check_user_account(name: object) -> str:
    if not is_user_account(name):
        raise InvalidParams(f"{name!r} is a system account; a user account is needed here")
    return name  # type: ignore[return-value]

def check_amount_minor(amount_minor: object) -> int:
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor <= 0:
        raise AmountError("amount must be a positive integer of minor units")
    return amount_minor

def _check_text(what: str, value: object, max_chars: int) -> str:
    if not isinstance(value, str) or not value or len(value) > max_chars:
        raise InvalidParams(f"{what} must be a non-empty string of at most {max_chars} characters")
    return value

_fmt_minor = functools.lru_cache(maxsize=4096)(fmt_minor)  # entries repeat the same few amounts

def entry_dict(entry_id: int, body: dict, tokens: dict[str, Token]) -> dict:
    """The public shape of a journal entry, amounts as decimal strings plus *_minor ints."""
    postings = []
    for account, token, bucket, delta, hold in body["postings"]:
        tok = tokens.get(token)
        postings.append({"account": account, "token": token, "bucket": bucket,
                         "amount": _fmt_minor(delta, tok.decimals) if tok else None, "amount_minor": delta,
                         "hold": hold})
    return {"id": entry_id, "key": body["key"], "kind": body["kind"], "ts": body["ts"], "postings": postings,
            "memo": body["memo"], "links": body["links"]}

class LedgerTx(Tx):
    """Ledger primitives for an operation inside the writer's transaction (`await wallet.write(fn)` hands one to fn)."""

    def __init__(self, conn, keys, cache, *, tokens: dict[str, Token]):
        super().__init__(conn, keys, cache)
        self.tokens = tokens
        # The writer-cache namespaces, held directly: the hot path reads them several times per entry.
        self._accts = cache.setdefault("acct", {})
        self._bals = cache.setdefault("bal", {})
        self._holds = cache.setdefault("hold", {})
        self._heads = cache.setdefault("head", {})
        self._dirty = cache.setdefault(DIRTY, {})

    def _put(self, space: dict, key: object, value: object) -> None:
        """cache_put on a namespace dict: undone if this operation's savepoint rolls back."""
        self._undo.append((space, key, space.get(key, _MISSING)))
        space[key] = value

    # ----- accounts -----
    def account_exists(self, name: str) -> bool:
        known = self._accts.get(name)
        if known is None:
            row = self.conn.execute("SELECT 1 FROM ledger_accounts WHERE name_hash = ?",
                                    (self.lookup("account", name),)).fetchone()
            known = row is not None
            self._put(self._accts, name, known)
        return known

    def ensure_account(self, name: str) -> bool:
        """Create the account if missing (user or system); True when created."""
        is_user_account(name)
        if self.account_exists(name):
            return False
        cur = self.conn.execute("INSERT INTO ledger_accounts (name_hash, value) VALUES (?, x'')",
                                (self.lookup("account", name),))
        value = self.seal_json("ledger_accounts", "value", cur.lastrowid, {"name": name, "created_at": self.now})
        self.conn.execute("UPDATE ledger_accounts SET value = ? WHERE id = ?", (value, cur.lastrowid))
        self._put(self._accts, name, True)
        return True

    # ----- balances and holds (decrypted once, then served from the writer's cache) -----
    def _balance_row(self, account: str, token: str) -> tuple[int | None, int, int]:
        cached = self._bals.get((account, token))
        if cached is None:
            row = self.conn.execute("SELECT id, value FROM ledger_balances WHERE key_hash = ?",
                                    (self.lookup("balance", f"{account}\x00{token}"),)).fetchone()
            if row is None:
                cached = (None, 0, 0)
            else:
                acc, tok, available, locked = self.open_json("ledger_balances", "value", row[0], row[1])
                if (acc, tok) != (account, token):
                    raise IntegrityError(f"stored balance at ledger_balances|value|{row[0]} belongs to another row")
                cached = (row[0], available, locked)
            self._put(self._bals, (account, token), cached)
        return cached

    def balance(self, account: str, token: str) -> tuple[int, int]:
        """(available_minor, locked_minor) of an account in a token."""
        _, available, locked = self._balance_row(account, token)
        return available, locked

    def _hold_row(self, hold: str) -> tuple[int | None, str | None, str | None, int]:
        cached = self._holds.get(hold)
        if cached is None:
            row = self.conn.execute("SELECT id, value FROM ledger_holds WHERE hold_hash = ?",
                                    (self.lookup("hold", hold),)).fetchone()
            if row is None:
                cached = (None, None, None, 0)
            else:
                name, account, token, remaining = self.open_json("ledger_holds", "value", row[0], row[1])
                if name != hold:
                    raise IntegrityError(f"stored hold at ledger_holds|value|{row[0]} belongs to another row")
                cached = (row[0], account, token, remaining)
            self._put(self._holds, hold, cached)
        return cached

    def hold_remaining(self, hold: str) -> int:
        """What is still locked under a hold (0 for a closed or unknown hold)."""
        return self._hold_row(hold)[3]

    # ----- the journal -----
    def history_tag(self, account: str) -> bytes:
        """The history index's key for an account: an HMAC, so the file links entries, never names them."""
        return self.lookup("history", account)

    def _head(self) -> tuple[int, bytes]:
        head = self._heads.get(0)
        if head is None:
            row = self.conn.execute("SELECT last_id, last_mac FROM ledger_head WHERE one = 1").fetchone()
            head = (row[0], bytes(row[1])) if row else (0, ZERO_MAC)
            self._put(self._heads, 0, head)
        return head

    def post_entry(self, key: str, kind: str, postings: Iterable[Posting], memo: str | None = None,
                   links: list | None = None) -> dict:
        """Record one balanced entry and its balance changes, once per key; a repeat returns the first entry."""
        _check_text("idempotency key", key, MAX_KEY_CHARS)
        if not isinstance(kind, str) or not _kind_ok(kind):
            raise InvalidParams(f"invalid entry kind {kind!r}")
        if memo is not None:
            _check_text("memo", memo, MAX_MEMO_CHARS)
        if links is not None and (not isinstance(links, list)
                                  or not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in links)):
            raise InvalidParams("links must be a list of entry ids or keys")
        key_hash = self.lookup("entry", key)
        postings = list(postings)
        row = self.conn.execute("SELECT id, body FROM ledger_journal WHERE key_hash = ?", (key_hash,)).fetchone()
        if row is not None:
            body = self.open_json("ledger_journal", "body", row[0], row[1])
            # A key names one movement: the same key with other content (amount, account, token) is a caller's
            # mistake that returning the first entry would hide. No postings asks for the first entry as it is.
            if postings and not _same_content(body, kind, postings):
                raise Conflict(f"idempotency key {key!r} was already used for entry {row[0]} with different "
                               f"content (kind, accounts, tokens or amounts)", data={"key": key, "entry_id": row[0]})
            return {**entry_dict(row[0], body, self.tokens), "repeated": True}
        postings = [self._check_posting(p) for p in postings]
        if not postings:
            raise InvalidParams("an entry needs at least one posting")
        net = self._check_effects(postings)
        self._apply(postings, net)
        result = self._append(key, key_hash, kind, postings, memo, links)
        result["repeated"] = False
        return result

    def _check_posting(self, p: Posting) -> Posting:
        if type(p) is not Posting and not isinstance(p, Posting):
            raise InvalidParams("postings must be Posting objects")
        is_user_account(p.account)
        if p.token not in self.tokens:
            raise UnknownToken(f"unknown token {p.token!r}")
        delta = p.delta_minor
        if type(delta) is not int and (isinstance(delta, bool) or not isinstance(delta, int)) or delta == 0:
            raise AmountError("a posting's delta_minor must be a non-zero integer")
        bucket = p.bucket
        if bucket != "available" and bucket != "locked":
            raise InvalidParams(f"bucket must be one of {', '.join(BUCKETS)}")
        if (bucket == "locked") != (p.hold is not None):
            raise InvalidParams("locked postings, and only they, name a hold")
        if p.hold is not None:
            _check_text("hold id", p.hold, MAX_KEY_CHARS)
        return p

    def _check_effects(self, postings: list[Posting]) -> dict:
        """Refuse an unbalanced entry, an unknown account, an overdraft or an overdrawn hold, before any write."""
        per_token: dict[str, int] = {}
        net: dict[tuple[str, str], list[int]] = {}
        holds: dict[str, list] = {}
        for p in postings:
            token, delta = p.token, p.delta_minor
            per_token[token] = per_token.get(token, 0) + delta
            pair = (p.account, token)
            deltas = net.get(pair)
            if deltas is None:
                deltas = net[pair] = [0, 0]
            if p.hold is None:  # _check_posting: available legs, and only they, name no hold
                deltas[0] += delta
                continue
            deltas[1] += delta
            _, account, hold_token, _ = self._hold_row(p.hold)
            owner = holds.setdefault(p.hold, [p.account, token, 0])
            if (account is not None and (account, hold_token) != pair) or (owner[0], owner[1]) != pair:
                raise InvalidParams(f"hold {p.hold!r} belongs to another account or token")
            owner[2] += delta
        for token, total in per_token.items():
            if total != 0:
                raise InvalidParams(f"entry does not balance in {token}: postings sum to {total} minor units")
        for account in {a for a, _ in net}:
            if _classify(account) and not self.account_exists(account) and account != "default":
                raise UnknownAccount(f"unknown account {account!r}")
        for (account, token), deltas in net.items():
            if not _classify(account):
                continue
            have = self._balance_row(account, token)
            for i, bucket in enumerate(BUCKETS):
                if deltas[i] < 0 and have[i + 1] + deltas[i] < 0:  # type: ignore[operator]  # balance columns are ints; only the row id may be None
                    dec = self.tokens[token].decimals
                    raise InsufficientFunds(f"insufficient {bucket} {token}: need {fmt_minor(-deltas[i], dec)}, "
                                            f"have {fmt_minor(have[i + 1], dec)}")  # type: ignore[arg-type]  # balance columns are ints; only the row id may be None
        for hold, (_account, token, delta) in holds.items():
            remaining = self.hold_remaining(hold)
            if remaining + delta < 0:
                dec = self.tokens[token].decimals
                raise InsufficientFunds(f"hold {hold} has {fmt_minor(remaining, dec)} {token} remaining, "
                                        f"need {fmt_minor(-delta, dec)}")
        return {"balances": net, "holds": holds}

    def _apply(self, postings: list[Posting], net: dict) -> None:
        """Change balances and holds in the cache; their rows are written once per batch by flush()."""
        for account in {p.account for p in postings}:
            self.ensure_account(account)
        for (account, token), (d_available, d_locked) in net["balances"].items():
            rowid, available, locked = self._balance_row(account, token)
            if rowid is None:
                rowid = self.conn.execute("INSERT INTO ledger_balances (key_hash, value) VALUES (?, x'')",
                                          (self.lookup("balance", f"{account}\x00{token}"),)).lastrowid
            self._put(self._bals, (account, token), (rowid, available + d_available, locked + d_locked))
            self._put(self._dirty, ("bal", account, token), rowid)
        for hold, (account, token, delta) in net["holds"].items():
            rowid, _, _, remaining = self._hold_row(hold)
            if rowid is None:
                rowid = self.conn.execute("INSERT INTO ledger_holds (hold_hash, value) VALUES (?, x'')",
                                          (self.lookup("hold", hold),)).lastrowid
            self._put(self._holds, hold, (rowid, account, token, remaining + delta))
            self._put(self._dirty, ("hold", hold), rowid)

    def _append(self, key: str, key_hash: bytes, kind: str, postings: list[Posting], memo, links) -> dict:
        last_id, last_mac = self._head()
        entry_id = last_id + 1
        body = {"key": key, "kind": kind, "ts": round(self.now, 6),
                "postings": [[p.account, p.token, p.bucket, p.delta_minor, p.hold] for p in postings],
                "memo": memo, "links": links}
        body_ct = self.keys.cipher.seal(b"ledger_journal|body|%d" % entry_id, dumps(body))
        mac = self.keys.chain_mac(last_mac, entry_id.to_bytes(8, "big"), key_hash, body_ct)
        self.conn.execute("INSERT INTO ledger_journal (id, key_hash, body, mac) VALUES (?, ?, ?, ?)",
                          (entry_id, key_hash, body_ct, mac))
        # The history rows are written with the batch's others by flush(), in one executemany.
        self._put(
            self._dirty, ("hist", entry_id), [(self.history_tag(a), entry_id) for a in {p.account for p in postings}]
        )
        self._put(self._heads, 0, (entry_id, mac))
        self._put(self._dirty, ("head",), entry_id)
        return entry_dict(entry_id, body, self.tokens)

    def flush(self) -> None:
        """Write the balance rows, holds, history rows and journal head the batch's ops changed, once each,
        before COMMIT."""
        dirty = self._dirty
        if not dirty:
            return
        seal = self.keys.cipher.seal
        balances, holds, history, head = [], [], [], None
        bal_cache, hold_cache = self._bals, self._holds
        for item, rowid in dirty.items():
            if item[0] == "hist":
                history += rowid  # the entry's (account tag, entry id) rows
            elif item[0] == "bal":
                account, token = item[1], item[2]
                _, available, locked = bal_cache[(account, token)]
                balances.append((seal(b"ledger_balances|value|%d" % rowid, dumps([account, token, available, locked])),
                                 rowid))
            elif item[0] == "hold":
                hold = item[1]
                _, account, token, remaining = hold_cache[hold]
                holds.append((seal(b"ledger_holds|value|%d" % rowid, dumps([hold, account, token, remaining])), rowid))
            else:
                head = self._heads[0]
        if balances:
            self.conn.executemany("UPDATE ledger_balances SET value = ? WHERE id = ?", balances)
        if holds:
            self.conn.executemany("UPDATE ledger_holds SET value = ? WHERE id = ?", holds)
        if history:
            self.conn.executemany("INSERT OR IGNORE INTO ledger_history (account_tag, entry_id) VALUES (?, ?)",
                                  history)
        if head is not None:
            entry_id, mac = head
            head_mac = self.keys.chain_mac(b"head", entry_id.to_bytes(8, "big"), mac)
            self.conn.execute("INSERT OR REPLACE INTO ledger_head VALUES (1, ?, ?, ?)", (entry_id, mac, head_mac))
        dirty.clear()

def _same_content(body: dict, kind: str, postings: list[Posting]) -> bool:
    """Whether a stored entry body records this kind and these postings (in any order)."""
    stored = Counter(tuple(p) for p in body["postings"])
    given = Counter((p.account, p.token, p.bucket, p.delta_minor, p.hold) for p in postings)
    return body["kind"] == kind and stored == given
