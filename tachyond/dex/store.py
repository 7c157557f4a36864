"""The DEX's encrypted tables in the wallet DB and the ledger operations on them: record, settle, read.

Write operations run inside the wallet's single writer (``await wallet.write(op, ...)``), so an order and
its hold, or a batch of engine events and the engine's applied sequence, commit together or not at all.
Order and trade values are sealed with AAD ``table|column|rowid``; ids, timestamps and sequences are clear.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..amounts import fmt_minor
from ..engine import DONE_CANCELED, DONE_EXPIRED, DONE_FILLED, DONE_POST_ONLY, DONE_SELF_TRADE, Event
from ..errors import Conflict, InsufficientFunds, NotFound, UnknownAccount
from ..ledger.journal import LedgerTx, Posting, lock_postings, release_postings
from ..wallet.writer import ReadTx
from .market import Market, fee_minor

DEX_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS dex_orders (id INTEGER PRIMARY KEY, oid_hash BLOB NOT NULL UNIQUE,"
    " coid_hash BLOB UNIQUE, is_open INTEGER NOT NULL, created_at REAL NOT NULL, value BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS dex_orders_open ON dex_orders (is_open) WHERE is_open = 1",
    "CREATE TABLE IF NOT EXISTS dex_trades (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, ts REAL NOT NULL,"
    " value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS dex_engines (name TEXT PRIMARY KEY, base_seq INTEGER NOT NULL,"
    " applied_seq INTEGER NOT NULL)",
    # The feed epoch each shared engine announced when this wallet last applied from it (docs/engines.md).
    "CREATE TABLE IF NOT EXISTS dex_engine_feeds (name TEXT PRIMARY KEY, epoch TEXT NOT NULL)",
]

STATUS_BY_REASON = {DONE_FILLED: "closed", DONE_CANCELED: "canceled", DONE_SELF_TRADE: "canceled",
                    DONE_EXPIRED: "expired", DONE_POST_ONLY: "rejected"}


def hold_name(order_id: str) -> str:
    return f"order:{order_id}"


def coid_lookup(tx: ReadTx | LedgerTx, account: str, client_order_id: str) -> bytes:
    return tx.lookup("dex-coid", f"{account}\x00{client_order_id}")


def _seal_order(tx: LedgerTx, order: dict) -> None:
    value = tx.seal_json("dex_orders", "value", order["rowid"], order)
    tx.conn.execute("UPDATE dex_orders SET value = ?, is_open = ? WHERE id = ?",
                    (value, 1 if order["status"] == "open" else 0, order["rowid"]))


# What a client_order_id names: a repeat with these equal is the same order (the first is returned); with any
# of them different it is a caller's mistake that returning the first order would hide (Conflict -32014).
ORDER_CONTENT = ("market", "side", "type", "time_in_force", "post_only", "price_ticks", "qty_lots")


def coid_repeat(first: Mapping[str, Any], order: Mapping[str, Any]) -> Mapping[str, Any]:
    """``first`` when ``order`` asks for the same thing under its client_order_id; Conflict otherwise."""
    differs = [k for k in ORDER_CONTENT if first.get(k) != order.get(k)]
    if differs:
        names = ", ".join(k.removesuffix("_ticks").removesuffix("_lots") for k in differs)
        raise Conflict(f"client_order_id {order['client_order_id']!r} was already used by order {first['id']} "
                       f"with different content ({names})",
                       data={"client_order_id": order["client_order_id"], "order_id": first["id"]})
    return first


def record_orders_op(tx: LedgerTx, items: list[tuple[dict, str, int]]) -> list[tuple[str, Any]]:
    """Store new orders and lock each hold in an entry keyed order:<id>, in the given (time) order.

    Per item: ("new", order), ("repeat", first order) for a client_order_id already used by the account for
    the same order, or ("refused", error) for a client_order_id used for another order (Conflict), an unknown
    account or short funds, checked before anything of it is written.
    """
    out: list[tuple[str, Any]] = []
    for order, token, hold_minor in items:
        account = order["account"]
        coid_hash = None
        if order["client_order_id"] is not None:
            coid_hash = coid_lookup(tx, account, order["client_order_id"])
            row = tx.conn.execute("SELECT id, value FROM dex_orders WHERE coid_hash = ?", (coid_hash,)).fetchone()
            if row is not None:
                first = tx.open_json("dex_orders", "value", row[0], row[1])
                try:
                    out.append(("repeat", coid_repeat(first, order)))
                except Conflict as exc:
                    out.append(("refused", exc))
                continue
        if account != "default" and not tx.account_exists(account):
            out.append(("refused", UnknownAccount(f"unknown account {account!r}")))
            continue
        available = tx.balance(account, token)[0]
        if available < hold_minor:
            dec = tx.tokens[token].decimals
            out.append(
                (
                    "refused",
                    InsufficientFunds(
                        f"insufficient available {token}: need "
                        f"{fmt_minor(hold_minor, dec)}, have {fmt_minor(available, dec)}"
                    ),
                )
            )
            continue
        rowid = tx.conn.execute("INSERT INTO dex_orders (oid_hash, coid_hash, is_open, created_at, value)"
                                " VALUES (?, ?, 1, ?, x'')",
                                (tx.lookup("dex-order", order["id"]), coid_hash, order["created_at"])).lastrowid
        order = {**order, "rowid": rowid}
        _seal_order(tx, order)
        hold = hold_name(order["id"])
        tx.post_entry(hold, "order", lock_postings(account, token, hold_minor, hold))
        out.append(("new", order))
    return out


def set_engine_seq_op(tx: LedgerTx, engine: str, base_seq: int, applied_seq: int) -> None:
    tx.conn.execute("INSERT OR REPLACE INTO dex_engines VALUES (?, ?, ?)", (engine, base_seq, applied_seq))


def set_engine_feed_op(tx: LedgerTx, engine: str, base_seq: int, applied_seq: int, epoch: str) -> None:
    """The applied sequence and the feed epoch it belongs to, together."""
    set_engine_seq_op(tx, engine, base_seq, applied_seq)
    tx.conn.execute("INSERT OR REPLACE INTO dex_engine_feeds VALUES (?, ?)", (engine, epoch))


def settle_op(tx: LedgerTx, engine: str, base_seq: int, events: list[Event], orders: dict[str, dict],
              markets: Mapping[str, Market], store_seq: bool = True) -> dict:
    """Apply engine events in order: fills, releases, order states, trades; store the last applied seq."""
    trades: list[dict] = []
    touched: dict[str, dict] = {}
    for ev in events:
        # The market is looked up only for an event of this wallet's orders (checked against them before):
        # another wallet's event on a shared engine may name a market this daemon does not list.
        if ev.kind == "fill":
            if ev.order_id not in orders and ev.maker_order_id not in orders:
                continue   # two other wallets' orders met on a shared engine: nothing of ours moves
            trades.append(_apply_fill(tx, engine, base_seq, ev, orders, markets[ev.market], touched))
        elif ev.kind == "done":
            order = orders.get(ev.order_id)
            if order is None or order["status"] != "open":
                continue
            market = markets[ev.market]
            hold = hold_name(order["id"])
            remaining = tx.hold_remaining(hold)
            if remaining:
                token = market.quote if order["side"] == "buy" else market.base
                tx.post_entry(f"release:{order['id']}", "release",
                              release_postings(order["account"], token, remaining, hold))
            order["status"] = STATUS_BY_REASON.get(ev.reason or "", "canceled")
            order["done_reason"] = ev.reason
            touched[order["id"]] = order
    for order in touched.values():
        _seal_order(tx, order)
    if store_seq and events:
        set_engine_seq_op(tx, engine, base_seq, events[-1].seq)
    return {"orders": touched, "trades": trades}


def _apply_fill(tx: LedgerTx, engine: str, base_seq: int, ev: Event, orders: dict[str, dict], m: Market,
                touched: dict[str, dict]) -> dict:
    """One fill as one entry keyed fill:<engine>:<seq>: quote and base legs, both fees, the buyer's release."""
    seq = base_seq + ev.seq
    taker, maker = orders.get(ev.order_id), orders.get(ev.maker_order_id or "")
    buy, sell = (taker, maker) if ev.taker_side == "buy" else (maker, taker)
    notional = m.notional_minor(ev.price_ticks, ev.qty_lots)
    base_minor = m.qty_minor(ev.qty_lots)
    taker_fee = fee_minor(notional, m.taker_fee_bps) if taker is not None else 0
    maker_fee = fee_minor(notional, m.maker_fee_bps) if maker is not None else 0
    buy_fee, sell_fee = (taker_fee, maker_fee) if ev.taker_side == "buy" else (maker_fee, taker_fee)
    venue = f"venue:{engine}"  # the counterparty of a fill against an order this wallet did not place
    postings: list[Posting] = []
    if buy is not None:
        reserved = ev.qty_lots * m.bid_hold_per_lot_minor(buy["price_ticks"], buy["post_only"])
        release = reserved - notional - buy_fee
        postings.append(Posting(buy["account"], m.quote, -reserved, "locked", hold_name(buy["id"])))
        if release:
            postings.append(Posting(buy["account"], m.quote, release))
        postings.append(Posting(buy["account"], m.base, base_minor))
    else:
        postings += [Posting(venue, m.quote, -notional), Posting(venue, m.base, base_minor)]
    if sell is not None:
        postings.append(Posting(sell["account"], m.base, -base_minor, "locked", hold_name(sell["id"])))
        if notional - sell_fee:
            postings.append(Posting(sell["account"], m.quote, notional - sell_fee))
    else:
        postings += [Posting(venue, m.base, -base_minor), Posting(venue, m.quote, notional)]
    if buy_fee + sell_fee:
        postings.append(Posting("fees", m.quote, buy_fee + sell_fee))
    tx.post_entry(f"fill:{engine}:{seq}", "fill", postings)
    trade = {"seq": seq, "engine": engine, "market": m.symbol, "price_ticks": ev.price_ticks, "qty_lots": ev.qty_lots,
             "maker_order_id": ev.maker_order_id, "taker_order_id": ev.order_id, "taker_side": ev.taker_side,
             "maker_fee_minor": maker_fee, "taker_fee_minor": taker_fee, "notional_minor": notional, "ts": tx.now,
             "maker_account": maker["account"] if maker else None, "taker_account": taker["account"] if taker else None}
    rowid = tx.conn.execute("INSERT INTO dex_trades (seq, ts, value) VALUES (?, ?, x'')", (seq, tx.now)).lastrowid
    trade["id"] = rowid
    tx.conn.execute("UPDATE dex_trades SET value = ? WHERE id = ?",
                    (tx.seal_json("dex_trades", "value", rowid, trade), rowid))
    for order, fee in ((taker, taker_fee), (maker, maker_fee)):
        if order is not None:
            order["filled_lots"] += ev.qty_lots
            order["cost_minor"] += notional
            order["fee_minor"] += fee
            order["trades"].append(rowid)
            touched[order["id"]] = order
    return trade


