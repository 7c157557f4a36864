"""tachyon-ctl: every RPC method as ``call METHOD [JSON]``, plus named commands for people at a terminal."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from .client import Client, DaemonNotRunning, RpcError

EXIT_OK, EXIT_RPC_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class UsageError(Exception):
    """A mistake in the command line; exit 2."""


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


# --- helpers --------------------------------------------------------------------------------------

def read_password(args: argparse.Namespace, prompt: str, *, confirm: bool = False) -> str:
    """From stdin to EOF with --password-stdin, else prompted without echo; never an argument."""
    if getattr(args, "password_stdin", False):
        text = sys.stdin.read()
        pw = text[:-1] if text.endswith("\n") else text
    else:
        if not sys.stdin.isatty():
            raise UsageError("no terminal to prompt for the password: use --password-stdin")
        import getpass  # imported where used, like decimal

        pw = getpass.getpass(prompt)
        if confirm and getpass.getpass("Repeat: ") != pw:
            raise UsageError("the two passwords differ")
    if not pw:
        raise UsageError("the password is empty")
    return pw


def read_two_passwords(args: argparse.Namespace) -> tuple[str, str]:
    if args.password_stdin:
        lines = sys.stdin.read().splitlines()
        if len(lines) < 2 or not lines[0] or not lines[1]:
            raise UsageError("--password-stdin for change-password reads two lines: the old password, then the new one")
        return lines[0], lines[1]
    return read_password(args, "Old password: "), read_password(args, "New password: ", confirm=True)


def only_market(client: Client, given: str | None) -> str:
    if given:
        return given
    markets = client.call("dex.markets", label="markets")
    if len(markets) == 1:
        return markets[0]["symbol"]
    names = ", ".join(m["symbol"] for m in markets) or "none"
    raise UsageError(f"--market is required when several markets exist ({names})")


def minor_to_decimal(client: Client, currency: str, minor: str) -> str:
    if not minor.isdigit():
        raise UsageError(f"--amount takes minor units as a whole number, not {minor!r} (use --value for whole tokens)")
    tokens = {t["symbol"].lower(): t for t in client.call("tokens.list", label="tokens")}
    token = tokens.get(currency.lower())
    if token is None:
        raise UsageError(f"currency {currency!r} is not a token of this daemon ({', '.join(sorted(tokens))})")
    from decimal import Decimal

    return str(Decimal(int(minor)).scaleb(-token["decimals"]))


def drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


PAGE = 1000  # the daemon's largest page


def page_all(client: Client, method: str, params: dict[str, Any], cursor: str, label: str) -> list[Any]:
    """Every item of a paged list method: each next page starts from the last id of the one before
    (``before`` for newest-first lists, ``after`` for oldest-first ones); a short page is the last."""
    items: list[Any] = []
    params = {**params, "limit": PAGE}
    seen: set[Any] = set()
    while True:
        page = client.call(method, params, label=label)
        items.extend(page)
        if len(page) < PAGE:
            return items
        last = page[-1]["id"]
        if last in seen:  # a daemon that ignores the cursor would loop for ever
            raise RpcError(-32000, f"{method} returned the same page twice (cursor {cursor}={last})")
        seen.add(last)
        params[cursor] = last


def listing(client: Client, args: argparse.Namespace, method: str, params: dict[str, Any], cursor: str,
            label: str) -> list[Any]:
    """One page as asked (limit, cursor), or with --all every page."""
    if getattr(args, "all", False):
        if getattr(args, "limit", None) is not None or getattr(args, cursor, None) is not None:
            raise UsageError(f"--all pages through everything: leave out --limit and --{cursor}")
        return page_all(client, method, drop_none(params), cursor, label)
    extra = {"limit": getattr(args, "limit", None), cursor: getattr(args, cursor, None)}
    return client.call(method, drop_none({**params, **extra}), label=label)


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


def render_help(doc: dict[str, Any], method: str | None) -> str:
    methods = {m["name"]: m for m in doc.get("methods", [])}
    if method is None:
        width = max(len(n) for n in methods)
        lines = ["Methods (tachyon-ctl call METHOD '{json params}'; tachyon-ctl help METHOD for details):"]
        lines += [f"  {n.ljust(width)}  {m.get('summary', '')}" for n, m in sorted(methods.items())]
        return "\n".join(lines)
    m = methods.get(method)
    if m is None:
        raise UsageError(f"no method {method!r}; `tachyon-ctl help` lists them")
    lines = [m["name"], "", m.get("description", "")]
    if m.get("params"):
        lines += ["", "Params:"]
        for p in m["params"]:
            t = p["schema"].get("type")
            t = "|".join(t) if isinstance(t, list) else t
            lines.append(
                f"  {p['name']} ({t}{'' if p['required'] else ', optional'})  {p.get('description', '')}".rstrip()
            )
    lines += ["", f"Result: {m.get('result', {}).get('description', '')}"]
    if m.get("x-plugin"):
        lines.append(f"Provided by plugin: {m['x-plugin']}")
    return "\n".join(lines)


# --- commands -------------------------------------------------------------------------------------

def run(args: argparse.Namespace, client: Client, out: Output) -> None:  # noqa: C901 - a flat dispatch table
    cmd, sub = args.cmd, getattr(args, "sub", None)
    call = client.call
    if cmd == "call":
        params = None
        if args.params is not None:
            try:
                params = json.loads(args.params)
            except json.JSONDecodeError as exc:
                raise UsageError(f"params are not JSON: {exc}") from None
        out.show(call(args.method, params, label=args.method))
    elif cmd == "status":
        out.show(call("daemon.info", label="status"), kv)
    elif cmd == "help":
        doc = call("rpc.discover", label="help")
        if out.as_json:
            out.show(doc)
        else:
            print(render_help(doc, args.method))
    elif cmd == "plugins":
        out.show(call("plugins.list", label="plugins"), lambda r: table(r, ["name", "version", "builtin", "hooks"]))
    elif cmd == "stop":
        out.show(call("daemon.stop", label="stop"), lambda r: "tachyond is stopping")
    elif cmd == "reload":
        out.show(call("daemon.reload", label="reload"),
                 lambda r: "applied: " + ", ".join(r["changed"]) if r["changed"] else "nothing changed")
    elif cmd == "config":
        out.show(call("daemon.config", label="config"), config_text)
    elif cmd == "wallet":
        if sub == "create":
            out.show(
                call(
                    "wallet.create",
                    {"password": read_password(args, "New wallet password: ", confirm=True)},
                    label="wallet-create",
                ),
                kv,
            )
        elif sub == "unlock":
            out.show(
                call(
                    "wallet.unlock",
                    drop_none({"password": read_password(args, "Wallet password: "), "timeout_s": args.timeout}),
                    label="wallet-unlock",
                ),
                kv,
            )
        elif sub == "lock":
            out.show(call("wallet.lock", label="wallet-lock"), kv)
        elif sub == "change-password":
            old, new = read_two_passwords(args)
            params = {"old_password": old, "new_password": new}
            if args.rotate_data_key:
                params["rotate_data_key"] = True
            out.show(call("wallet.change_password", params, label="wallet-change-password"), kv)
        elif sub == "backup":
            out.show(call("wallet.backup", {"path": args.path}, label="wallet-backup"), kv)
    elif cmd == "accounts":
        if getattr(args, "sub", None) == "create":
            out.show(call("accounts.create", {"name": args.name}, label="accounts-create"), kv)
        else:
            out.show(call("accounts.list", label="accounts"), table)
    elif cmd == "balance" or (cmd == "dex" and sub == "balance"):
        out.show(call("ledger.balances", drop_none({"account": args.account}), label="balance"),
                 lambda r: table(r, ["account", "token", "available", "locked"]))
    elif cmd == "ledger":
        if sub == "history":
            out.show(
                listing(client, args, "ledger.history", {"account": args.account}, "before", "history"),
                lambda r: table(
                    [
                        {
                            "id": e["id"],
                            "kind": e["kind"],
                            "ts": e.get("ts"),
                            "key": e.get("key"),
                            "postings": "; ".join(
                                f"{p['account']} {p['token']} {p.get('bucket', '')} {p['amount']}"
                                for p in e.get("postings", [])
                            ),
                        }
                        for e in r
                    ]
                ),
            )
        elif sub == "verify":
            out.show(call("ledger.verify", label="verify"), kv)
        elif sub in ("deposit", "withdraw"):
            out.show(
                call(
                    f"ledger.{sub}",
                    drop_none(
                        {
                            "account": args.account,
                            "token": args.token,
                            "amount": args.amount,
                            "reference": args.reference,
                        }
                    ),
                    label=sub,
                ),
                kv,
            )
        elif sub == "transfer":
            out.show(
                call(
                    "ledger.transfer",
                    drop_none(
                        {
                            "from": args.from_account,
                            "to": args.to_account,
                            "token": args.token,
                            "amount": args.amount,
                            "reference": args.reference,
                        }
                    ),
                    label="transfer",
                ),
                kv,
            )
    elif cmd == "onramp":
        if sub == "create-session":
            currency = args.currency or "usdc"
            if (args.amount is None) == (args.value is None):
                raise UsageError("give exactly one of --amount MINOR_UNITS or --value WHOLE_TOKENS")
            amount = args.value if args.value is not None else minor_to_decimal(client, currency, args.amount)
            # Minor units were converted with `currency`'s decimals: name it, so the daemon cannot apply another
            # token's (its provider default) to the converted amount.
            sent_currency = args.currency if args.value is not None else currency
            out.show(
                call(
                    "onramp.create_session",
                    drop_none(
                        {
                            "provider": args.provider,
                            "account": args.account,
                            "destination_address": args.destination,
                            "network": args.network,
                            "currency": sent_currency,
                            "amount": amount,
                            "customer_ip_address": args.customer_ip,
                        }
                    ),
                    label="create-session",
                ),
                kv,
            )
        elif sub == "pending":
            out.show(
                call("onramp.pending", drop_none({"provider": args.provider}), label="pending"),
                lambda r: table(r, ["session_id", "provider", "account", "token", "amount", "network", "received_at"]),
            )
        elif sub == "claim":
            out.show(
                call(
                    "onramp.claim", drop_none({"session_id": args.session_id, "account": args.account}), label="claim"
                ),
                kv,
            )
        elif sub == "reconcile":
            out.show(call("onramp.reconcile", drop_none({"lookback_h": args.lookback_h}), label="reconcile"), kv)
        elif sub == "reverse":
            out.show(
                call("onramp.reverse", {"session_id": args.session_id, "reason": args.reason}, label="reverse"), kv
            )
        elif sub == "quote":
            out.show(
                call(
                    "onramp.quote",
                    drop_none(
                        {
                            "provider": args.provider,
                            "currency": args.currency,
                            "network": args.network,
                            "amount": args.amount,
                            "amount_is": "source" if args.fiat else args.amount_is,
                        }
                    ),
                    label="quote",
                ),
                lambda r: kv(
                    {
                        **{k: v for k, v in r.items() if k != "fees"},
                        "network_fee": r["fees"]["network"],
                        "transaction_fee": r["fees"]["transaction"],
                    }
                ),
            )
        elif sub == "parked":
            out.show(call("onramp.parked", drop_none({"provider": args.provider}), label="parked"),
                     lambda r: table(r, ["session_id", "provider", "status", "account", "reason"]))
    elif cmd == "dex":
        if sub == "markets":
            out.show(call("dex.markets", label="markets"), table)
        elif sub in ("place-limit", "place-market"):
            side = {"bid": "buy", "ask": "sell"}.get(args.side, args.side)
            params = {"market": only_market(client, args.market), "side": side, "qty": args.qty,
                      "type": "limit" if sub == "place-limit" else "market", "account": args.account,
                      "client_order_id": args.client_order_id}
            if sub == "place-limit":
                params.update(price=args.price, time_in_force=args.tif, post_only=True if args.post_only else None)
            elif args.tif:
                params["time_in_force"] = args.tif
            out.show(
                call("dex.place_order", drop_none(params), label=sub),
                lambda o: kv({k: v for k, v in o.items() if k != "trades"}),
            )
        elif sub == "cancel":
            out.show(call("dex.cancel_order", {"order_id": args.order_id}, label="cancel"), kv)
        elif sub == "orders":
            out.show(listing(client, args, "dex.orders", {"account": args.account, "market": args.market,
                                                          "status": args.status}, "after", "orders"),
                     lambda r: table(r, ORDER_COLS))
        elif sub == "order-book":
            out.show(
                call(
                    "dex.order_book",
                    drop_none({"market": only_market(client, args.market), "depth": args.depth}),
                    label="order-book",
                ),
                order_book_ladder,
            )
        elif sub == "trades":
            out.show(
                listing(
                    client, args, "dex.trades", {"market": args.market, "account": args.account}, "before", "trades"
                ),
                lambda r: table(r, TRADE_COLS),
            )
        elif sub == "watch":
            watch_trades(client, args, out)


def watch_trades(client: Client, args: argparse.Namespace, out: Output) -> None:
    """Print each settled trade as it happens (a JSON line each when not on a terminal) until Ctrl-C or --count."""
    sub = client.call("dex.watch", drop_none({"market": args.market}), label="watch")
    if not out.as_json:
        print(f"watching trades on {sub['market'] or 'every market'} (Ctrl-C to stop)", file=sys.stderr)
    seen = 0
    while args.count is None or seen < args.count:
        msg = client.next_notification()
        params = msg.get("params") or {}
        if params.get("subscription") != sub["subscription"]:
            continue
        if msg["method"] == "dex.watch_ended":
            raise RpcError(-32000, f"the daemon ended the watch: {params.get('reason')}")
        if msg["method"] != "dex.trade":
            continue
        t = params["trade"]
        if out.as_json:
            print(json.dumps(t), flush=True)
        else:
            when = (
                time.strftime("%H:%M:%S", time.localtime(t["ts"]))
                if isinstance(t.get("ts"), (int, float))
                else t.get("ts")
            )
            print(f"{when}  {t['market']}  {t['taker_side']:<4} {t['qty']} @ {t['price']}  "
                  f"(trade {t['id']}, fees {t['maker_fee']} / {t['taker_fee']})", flush=True)
        seen += 1


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tachyon-ctl", description="Thin client of the tachyond JSON-RPC socket.")
    ap.add_argument("--socket", help="the daemon's socket (default: $TACHYON_SOCKET, else /run/tachyond/rpc.sock)")
    ap.add_argument("--json", action="store_true", help="print JSON (the default when stdout is not a terminal)")
    # The same two options after the command too (`tachyon-ctl status --json`); SUPPRESS keeps a value given
    # before the command from being reset by the subcommand's default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sp = ap.add_subparsers(dest="cmd", metavar="COMMAND")
    _add_parser = sp.add_parser

    def add_parser(*a, **kw):  # every command (and, below, every subcommand) accepts the common options
        kw.setdefault("parents", [common])
        parser = _add_parser(*a, **kw)
        _add_sub = parser.add_subparsers

        def add_subparsers(*sa, **skw):
            sub = _add_sub(*sa, **skw)
            inner = sub.add_parser

            def add_inner(*ia, **ikw):
                ikw.setdefault("parents", [common])
                return inner(*ia, **ikw)

            sub.add_parser = add_inner
            return sub

        parser.add_subparsers = add_subparsers
        return parser

    sp.add_parser = add_parser  # type: ignore[method-assign]  # wraps argparse's add_parser on this one object
    sp.required = True

    c = sp.add_parser("call", help="call any RPC method: call METHOD ['{json params}']")
    c.add_argument("method")
    c.add_argument("params", nargs="?")
    sp.add_parser("status", help="daemon version, uptime, wallet state, plugins, markets")
    h = sp.add_parser("help", help="list methods, or describe one (from rpc.discover)")
    h.add_argument("method", nargs="?")
    sp.add_parser("plugins", help="loaded plugins")
    sp.add_parser("stop", help="stop the daemon gracefully")
    sp.add_parser("reload", help="re-read the config file and apply what may change while running (daemon.reload)")
    sp.add_parser("config", help="the effective configuration and where each key came from (daemon.config)")
    cp = sp.add_parser("completion", help="print a shell completion script: completion bash|zsh")
    cp.add_argument("shell", choices=["bash", "zsh"])

    w = sp.add_parser("wallet", help="wallet create|unlock|lock|change-password|backup").add_subparsers(
        dest="sub", metavar="SUB"
    )
    w.required = True
    for name in ("create", "unlock", "change-password"):
        p = w.add_parser(name)
        p.add_argument("--password-stdin", action="store_true", help="read the password(s) from stdin (one per line)")
        if name == "unlock":
            p.add_argument("--timeout", type=int, metavar="SECONDS", help="lock again after this many seconds")
        if name == "change-password":
            p.add_argument("--rotate-data-key", action="store_true",
                           help="also replace the data key and re-encrypt everything under it")
    w.add_parser("lock")
    b = w.add_parser("backup")
    b.add_argument("path", help="where the daemon writes the (still encrypted) copy")

    a = sp.add_parser("accounts", help="list accounts (or: accounts create NAME)")
    asub = a.add_subparsers(dest="sub", metavar="SUB")
    ac = asub.add_parser("create")
    ac.add_argument("name")
    bal = sp.add_parser("balance", help="balances (all user accounts, or --account)")
    bal.add_argument("--account")

    lg = sp.add_parser("ledger", help="ledger history|verify|deposit|withdraw|transfer").add_subparsers(
        dest="sub", metavar="SUB"
    )
    lg.required = True
    hi = lg.add_parser("history")
    hi.add_argument("--account")
    hi.add_argument("--limit", type=int)
    hi.add_argument("--before", type=int, help="entry id to page back from")
    hi.add_argument("--all", action="store_true", help="every entry, page by page")
    lg.add_parser("verify")
    for name in ("deposit", "withdraw"):
        p = lg.add_parser(name)
        p.add_argument("--account")
        p.add_argument("--token", required=True)
        p.add_argument("--amount", required=True, help="whole tokens, e.g. 12.5")
        p.add_argument("--reference", required=True, help="idempotency reference (a tx hash, say)")
    t = lg.add_parser("transfer")
    t.add_argument("--from", dest="from_account", required=True)
    t.add_argument("--to", dest="to_account", required=True)
    t.add_argument("--token", required=True)
    t.add_argument("--amount", required=True)
    t.add_argument("--reference")

    o = sp.add_parser(
        "onramp", help="onramp create-session|pending|claim|reconcile|reverse|quote|parked"
    ).add_subparsers(dest="sub", metavar="SUB")
    o.required = True
    cs = o.add_parser("create-session")
    cs.add_argument("--destination", required=True, help="wallet address the provider delivers to")
    cs.add_argument("--network", help="ethereum (default from config), solana, polygon, base, …")
    cs.add_argument("--currency", help="usdc (default)")
    cs.add_argument("--amount", help="amount in MINOR units (e.g. 10000000 = 10 USDC)")
    cs.add_argument("--value", help="amount in whole tokens instead (e.g. 12.5)")
    cs.add_argument("--account")
    cs.add_argument("--provider")
    cs.add_argument("--customer-ip", help="the buyer's IP address: the provider refuses unsupported regions at once")
    qu = o.add_parser("quote", help="the provider's price and fees (nothing is created)")
    qu.add_argument("--currency", help="usdc (default from config)")
    qu.add_argument("--network", help="base, ethereum, … (default from config)")
    qu.add_argument("--amount", required=True, help="a decimal in WHOLE units (unlike create-session --amount): "
                    "100 = 100 USDC to receive by default, 100 USD to spend with --amount-is source")
    qi = qu.add_mutually_exclusive_group()
    qi.add_argument("--amount-is", choices=("destination", "source"),
                    help="destination (default): crypto to receive; source: fiat (usd) to spend")
    qi.add_argument("--fiat", action="store_true", help="same as --amount-is source")
    qu.add_argument("--provider")
    pk = o.add_parser("parked", help="sessions confirmed by the provider but not credited, with the reason")
    pk.add_argument("--provider")
    pe = o.add_parser("pending")
    pe.add_argument("--provider")
    cl = o.add_parser("claim")
    cl.add_argument("--session-id", required=True)
    cl.add_argument("--account")
    rc = o.add_parser("reconcile")
    rc.add_argument("--lookback-h", type=int)
    rv = o.add_parser("reverse")
    rv.add_argument("--session-id", required=True)
    rv.add_argument("--reason", required=True)

    d = sp.add_parser(
        "dex", help="dex markets|place-limit|place-market|cancel|orders|order-book|trades|watch|balance"
    ).add_subparsers(dest="sub", metavar="SUB")
    d.required = True
    d.add_parser("markets")
    for name in ("place-limit", "place-market"):
        p = d.add_parser(name)
        p.add_argument("--market", help="may be left out when only one market exists")
        p.add_argument("--side", required=True, choices=["bid", "ask", "buy", "sell"])
        p.add_argument("--qty", required=True, help="base quantity in whole tokens")
        if name == "place-limit":
            p.add_argument("--price", required=True, help="quote per base unit")
            p.add_argument("--post-only", action="store_true")
        p.add_argument("--tif", choices=["gtc", "ioc", "fok"])
        p.add_argument("--account")
        p.add_argument("--client-order-id")
    cn = d.add_parser("cancel")
    cn.add_argument("order_id")
    od = d.add_parser("orders")
    od.add_argument("--account")
    od.add_argument("--market")
    od.add_argument("--status", choices=["open", "closed", "canceled", "expired", "rejected"])
    od.add_argument("--limit", type=int)
    od.add_argument("--after", help="order id: the orders placed after it (the last id of the previous page)")
    od.add_argument("--all", action="store_true", help="every order, page by page")
    ob = d.add_parser("order-book")
    ob.add_argument("--market")
    ob.add_argument("--depth", type=int)
    tr = d.add_parser("trades")
    tr.add_argument("--market")
    tr.add_argument("--account")
    tr.add_argument("--limit", type=int)
    tr.add_argument("--before", type=int, help="trade id: the trades older than it (the last id of the previous page)")
    tr.add_argument("--all", action="store_true", help="every trade, page by page")
    wt = d.add_parser("watch", help="print trades as they settle (dex.watch)")
    wt.add_argument("--market", help="only this market (default: every market)")
    wt.add_argument("--count", type=int, help="stop after this many trades")
    db = d.add_parser("balance", help="alias of `balance`")
    db.add_argument("--account")
    return ap


def main(argv: list[str] | None = None) -> int:
    # Like other Unix tools: a reader that goes away (`| head`) ends us quietly, not with a traceback.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["__complete"]:  # hidden: what the completion scripts call on TAB
        from .completion import complete_main

        return complete_main(argv[1:])
    if argv[:1] == ["completion"]:
        from .completion import script

        if len(argv) != 2 or argv[1] not in ("bash", "zsh"):
            print("usage: tachyon-ctl completion bash|zsh", file=sys.stderr)
            return EXIT_USAGE
        sys.stdout.write(script(argv[1]))
        return EXIT_OK
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code not in (0, None) else EXIT_OK
    out = Output(args.json or not sys.stdout.isatty())
    client = Client(args.socket, who="tachyon-ctl")
    try:
        run(args, client, out)
    except UsageError as exc:
        print(f"tachyon-ctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RpcError as exc:
        print(f"tachyon-ctl: error {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_RPC_ERROR
    except DaemonNotRunning as exc:
        print(f"tachyon-ctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
