"""The double-entry token ledger: accounts, balances, holds and a MAC-chained journal, encrypted in the wallet file."""

from __future__ import annotations

import functools
import secrets

from ..amounts import Token, fmt_minor
from ..errors import Conflict, IntegrityError, InvalidParams, UnknownAccount, UnknownToken
from ..wallet.wallet import Wallet
from ..wallet.writer import ReadTx, Tx
from .journal import (
    LEDGER_SCHEMA,
    MAX_KEY_CHARS,
    ZERO_MAC,
    LedgerTx,
    Posting,
    _check_text,
    check_amount_minor,
    check_user_account,
    entry_dict,
    is_user_account,
)
from .verify import _verify_sync

MAX_HISTORY_LIMIT = 1000

HISTORY_BACKFILL_CHUNK = 5000


def _rekey_chain(tx: Tx, old_keys, new_keys) -> None:
    """After a rotation re-sealed the journal: recompute its MAC chain and head with the new chain key."""
    prev_mac, last_id = ZERO_MAC, 0
    rows = tx.conn.execute("SELECT id, key_hash, body FROM ledger_journal ORDER BY id").fetchall()
    for entry_id, key_hash, body in rows:
        prev_mac = new_keys.chain_mac(prev_mac, entry_id.to_bytes(8, "big"), bytes(key_hash), bytes(body))
        tx.conn.execute("UPDATE ledger_journal SET mac = ? WHERE id = ?", (prev_mac, entry_id))
        last_id = entry_id
    if tx.conn.execute("SELECT 1 FROM ledger_head WHERE one = 1").fetchone():
        head_mac = new_keys.chain_mac(b"head", last_id.to_bytes(8, "big"), prev_mac)
        tx.conn.execute("UPDATE ledger_head SET last_id = ?, last_mac = ?, head_mac = ? WHERE one = 1",
                        (last_id, prev_mac, head_mac))


def _rekey_history(tx: Tx, old_keys, new_keys) -> None:
    """After a rotation: the history index's account tags are lookups too, chained onto the new key."""
    rows = tx.conn.execute("SELECT account_tag, entry_id FROM ledger_history").fetchall()
    tx.conn.execute("DELETE FROM ledger_history")
    tx.conn.executemany("INSERT INTO ledger_history (account_tag, entry_id) VALUES (?, ?)",
                        [(new_keys.rehash_lookup(bytes(tag)), entry_id) for tag, entry_id in rows])


def _post(tx: LedgerTx, key: str, kind: str, postings: list[Posting]) -> dict:
    return tx.post_entry(key, kind, postings)


def _create_default(tx: LedgerTx) -> None:
    tx.ensure_account("default")