# ----- reads (on a reader connection) -----

def engine_seqs_read(rtx: ReadTx) -> dict[str, tuple[int, int]]:
    return {name: (base, applied) for name, base, applied in rtx.conn.execute("SELECT * FROM dex_engines")}


def engine_epochs_read(rtx: ReadTx) -> dict[str, str]:
    return dict(rtx.conn.execute("SELECT name, epoch FROM dex_engine_feeds"))


def known_order_ids_read(rtx: ReadTx, order_ids: Iterable[str]) -> set[str]:
    """Which of these ids are orders of this wallet (whatever their status)."""
    return {i for i in order_ids if isinstance(i, str) and rtx.conn.execute(
        "SELECT 1 FROM dex_orders WHERE oid_hash = ?", (rtx.lookup("dex-order", i),)).fetchone()}


def open_orders_read(rtx: ReadTx) -> list[dict]:
    """Every open order, in the order they were placed."""
    rows = rtx.conn.execute("SELECT id, value FROM dex_orders WHERE is_open = 1 ORDER BY id")
    return [rtx.open_json("dex_orders", "value", rowid, blob) for rowid, blob in rows]


def order_read(rtx: ReadTx, order_id: str | None, account: str | None = None,
               client_order_id: str | None = None) -> dict | None:
    """One order by id, or by (account, client_order_id); None when unknown."""
    if order_id is not None:
        row = rtx.conn.execute("SELECT id, value FROM dex_orders WHERE oid_hash = ?",
                               (rtx.lookup("dex-order", order_id),)).fetchone()
    else:
        row = rtx.conn.execute("SELECT id, value FROM dex_orders WHERE coid_hash = ?",
                               (coid_lookup(rtx, account or "default", client_order_id or ""),)).fetchone()
    if row is None:
        return None
    order = rtx.open_json("dex_orders", "value", row[0], row[1])
    return {**order, "trade_rows": trades_by_id_read(rtx, order["trades"])}


