"""One durable commit per order: writer operations for engines that match inside the wallet's transaction.

For an engine with the optional in-transaction methods (``tachyond.engine.TransactionalEngine``), one writer
operation records a batch of orders and their holds (``record_orders_op``), matches each accepted order
(``submit_in_tx``), checks every event against this wallet's own orders (``checks.check_events``) and settles
it (``settle_op``: the same journal entries and idempotency keys as the two-step path), and stores the
engine's seq. It shares the wallet's group commit; the orders are answered after that single commit.

These run on the wallet's writer thread. The core holds the engine's trio lock around each of them, so the
engine's books are touched by nothing else meanwhile. ``open_orders`` is the service's dict of committed open
orders: only looked up here (the engine's lock keeps its own orders' entries still meanwhile).
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Mapping
from typing import Any

from ..engine import EngineOrder, Event
from ..errors import EngineError
from ..ledger.journal import LedgerTx
from .checks import check_events
from .market import Market
from .store import known_order_ids_read, record_orders_op, set_engine_seq_op, settle_op

NOTHING: dict = {"orders": {}, "trades": []}


class EngineEventRefused(EngineError):
    """An event of an in-transaction engine did not fit this wallet's orders: the whole operation rolls back."""


class InjectedFault(RuntimeError):
    """Test-only: the operation failed after the engine matched (``TACHYON_TEST_FAULT=fail_in_tx:<coid>``)."""


def settle_in_tx(tx: LedgerTx, engine: str, base_seq: int, events: list[Event], open_orders: Mapping[str, dict],
                 markets: Mapping[str, Market], store_seq: bool = True, *, after: int | None = None) -> dict:
    """Check ``events`` against this wallet's orders, then settle them (``settle_op``), in the caller's op.

    ``after`` is the engine's applied seq: every event that stores its seq must come after it (a positive
    integer), as the two-step path's ``_in_sequence`` requires; an engine repeating an applied seq would
    otherwise book a trade row again under a fill key the journal already holds. The first event that does
    not fit raises EngineEventRefused (nothing of the operation is kept).
    """
    if not events:
        return NOTHING
    if store_seq and after is not None:
        for ev in events:
            if type(ev.seq) is not int or ev.seq <= max(after, 0):
                raise EngineEventRefused(f"invalid event refused: engine {engine} sent seq {str(ev.seq)[:20]!r}, "
                                         f"not after its applied seq {after}")
    ids = {ev.order_id for ev in events if isinstance(ev.order_id, str)}
    ids |= {ev.maker_order_id for ev in events if isinstance(ev.maker_order_id, str)}
    orders = {i: {**open_orders[i], "trades": list(open_orders[i]["trades"])} for i in ids if i in open_orders}
    unknown = ids - set(orders)
    closed = known_order_ids_read(tx, unknown) if unknown else set()  # type: ignore[arg-type]  # a Tx reads too
    bad = check_events(events, engine, open_orders, closed, markets)
    if bad is not None:
        raise EngineEventRefused(f"invalid event refused: {bad[1]}")
    return settle_op(tx, engine, base_seq, events, orders, markets, store_seq)


def place_orders_op(tx: LedgerTx, engine: Any, name: str, base_seq: int, items: list[tuple[dict, str, int]],
                    engine_orders: list[EngineOrder], open_orders: Mapping[str, dict],
                    markets: Mapping[str, Market], fail_coid: str | None = None, after: int | None = None
                    ) -> tuple[list[tuple[str, Any]], list[Event], dict]:
    """Record the orders and holds, match each accepted one, settle every event, store the seq: one op.

    Returns record_orders_op's outcomes (refusals per order unchanged), the events and settle_op's result.
    """
    outcomes = record_orders_op(tx, items)
    new: dict[str, dict] = {}
    events: list[Event] = []
    for (kind, value), engine_order in zip(outcomes, engine_orders, strict=True):
        if kind == "new":
            new[value["id"]] = value
            events += engine.submit_in_tx(tx, engine_order)
    if fail_coid is not None and any(o["client_order_id"] == fail_coid for o in new.values()):
        raise InjectedFault(f"test fault: the operation failed after the engine matched ({fail_coid})")
    result = settle_in_tx(tx, name, base_seq, events, ChainMap(new, open_orders), markets,  # type: ignore[arg-type]
                          after=after)
    return outcomes, events, result


def cancel_op(tx: LedgerTx, engine: Any, name: str, base_seq: int, market: str, order_id: str, left_lots: int,
              open_orders: Mapping[str, dict], markets: Mapping[str, Market], after: int | None = None
              ) -> tuple[list[Event], dict]:
    """Cancel on the engine and settle the ``done`` (the rest of the hold released), in one op.

    An open order the engine does not rest (cannot happen while the books are the ledger's, but cheap to
    cover) is canceled here all the same, as the two-step path does, without touching the engine's seq.
    """
    events = engine.cancel_in_tx(tx, market, order_id)
    if events:
        return events, settle_in_tx(tx, name, base_seq, events, open_orders, markets, after=after)
    done = Event(0, market, "done", order_id, left_lots, reason="canceled")
    return [], settle_in_tx(tx, name, base_seq, [done], open_orders, markets, store_seq=False)


def reseed_op(tx: LedgerTx, engine: Any, name: str, base_seq: int, applied_seq: int,
              engine_orders: list[EngineOrder], open_orders: Mapping[str, dict], markets: Mapping[str, Market]
              ) -> tuple[int, int, list[Event], dict]:
    """Empty the engine's books and submit the ledger's open orders again in time order, settling what that
    gives (resting orders only rest again; an order recorded but never matched, from before this path,
    matches now), and store the seq: the same re-seed as at start, after a transaction that did not commit.

    Returns the (possibly moved) base seq, the applied seq, the events and the settlement.
    """
    last = engine.reset_in_tx(tx)
    if last < applied_seq:  # the engine's seqs went back (a new instance): move fill keys past what was applied
        base_seq, applied_seq = base_seq + applied_seq, last
    else:
        applied_seq = last
    events: list[Event] = []
    for engine_order in engine_orders:
        events += engine.submit_in_tx(tx, engine_order)
    result = settle_in_tx(tx, name, base_seq, events, open_orders, markets, after=applied_seq)
    if events:
        applied_seq = events[-1].seq
    else:
        set_engine_seq_op(tx, name, base_seq, applied_seq)
    return base_seq, applied_seq, events, result