class Ledger:
    """The ledger's public API over a Wallet: accounts, deposits, withdrawals, transfers, balances, history, verify."""

    def __init__(self, wallet: Wallet, tokens: dict[str, Token]):
        self.wallet = wallet
        self.tokens = dict(tokens)
        self.history_rows_read = 0  # journal rows ledger.history has read (and decrypted), for tests and metrics
        wallet.add_schema("ledger", LEDGER_SCHEMA)
        wallet.tx_factory = functools.partial(LedgerTx, tokens=self.tokens)
        wallet.add_create_hook(_create_default)  # type: ignore[arg-type]  # the wallet's tx_factory makes LedgerTx
        # What a data-key rotation re-encrypts (wallet.change_password rotate_data_key).
        wallet.add_rekey("ledger_accounts", sealed=("value",), lookups=("name_hash",))
        wallet.add_rekey("ledger_balances", sealed=("value",), lookups=("key_hash",))
        wallet.add_rekey("ledger_holds", sealed=("value",), lookups=("hold_hash",))
        wallet.add_rekey("ledger_journal", sealed=("body",), lookups=("key_hash",))
        wallet.add_rekey_hook(_rekey_chain)
        wallet.add_rekey_hook(_rekey_history)

    def token(self, symbol: object) -> Token:
        if not isinstance(symbol, str) or symbol not in self.tokens:
            raise UnknownToken(f"unknown token {symbol!r}; known: {', '.join(sorted(self.tokens))}")
        return self.tokens[symbol]

    # ----- writes -----
    async def create_account(self, name: str) -> dict:
        check_user_account(name)
        return await self.wallet.write(self._create_account_op, name)

    @staticmethod
    def _create_account_op(tx: LedgerTx, name: str) -> dict:
        if not tx.ensure_account(name):
            raise Conflict(f"account {name!r} already exists")
        return {"name": name, "created_at": tx.now}

    async def deposit(self, account: str, token: str, amount_minor: int, reference: str,
                      source: str = "chain") -> dict:
        """Credit account from external:<source>, once per reference (key "deposit:<reference>")."""
        return await self._external("deposit", account, token, amount_minor, reference, f"external:{source}")

    async def withdraw(self, account: str, token: str, amount_minor: int, reference: str,
                       dest: str = "chain") -> dict:
        """Debit account to external:<dest>, once per reference (key "withdraw:<reference>")."""
        return await self._external("withdraw", account, token, amount_minor, reference, f"external:{dest}")

    async def _external(self, kind: str, account: str, token: str, amount_minor: int, reference: str,
                        outside: str) -> dict:
        """One entry between a user account and a system account for the outside world, keyed by reference."""
        check_user_account(account)
        self.token(token)
        check_amount_minor(amount_minor)
        _check_text("reference", reference, MAX_KEY_CHARS - 10)
        delta = amount_minor if kind == "deposit" else -amount_minor
        postings = [Posting(outside, token, -delta), Posting(account, token, delta)]
        return await self.wallet.write(_post, f"{kind}:{reference}", kind, postings)

    async def transfer(self, from_account: str, to_account: str, token: str, amount_minor: int,
                       reference: str | None = None) -> dict:
        """Move available funds between two user accounts (key "transfer:<reference>", random when omitted)."""
        check_user_account(from_account)
        check_user_account(to_account)
        if from_account == to_account:
            raise InvalidParams("from and to are the same account")
        self.token(token)
        check_amount_minor(amount_minor)
        if reference is None:
            reference = secrets.token_hex(12)
        _check_text("reference", reference, MAX_KEY_CHARS - 10)
        postings = [Posting(from_account, token, -amount_minor), Posting(to_account, token, amount_minor)]
        return await self.wallet.write(_post, f"transfer:{reference}", "transfer", postings)

    # ----- reads -----
    async def list_accounts(self) -> list[dict]:
        return await self.wallet.read(self._accounts_sync, True)

    @staticmethod
    def _accounts_sync(rtx: ReadTx, users_only: bool) -> list[dict]:
        _ = rtx.keys  # absent or locked: say so, even before any account is stored
        out = []
        for rowid, blob in rtx.conn.execute("SELECT id, value FROM ledger_accounts"):
            account = rtx.open_json("ledger_accounts", "value", rowid, blob)
            if not users_only or is_user_account(account["name"]):
                out.append({"name": account["name"], "created_at": account["created_at"]})
        return sorted(out, key=lambda a: a["name"])

    async def balances(self, account: str | None = None) -> list[dict]:
        """[{account, token, available, locked, *_minor}] for one account, or every user account."""
        if account is not None:
            is_user_account(account)
        return await self.wallet.read(self._balances_sync, account)

    def _balances_sync(self, rtx: ReadTx, account: str | None) -> list[dict]:
        if account is None:
            names = [a["name"] for a in self._accounts_sync(rtx, True)]
        else:
            exists = rtx.conn.execute("SELECT 1 FROM ledger_accounts WHERE name_hash = ?",
                                      (rtx.lookup("account", account),)).fetchone()
            if not exists and is_user_account(account) and account != "default":
                raise UnknownAccount(f"unknown account {account!r}")
            names = [account]
        out = []
        for name in names:
            for symbol, tok in self.tokens.items():
                row = rtx.conn.execute("SELECT id, value FROM ledger_balances WHERE key_hash = ?",
                                       (rtx.lookup("balance", f"{name}\x00{symbol}"),)).fetchone()
                available = locked = 0
                if row is not None:
                    acc, sym, available, locked = rtx.open_json("ledger_balances", "value", row[0], row[1])
                    if (acc, sym) != (name, symbol):
                        raise IntegrityError(f"stored balance at ledger_balances|value|{row[0]} belongs to another row")
                out.append({"account": name, "token": symbol, "available": fmt_minor(available, tok.decimals),
                            "locked": fmt_minor(locked, tok.decimals), "available_minor": available,
                            "locked_minor": locked})
        return out

    async def history(self, account: str | None = None, limit: int = 50, before: int | None = None) -> list[dict]:
        """Journal entries newest first (ids below `before`), optionally only those touching `account`."""
        if account is not None:
            is_user_account(account)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_HISTORY_LIMIT:
            raise InvalidParams(f"limit must be an integer from 1 to {MAX_HISTORY_LIMIT}")
        if before is not None and (isinstance(before, bool) or not isinstance(before, int)):
            raise InvalidParams("before must be an entry id")
        return await self.wallet.read(self._history_sync, account, limit, before)

    def _history_sync(self, rtx: ReadTx, account: str | None, limit: int, before: int | None) -> list[dict]:
        _ = rtx.keys  # absent or locked: say so, even when the journal is empty
        out = []
        before = before if before is not None else 2**63 - 1
        if account is not None and _history_index_through(rtx) is None:
            # The index (an HMAC of the account per entry) names the rows: no other entry is read.
            rows = rtx.conn.execute(
                "SELECT j.id, j.body FROM ledger_history h JOIN ledger_journal j ON j.id = h.entry_id"
                " WHERE h.account_tag = ? AND h.entry_id < ? ORDER BY h.entry_id DESC LIMIT ?",
                (rtx.lookup("history", account), before, limit))
        else:
            # Every entry, or an account's before its wallet's old entries are indexed: decrypt and filter.
            rows = rtx.conn.execute("SELECT id, body FROM ledger_journal WHERE id < ? ORDER BY id DESC", (before,))
        for entry_id, blob in rows:
            self.history_rows_read += 1
            body = rtx.open_json("ledger_journal", "body", entry_id, blob)
            if account is None or any(p[0] == account for p in body["postings"]):
                out.append(entry_dict(entry_id, body, self.tokens))
                if len(out) >= limit:
                    break
        return out

    async def index_history(self) -> int:
        """Index the entries a wallet held before the history index existed (after an upgrade), in chunks
        of HISTORY_BACKFILL_CHUNK entries per transaction; needs the key. Returns how many were indexed."""
        done = 0
        while True:
            n = await self.wallet.write(_index_history_chunk)
            if n is None:
                return done
            done += n

    async def verify(self) -> dict:
        """Replay the journal: chain MACs, per-token sums, balances and holds as stored -> {ok, entries, problems}."""
        return await self.wallet.read(_verify_sync)