def trades_by_id_read(rtx: ReadTx, trade_ids: Iterable[int]) -> list[dict]:
    out = []
    for tid in trade_ids:
        row = rtx.conn.execute("SELECT value FROM dex_trades WHERE id = ?", (tid,)).fetchone()
        if row is not None:
            out.append(rtx.open_json("dex_trades", "value", tid, row[0]))
    return out


def orders_read(rtx: ReadTx, account: str | None, market: str | None, status: str | None,
                limit: int | None = None, after: str | None = None) -> list[dict]:
    """Orders matching the filters, oldest first, each with its trades (filters apply after decryption).

    ``after`` (an order id, the last one of the previous page) pages on: only orders placed after it.
    """
    after_row = 0
    if after is not None:
        row = rtx.conn.execute(
            "SELECT id FROM dex_orders WHERE oid_hash = ?", (rtx.lookup("dex-order", after),)
        ).fetchone()
        if row is None:
            raise NotFound(f"no order {after} (after must be the id of an order, the last of the previous page)")
        after_row = row[0]
    sql = ("SELECT id, value FROM dex_orders WHERE id > ?" + (" AND is_open = 1" if status == "open" else "")
           + " ORDER BY id")
    out: list[dict] = []
    for rowid, blob in rtx.conn.execute(sql, (after_row,)):
        order = rtx.open_json("dex_orders", "value", rowid, blob)
        if (account is None or order["account"] == account) and (market is None or order["market"] == market) \
                and (status is None or order["status"] == status):
            out.append({**order, "trade_rows": trades_by_id_read(rtx, order["trades"])})
            if limit is not None and len(out) >= limit:
                break
    return out


