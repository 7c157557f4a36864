"""The order pipeline: checks, then per market a group commit of orders (record and lock, submit, settle; or one
wallet transaction for an engine that matches inside it), answered when settled.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from typing import Any

import trio

from ..engine import DONE_CANCELED, EngineUnavailable, Event
from ..errors import Conflict, EngineError, InvalidParams, OrderRejected, TachyonError
from ..ledger.journal import check_user_account
from ..rpc.dispatch import detach_call_context
from .batch import Request as _Request
from .batch import take_batch as _take_batch
from .fused import EngineEventRefused, place_orders_op
from .market import Market
from .recovery import Recovery
from .state import FAULT_ENV
from .store import coid_repeat, order_public, order_read, record_orders_op

log = logging.getLogger("tachyond.dex")


class Orders(Recovery):
    """Places orders (the layer above the engines)."""

    async def place_order(self, market: str, side: str, type_: str, qty: str, price: str | None = None,
                          time_in_force: str | None = None, post_only: bool = False,
                          client_order_id: str | None = None, account: str = "default") -> dict:
        """Check, record and lock, match, settle; every refusal happens before anything is recorded."""
        m = self.market(market)
        check_user_account(account)
        if side not in ("buy", "sell"):
            raise InvalidParams("side must be buy or sell")
        if type_ == "limit":
            if price is None:
                raise InvalidParams("a limit order needs a price")
            tif = time_in_force or "gtc"
        elif type_ == "market":
            if price is not None:
                raise InvalidParams("a market order takes no price (it fills within protection_bps of the best price)")
            if post_only:
                raise InvalidParams("post_only is for limit orders")
            tif = time_in_force or "ioc"
            if tif == "gtc":
                raise InvalidParams("a market order is ioc or fok, never gtc")
        else:
            raise InvalidParams("type must be limit or market")
        if tif not in ("gtc", "ioc", "fok"):
            raise InvalidParams("time_in_force must be gtc, ioc or fok")
        if client_order_id is not None and not (isinstance(client_order_id, str) and 0 < len(client_order_id) <= 64):
            raise InvalidParams("client_order_id must be a string of 1 to 64 characters")
        qty_lots = m.qty_lots(qty)
        price_ticks = 0
        if type_ == "limit":
            price_ticks = m.price_ticks(price)
            m.check_min_notional(price_ticks, qty_lots)
        new_order: dict[str, Any] = {
            "id": "o" + secrets.token_hex(8), "client_order_id": client_order_id, "account": account,
            "market": m.symbol, "side": side, "type": type_, "time_in_force": tif, "post_only": bool(post_only),
            "price_ticks": price_ticks, "qty_lots": qty_lots, "filled_lots": 0, "cost_minor": 0, "fee_minor": 0,
            "status": "open", "created_at": time.time(), "trades": []}
        try:
            engine = await self._ensure_open(m)
        except EngineError:
            # A repeat of an order recorded before (its answer lost to a crash) is answered with that order, not
            # with "nothing was recorded": it exists, and is submitted when the engine is back. The same
            # client_order_id for another order is a Conflict, as when the engine is up.
            repeat = None
            if client_order_id is not None:
                repeat = await self._find_by_coid(account, client_order_id, new_order)
            if repeat is None:
                raise
            return repeat
        req = _Request(new_order)
        queue = self._queues[m.symbol]
        queue.append(req)
        self._wake[m.symbol].set()
        if not self._leading[m.symbol]:
            self._leading[m.symbol] = True
            if self._nursery is not None:
                self._nursery.start_soon(self._lead_task, m, engine)
            else:  # serve() is not running (an embedding that drives the service directly): the caller leads
                await self._lead_task(m, engine)
        await req.done.wait()
        if req.error is not None:
            raise req.error
        return req.result  # type: ignore[return-value]  # result is set when error is None

    async def _lead_task(self, m: Market, engine: Any) -> None:
        """Process the market's queue until it is empty and everything has settled, then stand down."""
        detach_call_context()   # started from inside the first caller's call; it serves every caller
        try:
            while True:
                with trio.CancelScope(shield=True):  # a batch, once recorded, is submitted and settled
                    await self._lead(m, engine)
                if not self._queues[m.symbol]:  # no checkpoint between this check and standing down
                    return
        finally:
            self._leading[m.symbol] = False

    async def _lead(self, m: Market, engine: Any) -> None:
        """Group commit: each round takes every order queued meanwhile as one batch.

        Batches are pipelined: batch k+1 is checked, recorded and submitted while batch k settles (its
        record write and k's settlement share a wallet commit); settlements still apply in engine order.
        """
        queue = self._queues[m.symbol]
        settling: list[trio.Event] = []
        async with trio.open_nursery() as nursery:
            while True:
                if queue:
                    batch = _take_batch(queue)
                    async with self._market_locks[m.symbol]:
                        await self._contain(batch, self._run_batch(m, engine, batch, nursery, settling))
                    continue
                settling[:] = [e for e in settling if not e.is_set()]
                if not settling:
                    return
                # No checkpoint since the checks above: a new order or a finished settlement sets this event.
                self._wake[m.symbol] = wake = trio.Event()
                await wake.wait()

    @staticmethod
    async def _contain(batch: list[_Request], work: Any) -> None:
        """Run a batch step; any failure answers its requests instead of leaving them waiting."""
        try:
            await work
        except Exception as exc:
            if isinstance(exc, TachyonError):   # a refusal the callers hear (a full disk, say): said, no traceback
                log.warning("order batch refused: %s", exc.message)
            else:
                log.exception("order batch failed")
            error = exc if isinstance(exc, TachyonError) else EngineError(f"order processing failed: {exc}")
            for req in batch:
                req.finish(error=error)

    async def _run_batch(self, m: Market, engine: Any, batch: list[_Request], nursery: trio.Nursery,
                         settling: list[trio.Event]) -> None:
        """Book checks (first order only), one write recording all, submits; settlement goes on in the nursery."""
        first = batch[0]
        if first.book_dependent:
            try:
                await self._check_book(engine, m, first.order)
            except TachyonError as book_error:
                error: TachyonError = book_error
                repeat = None
                if first.order["client_order_id"] is not None:
                    try:
                        repeat = await self._find_by_coid(first.order["account"], first.order["client_order_id"],
                                                          first.order)
                    except Conflict as conflict:  # the id names another order: that, not the book, is the error
                        error = conflict
                first.finish(result=repeat) if repeat is not None else first.finish(error=error)
                batch = batch[1:]
        if not batch:
            return
        try:
            self._ready(m)
        except EngineError as exc:
            for req in batch:   # refused before anything is recorded, except the repeats of recorded orders
                coid = req.order["client_order_id"]
                try:
                    repeat = await self._find_by_coid(req.order["account"], coid, req.order) if coid else None
                except Conflict as conflict:  # the id names another order: that is the error to report
                    req.finish(error=conflict)
                    continue
                req.finish(result=repeat) if repeat is not None else req.finish(error=exc)
            return
        items = [(r.order, *m.hold(r.order["side"], r.order["price_ticks"], r.order["qty_lots"],
                                   r.order["post_only"])) for r in batch]
        if m.engine in self._in_tx:
            await self._run_batch_in_tx(m, batch, items)
            return
        outcomes = await self.wallet.write(record_orders_op, items)
        if os.environ.get(FAULT_ENV) == "after_record":
            os._exit(1)  # test-only fault hook: recorded and locked, not submitted
        accepted: list[_Request] = []
        for req, (kind, value) in zip(batch, outcomes, strict=False):
            if kind == "refused":
                req.finish(error=value)
            elif kind == "repeat":
                req.finish(result=await self._public(value))
            else:
                req.order = value
                self._remember(value)
                self.metrics.orders_placed.labels(m.symbol).inc()
                accepted.append(req)
        if not accepted:
            return
        async with self._engine_locks[m.engine]:
            try:
                engine = self._ready(m)
            except EngineError as exc:
                # The engine went offline or halted while these were recorded: none was sent, so each is
                # canceled here at once and its hold released. The callers hear just that: their order exists
                # (canceled, nothing filled), so the refusal of an order never recorded would not be true.
                dones = [Event(0, m.symbol, "done", r.order["id"], r.order["qty_lots"], reason=DONE_CANCELED)
                         for r in accepted]
                await self._settle_next(m.engine, dones, store_seq=False)
                why = exc.message.split(" (nothing was recorded or locked)")[0]
                for req in accepted:
                    req.finish(error=EngineError(
                        f"order {req.order['id']} was recorded, then canceled before it was sent (nothing filled, "
                        f"its hold released): {why}"))
                return
            events, failed = await self._submit_all(m, engine, [r.order for r in accepted])
            if os.environ.get(FAULT_ENV) == "after_match":
                os._exit(1)  # test-only fault hook: the engine matched, the ledger has not settled
            slot = self._reserve_settlement(m.engine)
        for req in accepted:
            if req.order["id"] in failed:
                req.finish(error=failed[req.order["id"]])
        done = trio.Event()
        settling.append(done)
        nursery.start_soon(self._settle_batch, m, accepted, events, slot, done)

    async def _run_batch_in_tx(self, m: Market, batch: list[_Request], items: list) -> None:
        """One writer operation records, matches and settles the batch (an in-tx engine); answers after its commit.

        If the operation or its commit fails, nothing of the batch was kept, but the engine matched: its books
        are re-seeded from the ledger's committed open orders before it serves again, and the callers get
        the write's error.
        """
        name = m.engine
        engine_orders = [self._engine_order(r.order) for r in batch]
        fault = os.environ.get(FAULT_ENV)
        fail_coid = fault.removeprefix("fail_in_tx:") if fault and fault.startswith("fail_in_tx:") else None
        async with self._engine_locks[name]:
            engine = self._ready(m)
            await self._reseed(name, engine)
            try:
                outcomes, events, result = await self.wallet.write(
                    place_orders_op, engine, name, self._base_seq[name], items, engine_orders, self._open,
                    self.markets, fail_coid, self._applied[name])
            except EngineEventRefused as exc:
                self._refused(name, exc)
                self._reseed_due.add(name)
                raise EngineError(f"{exc.message}; settlement of engine {name} is halted (nothing was recorded "
                                  "or locked)") from None
            except BaseException:
                await self._reseed_after_failure(name, engine)
                raise
            if fault in ("after_record", "after_match"):
                os._exit(1)  # test-only fault hook: committed (recorded, matched, settled), not answered
            for kind, value in outcomes:
                if kind == "new":
                    self._remember(value)
                    self.metrics.orders_placed.labels(m.symbol).inc()
            self._after_settle(name, events, result, store_seq=True)
            await self._acknowledge(name, 1)
        by_order: dict[str, list[dict]] = {}
        for t in result["trades"]:
            by_order.setdefault(t["taker_order_id"], []).append(t)
            if t["maker_order_id"] != t["taker_order_id"]:
                by_order.setdefault(t["maker_order_id"], []).append(t)
        for req, (kind, value) in zip(batch, outcomes, strict=False):
            if kind == "refused":
                req.finish(error=value)
            elif kind == "repeat":
                req.finish(result=await self._public(value))
            else:
                oid = value["id"]
                req.finish(result=order_public(result["orders"].get(oid, value), by_order.get(oid, []), m))

    async def _settle_batch(self, m: Market, accepted: list[_Request], events: list[Event],
                            slot: tuple[trio.Event, trio.Event], done: trio.Event) -> None:
        try:
            await self._contain(accepted, self._answer_batch(m, accepted, events, slot))
        finally:
            for req in accepted:
                req.finish(error=EngineError("order was not settled"))  # no-op for requests already answered
            done.set()
            self._wake[m.symbol].set()

    async def _answer_batch(self, m: Market, accepted: list[_Request], events: list[Event],
                            slot: tuple[trio.Event, trio.Event]) -> None:
        result = await self._settle_in_order(m.engine, events, slot)
        for req in accepted:
            oid = req.order["id"]
            if oid not in result["orders"] and oid not in self._open:
                # Settled already from the feed (a shared engine): the stored order says how.
                req.finish(result=await self._public(req.order))
                continue
            trades = [t for t in result["trades"] if oid in (t["taker_order_id"], t["maker_order_id"])]
            req.finish(result=order_public(result["orders"].get(oid, self._open.get(oid, req.order)), trades, m))

    async def _submit_all(self, m: Market, engine: Any, orders: list[dict]) -> tuple[list[Event], dict]:
        """Submit in time order; a durable engine gets the plain limits at once so it can group-commit them.

        Returns the events and, for a shared engine that did not answer, the errors of the orders concerned.
        """
        events: list[Event] = []
        errors: list[Exception] = []
        failed: dict[str, Exception] = {}
        shared = hasattr(engine, "follow")

        async def submit(order: dict) -> None:
            try:
                events.extend(await engine.submit(self._engine_order(order)))
            except EngineUnavailable as exc:
                if not shared:
                    errors.append(exc)
                    return
                # Unknown whether the server took it: it stays open (and locked); on reconnect the feed says
                # what became of it, or it is submitted again.
                self._set_offline(m.engine, exc)
                self._unsent.setdefault(m.engine, set()).add(order["id"])
                failed[order["id"]] = EngineError(
                    f"engine {m.engine} did not answer ({exc.message}): order {order['id']} stays open with its "
                    "hold until the engine is back; then its fills settle from the feed, or it is submitted again")
            except Exception as exc:  # the order stays open in the ledger; recovery resubmits it after restart
                errors.append(exc)

        if not engine.durable or len(orders) == 1:
            for order in orders:
                await submit(order)
        else:
            if orders[0]["type"] == "market" or orders[0]["post_only"]:
                await submit(orders.pop(0))  # its book check holds only if it matches first
            async with trio.open_nursery() as nursery:
                for order in orders:
                    nursery.start_soon(submit, order)
        if errors:
            self.failures[m.engine] = f"submit failed ({type(errors[0]).__name__}: {errors[0]}); restart the daemon"
            log.error("engine %s: %s", m.engine, self.failures[m.engine])
        events.sort(key=lambda ev: ev.seq if type(ev.seq) is int else -1)
        return events, failed

    async def _depth(self, engine: Any, m: Market, levels: int) -> Any:
        """The engine's depth; for an in-tx engine under its lock (its books change on the writer thread)."""
        if m.engine not in self._in_tx:
            return await engine.depth(m.symbol, levels)
        async with self._engine_locks[m.engine]:
            return await engine.depth(m.symbol, levels)

    async def _check_book(self, engine: Any, m: Market, order: dict) -> None:
        """A market order's protection price and min notional, or a post-only order's no-take check."""
        depth = await self._depth(engine, m, 1)
        side = order["side"]
        if order["type"] == "market":
            best = depth.asks if side == "buy" else depth.bids
            if not best:
                # Nothing to trade with: accepted, and it expires with nothing filled (the contract's
                # "a market order that leaves something unfilled ends expired"). The lowest tick as its
                # bound keeps its hold minimal; under the market's lock nothing can arrive to match it.
                order["price_ticks"] = 1
                return
            m.check_min_notional(best[0][0], order["qty_lots"])
            order["price_ticks"] = m.protection_ticks(side, best[0][0])
        else:
            await self._check_post_only(depth, m, side, order["price_ticks"])

    @staticmethod
    async def _check_post_only(depth: Any, m: Market, side: str, price_ticks: int) -> None:
        if side == "buy" and depth.asks and depth.asks[0][0] <= price_ticks:
            raise OrderRejected(f"post-only buy at {m.fmt_price(price_ticks)} would take the ask at "
                                f"{m.fmt_price(depth.asks[0][0])}")
        if side == "sell" and depth.bids and depth.bids[0][0] >= price_ticks:
            raise OrderRejected(f"post-only sell at {m.fmt_price(price_ticks)} would take the bid at "
                                f"{m.fmt_price(depth.bids[0][0])}")

    async def _find_by_coid(self, account: str, client_order_id: str, order: dict) -> dict | None:
        """The first order under this client_order_id when ``order`` is the same order; None when the id is
        unused; Conflict when it was used for another order."""
        oid = self._open_coids.get((account, client_order_id))
        if oid is not None:
            return await self._public(coid_repeat(self._open[oid], order))  # type: ignore[arg-type]  # the stored order dict
        stored = await self.wallet.read(order_read, None, account, client_order_id)
        return None if stored is None else self._public_with(coid_repeat(stored, order))  # type: ignore[arg-type]  # the stored order dict

    async def _public(self, order: dict) -> dict:
        stored = await self.wallet.read(order_read, order["id"])
        return self._public_with(stored if stored is not None else {**order, "trade_rows": []})

    def _public_with(self, stored: dict) -> dict:
        return order_public(stored, stored["trade_rows"], self.markets[stored["market"]])
