"""tachyon-ctl: every RPC method as ``call METHOD [JSON]``, plus named commands for people at a terminal.

This module is the command line (the argparse tree and ``main``); ``commands`` runs what it parsed and
``output`` prints it."""

from __future__ import annotations

import argparse
import signal
import sys

from .client import Client, DaemonNotRunning, RpcError
from .commands import UsageError, run
from .output import Output

EXIT_OK, EXIT_RPC_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


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
