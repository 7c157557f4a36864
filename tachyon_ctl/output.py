"""tachyon-ctl's output: tables, key-value blocks, the order-book ladder and daemon.config for a person;
JSON when --json is given or the output is not a terminal."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

# --- output ---------------------------------------------------------------------------------------

TIME_KEYS = ("ts", "received_at", "created_at", "until", "unlocked_until")


def _cell(value: Any, key: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key in TIME_KEYS and isinstance(value, (int, float)):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value)) + "Z"
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return ", ".join(map(str, value)) if value else "-"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":")) if value else "-"
    return str(value)


def _human_keys(keys: list[str]) -> list[str]:
    """People read the decimal strings; the exact *_minor twins stay in --json."""
    return [k for k in keys if not k.endswith("_minor")]


def table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return "(none)"
    cols = columns or _human_keys(list(rows[0].keys()))
    cells = [[_cell(r.get(c), c) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths, strict=False)).rstrip()  # noqa: E731
    return "\n".join([line([c.upper() for c in cols]), *(line(r) for r in cells)])


def kv(doc: dict[str, Any]) -> str:
    keys = _human_keys(list(doc))
    width = max((len(k) for k in keys), default=0)
    return "\n".join(f"{k.ljust(width)}  {_cell(doc[k], k)}" for k in keys)


def order_book_ladder(book: dict[str, Any]) -> str:
    """A depth ladder: asks above (best lowest, nearest the spread), bids below."""
    asks, bids = book.get("asks", []), book.get("bids", [])
    from decimal import Decimal  # imported where used: tachyon-ctl's start-up time is part of its contract

    qtys = [Decimal(q) for _, q in asks + bids] or [Decimal(1)]
    top = max(qtys) or Decimal(1)
    bar = lambda q: "#" * max(1, int(Decimal(q) / top * 30))  # noqa: E731
    out = [f"{book.get('market')}  (seq {book.get('seq')})", f"{'PRICE':>14}  {'QTY':>14}"]
    for price, qty in reversed(asks):
        out.append(f"{price:>14}  {qty:>14}  ask {bar(qty)}")
    out.append(f"{'':>14}  {'-- spread --':>14}")
    for price, qty in bids:
        out.append(f"{price:>14}  {qty:>14}  bid {bar(qty)}")
    return "\n".join(out)


class Output:
    def __init__(self, as_json: bool):
        self.as_json = as_json

    def show(self, result: Any, human: Callable[[Any], str] | None = None) -> None:
        if self.as_json or human is None:
            print(json.dumps(result, indent=None if not sys.stdout.isatty() else 2))
        else:
            print(human(result))



def config_text(r: dict[str, Any]) -> str:
    """daemon.config for a person: where it came from, how the last reload went, then one key a line with the
    value last (a market's or a token's long value does not push the other columns off the screen)."""
    head = f"# {r['source']}: {r.get('reloads', 0)} reload(s) applied"
    last = r.get("last_reload")
    if last:
        when = _cell(last.get("at"), "ts")
        outcome = ("applied " + (", ".join(last.get("changed") or []) or "nothing")) if last.get("ok") \
            else f"REFUSED: {last.get('error')}"
        head += f"; last reload ({last.get('by')}, {when}): {outcome}"
    rows = [{"key": k, "from": v["from"], "value": v["value"]} for k, v in r["keys"].items()]
    return head + "\n" + table(rows, ["key", "from", "value"])


ORDER_COLS = ["id", "market", "side", "type", "price", "qty", "filled", "status", "fee"]
TRADE_COLS = ["id", "market", "price", "qty", "taker_side", "maker_fee", "taker_fee", "ts"]

