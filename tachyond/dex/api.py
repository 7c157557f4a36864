"""RPC methods of the DEX: dex.markets, dex.place_order, dex.cancel_order, dex.orders, dex.order_book, dex.trades,
dex.watch and dex.unwatch."""

from __future__ import annotations

from typing import Any

import trio

from ..errors import InvalidParams, NotFound
from ..rpc import Param
from ..rpc.dispatch import Registry, after_answer, current_connection
from .service import DexService

ORDER = ("{id, client_order_id, account, market, side, type, time_in_force, post_only, price, qty, filled, remaining, "
         "cost, fee, status, created_at, trades} with *_minor ints")
STATUSES = ("open", "closed", "canceled", "expired", "rejected")
MAX_WATCHES_PER_CONNECTION = 16


def register(registry: Registry, dex: DexService) -> None:
    """Register dex.*."""
    r = registry

    @r.method("dex.markets", result="[{symbol, base, quote, engine, tick, lot, min_notional, tick_minor, lot_minor, "
                                    "min_notional_minor, maker_fee_bps, taker_fee_bps, protection_bps, halted, "
                                    "halt_reason, engine_online}]")
    async def markets(p: dict[str, Any]) -> Any:
        """The markets of this daemon, from [[markets]]. halted is true once an engine event failed the checks
        against this wallet's orders, or the market's engine failed (to start, recover, submit or settle: a
        restart is needed); halt_reason says which and why (docs/dex.md says how to resume); engine_online is
        false while a shared engine's server is unreachable."""
        return [{**m.describe(), "halted": m.symbol in dex.halted_markets or m.engine in dex.failures,
                 "halt_reason": dex.halted_markets.get(m.symbol) or dex.failures.get(m.engine),
                 "engine_online": m.engine not in dex.offline}
                for m in dex.markets.values()]

    @r.method("dex.place_order", [
        Param("market", description="BASE/QUOTE, e.g. ZEC/USDC"),
        Param("side", enum=("buy", "sell")),
        Param("type", enum=("limit", "market")),
        Param("qty", description="base quantity in whole tokens, a whole number of lots"),
        Param("price", required=False, description="limit orders only: quote per base unit, a whole number of ticks"),
        Param("time_in_force", required=False, enum=("gtc", "ioc", "fok"),
              description="default gtc for limit, ioc for market (gtc is refused for market)"),
        Param("post_only", "boolean", required=False, description="limit only: refused if it would take"),
        Param("client_order_id", required=False,
              description="unique per account: a repeat of the same order returns the first; "
                          "with other content, Conflict -32014"),
        Param("account", required=False, description="default: default"),
    ], result=ORDER)
    async def place_order(p: dict[str, Any]) -> Any:
        """Place an order; the answer carries its fills. Refusals happen before anything is recorded or locked."""
        return await dex.place_order(p["market"], p["side"], p["type"], p["qty"], p.get("price"),
                                     p.get("time_in_force"), p.get("post_only", False), p.get("client_order_id"),
                                     p.get("account", "default"))

    @r.method("dex.cancel_order", [
        Param("order_id", required=False), Param("client_order_id", required=False),
        Param("account", required=False, description="with client_order_id; default: default"),
    ], result=ORDER)
    async def cancel_order(p: dict[str, Any]) -> Any:
        """Cancel an open order by order_id, or by client_order_id (and account); its hold is released."""
        return await dex.cancel_order(p.get("order_id"), p.get("client_order_id"), p.get("account"))

    @r.method(
        "dex.orders",
        [
            Param("account", required=False),
            Param("market", required=False),
            Param("status", required=False, enum=STATUSES),
            Param(
                "limit", "integer", required=False, minimum=1, description="at most this many (1..1000); default: all"
            ),
            Param(
                "after",
                required=False,
                description="an order id, the last of the previous page: the orders placed after it",
            ),
        ],
        result=f"[{ORDER}]",
    )
    async def orders(p: dict[str, Any]) -> Any:
        """Orders, oldest first, optionally filtered by account, market and status. Paging: pass the last
        order's id of a page as `after` (with the same filters and a `limit`) for the next; a page shorter
        than `limit` is the last."""
        return await dex.orders(p.get("account"), p.get("market"), p.get("status"), p.get("limit"), p.get("after"))

    @r.method("dex.order_book", [Param("market"), Param("depth", "integer", required=False, minimum=1)],
              result="{market, seq, bids: [[price, qty]...], asks: [[price, qty]...]} best first")
    async def order_book(p: dict[str, Any]) -> Any:
        """Aggregated price levels, best first (default depth 20)."""
        return await dex.order_book(p["market"], p.get("depth", 20))

    @r.method("dex.trades", [Param("market", required=False), Param("account", required=False),
                             Param("limit", "integer", required=False, minimum=1, description="1..1000, default 100"),
                             Param("before", "integer", required=False,
                                   description="a trade id, the last of the previous page: the trades older than it")],
              result="[{id, seq, market, price, qty, maker_order_id, taker_order_id, taker_side, maker_fee, "
                     "taker_fee, ts}] newest first")
    async def trades(p: dict[str, Any]) -> Any:
        """Trades, newest first (default limit 100), optionally for one market or one account (either side).
        Paging: pass the last trade's id of a page as `before` (with the same filters) for the next; a page
        shorter than `limit` is the last."""
        return await dex.trades(p.get("market"), p.get("account"), p.get("limit", 100), p.get("before"))

    @r.method("dex.watch", [Param("market", required=False, description="only this market's trades; default: all")],
              result="{subscription, market}; then notifications dex.trade {subscription, trade} on this connection")
    async def watch(p: dict[str, Any]) -> Any:
        """Stream settled trades on this socket connection as JSON-RPC notifications, until the connection closes
        or dex.unwatch. Each is {"method": "dex.trade", "params": {subscription, trade}} with a trade as
        dex.trades returns it. A client that falls 1,000 trades behind gets dex.watch_ended {subscription,
        reason} and no more."""
        conn = current_connection()
        if conn is None:
            raise InvalidParams("dex.watch streams on a socket connection; it cannot be called in process")
        market = dex.market(p["market"]).symbol if p.get("market") is not None else None
        if sum(1 for w in dex.watchers.values() if w.owner is conn) >= MAX_WATCHES_PER_CONNECTION:
            raise InvalidParams(f"at most {MAX_WATCHES_PER_CONNECTION} dex.watch streams per connection; "
                                "dex.unwatch one or open another connection")
        watcher = dex.watch(market, conn)

        answered = trio.Event()

        async def stream() -> None:
            try:
                await answered.wait()   # the subscription's answer goes out before its first trade
                async for trade in watcher.receive:
                    await conn.notify("dex.trade", {"subscription": watcher.id, "trade": trade})
                if watcher.ended:
                    await conn.notify("dex.watch_ended", {"subscription": watcher.id, "reason": watcher.ended})
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass   # the client went away
            finally:
                dex.unwatch(watcher.id)

        # Started now, so that a connection lost before the answer still ends (and unregisters) the stream.
        conn.start_stream(stream, lambda reason: dex.unwatch(watcher.id, reason))
        after_answer(answered.set)
        return {"subscription": watcher.id, "market": market}

    @r.method("dex.unwatch", [Param("subscription", description="the id dex.watch answered")],
              result="{subscription, stopped: true}")
    async def unwatch(p: dict[str, Any]) -> Any:
        """End a dex.watch subscription of this connection (trades already queued are still sent)."""
        watcher = dex.watchers.get(p["subscription"])
        if watcher is None or watcher.owner is not current_connection():
            raise NotFound(f"no dex.watch subscription {p['subscription']} on this connection")
        dex.unwatch(watcher.id)
        return {"subscription": p["subscription"], "stopped": True}