def _history_index_through(rtx: ReadTx | Tx) -> int | None:
    """The last entry id not yet in the history index (None: every entry is indexed)."""
    row = rtx.conn.execute("SELECT value FROM meta WHERE key = 'history_index_through'").fetchone()
    return int(bytes(row[0])) if row else None


def _index_history_chunk(tx: LedgerTx) -> int | None:
    """Index the newest HISTORY_BACKFILL_CHUNK unindexed entries; None when nothing was left to do."""
    through = _history_index_through(tx)
    if through is None:
        return None
    low = max(0, through - HISTORY_BACKFILL_CHUNK)
    rows = []
    for entry_id, blob in tx.conn.execute("SELECT id, body FROM ledger_journal WHERE id > ? AND id <= ?",
                                          (low, through)):
        body = tx.open_json("ledger_journal", "body", entry_id, blob)
        rows += [(tx.history_tag(a), entry_id) for a in {p[0] for p in body["postings"]}]
    tx.conn.executemany("INSERT OR IGNORE INTO ledger_history (account_tag, entry_id) VALUES (?, ?)", rows)
    if low == 0:
        tx.conn.execute("DELETE FROM meta WHERE key = 'history_index_through'")
    else:
        tx.conn.execute("UPDATE meta SET value = ? WHERE key = 'history_index_through'", (str(low).encode(),))
    return through - low
