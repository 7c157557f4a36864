"""Engine events checked against the wallet's own order records before any money moves (every engine).

An engine matches; it never decides what this wallet's orders are. Each event that names one of this
wallet's orders must fit that order as the ledger recorded it: its market, its side, its role (a maker is a
resting GTC order, a post-only order never takes, an order never meets itself), a whole positive quantity
no larger than what remains, and a price inside the order's limit (a market order's limit is its
protection price; a maker fills at exactly its own price). Events naming only other wallets' orders (a
shared engine's feed) are not this wallet's business and are passed over, after their types are checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..engine import DONE_REASONS, Event
from .market import Market

KINDS = ("fill", "rested", "done")


def _is_int(value: Any) -> bool:
    return type(value) is int   # a bool is not an int here


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_events(events: list[Event], engine: str, open_orders: Mapping[str, dict], closed_ids: set[str],
                 markets: Mapping[str, Market]) -> tuple[int, str] | None:
    """(index, reason) of the first event that does not fit this wallet's records, or None when all fit.

    ``open_orders`` are this wallet's open orders by id; ``closed_ids`` ids of its orders that are no longer
    open. The batch is checked as a whole: quantities accumulate over the fills of the same order.
    """
    remaining: dict[str, int] = {}
    closed = set(closed_ids)
    prev_seq = None
    for i, ev in enumerate(events):
        why = _check(ev, engine, open_orders, closed, markets, remaining, prev_seq)
        if why is not None:
            return (
                i,
                f"engine {engine} event seq {_short(ev.seq)} ({_short(ev.kind)} of market {_short(ev.market)}): {why}",
            )
        prev_seq = ev.seq if ev.seq else prev_seq
    return None


def _check(ev: Event, engine: str, open_orders: Mapping[str, dict], closed: set[str],
           markets: Mapping[str, Market], remaining: dict[str, int], prev_seq: int | None) -> str | None:
    if not _is_int(ev.seq) or ev.seq < 0:
        return "seq is not a non-negative integer"
    if prev_seq is not None and ev.seq and ev.seq <= prev_seq:
        return f"seq does not follow seq {prev_seq}"
    if ev.kind not in KINDS:
        return "unknown event kind"
    if not isinstance(ev.market, str) or not isinstance(ev.order_id, str):
        return "market and order_id must be strings"
    if ev.kind == "fill" and not isinstance(ev.maker_order_id, str):
        return "a fill needs a maker_order_id string"
    ids = [ev.order_id] + ([ev.maker_order_id] if ev.kind == "fill" else [])
    if not any(i in open_orders or i in closed for i in ids):
        return None   # another wallet's orders: nothing of ours moves
    if ev.kind != "fill":
        order = open_orders.get(ev.order_id)
        if order is None:
            return None  # a rested/done of an order already closed here moves nothing
        if ev.market != order["market"]:
            return f"names order {ev.order_id} of market {order['market']}"
        if not _is_int(ev.qty_lots) or ev.qty_lots < 0:
            return "qty_lots is not a non-negative integer"
        if ev.kind == "done" and ev.reason not in DONE_REASONS:
            return f"unknown done reason {_short(ev.reason)}"
        if ev.kind == "done":
            closed.add(ev.order_id)
        return None
    # A fill touching at least one of our orders.
    if not _is_int(ev.qty_lots) or ev.qty_lots <= 0:
        return f"qty_lots {_short(ev.qty_lots)} is not a positive integer"
    if not _is_int(ev.price_ticks) or ev.price_ticks <= 0:
        return f"price_ticks {_short(ev.price_ticks)} is not a positive integer"
    if ev.taker_side not in ("buy", "sell"):
        return f"taker_side {_short(ev.taker_side)} is not buy or sell"
    if ev.order_id == ev.maker_order_id:
        return "the taker and the maker are the same order"
    maker_side = "sell" if ev.taker_side == "buy" else "buy"
    for oid, role, side in ((ev.order_id, "taker", ev.taker_side), (ev.maker_order_id, "maker", maker_side)):
        if oid in closed and oid not in remaining:
            return f"fills {role} order {oid}, which is no longer open here"
        order = open_orders.get(oid)  # type: ignore[arg-type]  # a fill's ids and qty are checked above
        if order is None:
            if oid in closed:
                return f"fills {role} order {oid}, which is no longer open here"
            continue
        m = markets.get(order["market"])
        if ev.market != order["market"] or m is None or m.engine != engine:
            return f"fills {role} order {oid} of market {order['market']} (engine {m.engine if m else '?'})"
        if order["side"] != side:
            return f"fills {role} order {oid} as a {side}, but it is a {order['side']}"
        if role == "maker" and (order["time_in_force"] != "gtc" or order["type"] != "limit"):
            return f"makes order {oid} the maker, but a {order['type']} {order['time_in_force']} order never rests"
        if role == "taker" and order["post_only"]:
            return f"makes post-only order {oid} the taker"
        left = remaining.get(oid, order["qty_lots"] - order["filled_lots"])  # type: ignore[arg-type]  # a fill's ids and qty are checked above
        if ev.qty_lots > left:  # type: ignore[operator]  # a fill's ids and qty are checked above
            return f"fills {ev.qty_lots} lots of {role} order {oid}, which has {left} left"
        limit = order["price_ticks"]
        if role == "maker" and ev.price_ticks != limit:
            return f"fills maker order {oid} at {ev.price_ticks} ticks, not at its own price {limit}"
        if side == "buy" and ev.price_ticks > limit:
            return f"buys for order {oid} at {ev.price_ticks} ticks, above its limit {limit}"
        if side == "sell" and ev.price_ticks < limit:
            return f"sells for order {oid} at {ev.price_ticks} ticks, below its limit {limit}"
        remaining[oid] = left - ev.qty_lots  # type: ignore[index,operator]  # a fill's ids and qty are checked above
        if remaining[oid] == 0:  # type: ignore[index]  # a fill's ids and qty are checked above
            closed.add(oid)  # type: ignore[arg-type]  # a fill's ids and qty are checked above
    return None
