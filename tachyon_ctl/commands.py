"""tachyon-ctl's named commands: each turns its arguments into one or more RPC calls and prints the answer."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .client import Client, RpcError
from .output import ORDER_COLS, TRADE_COLS, Output, config_text, kv, order_book_ladder, table


class UsageError(Exception):
    """A mistake in the command line; exit 2."""


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