def trades_read(rtx: ReadTx, market: str | None, account: str | None, limit: int,
                before: int | None = None) -> list[dict]:
    """Trades newest first, filtered by market and by an account on either side; ``before`` (a trade id, the
    last one of the previous page) pages back: only trades older than it."""
    _ = rtx.keys  # locked -> WalletLocked even when there are no trades
    out = []
    for rowid, blob in rtx.conn.execute("SELECT id, value FROM dex_trades WHERE id < ? ORDER BY id DESC",
                                        (before if before is not None else 2**63 - 1,)):
        trade = rtx.open_json("dex_trades", "value", rowid, blob)
        if (market is None or trade["market"] == market) and \
                (account is None or account in (trade["maker_account"], trade["taker_account"])):
            out.append(trade)
            if len(out) >= limit:
                break
    return out


def order_public(order: dict, trades: list[dict], m: Market) -> dict:
    """The order as the RPC shows it: decimal strings with *_minor ints alongside."""
    remaining = order["qty_lots"] - order["filled_lots"]  # qty - filled, whatever the status (resting or not)
    is_market = order["type"] == "market"
    out = {"id": order["id"], "client_order_id": order["client_order_id"], "account": order["account"],
           "market": order["market"], "side": order["side"], "type": order["type"],
           "time_in_force": order["time_in_force"], "post_only": order["post_only"],
           "price": None if is_market else m.fmt_price(order["price_ticks"]),
           "price_minor": None if is_market else m.price_minor(order["price_ticks"]),
           "qty": m.fmt_qty(order["qty_lots"]), "qty_minor": m.qty_minor(order["qty_lots"]),
           "filled": m.fmt_qty(order["filled_lots"]), "filled_minor": m.qty_minor(order["filled_lots"]),
           "remaining": m.fmt_qty(remaining), "remaining_minor": m.qty_minor(remaining),
           "cost": m.fmt_quote(order["cost_minor"]), "cost_minor": order["cost_minor"],
           "fee": m.fmt_quote(order["fee_minor"]), "fee_minor": order["fee_minor"],
           "status": order["status"], "created_at": order["created_at"],
           "trades": [trade_public(t, m) for t in trades]}
    if is_market:
        out["protection_price"] = m.fmt_price(order["price_ticks"])
    return out


def trade_public(t: dict, m: Market) -> dict:
    return {"id": t["id"], "seq": t["seq"], "market": t["market"], "price": m.fmt_price(t["price_ticks"]),
            "price_minor": m.price_minor(t["price_ticks"]), "qty": m.fmt_qty(t["qty_lots"]),
            "qty_minor": m.qty_minor(t["qty_lots"]), "notional": m.fmt_quote(t["notional_minor"]),
            "notional_minor": t["notional_minor"], "maker_order_id": t["maker_order_id"],
            "taker_order_id": t["taker_order_id"], "taker_side": t["taker_side"],
            "maker_fee": m.fmt_quote(t["maker_fee_minor"]), "maker_fee_minor": t["maker_fee_minor"],
            "taker_fee": m.fmt_quote(t["taker_fee_minor"]), "taker_fee_minor": t["taker_fee_minor"], "ts": t["ts"]}
