"""A real tachyond trading on `engine = "http"` against a real tachyon-engine-server: fills settle exactly once."""

from __future__ import annotations

import signal

from conftest import base_document
from test_http_engine import TOKEN, ServerProc, server_document

PASSWORD = "remote-engine-pw"


def daemon_document(dir_, url: str) -> dict:
    (dir_ / "pw").write_text(PASSWORD)
    return base_document(
        dir_,
        tokens=[{"symbol": "USDC", "decimals": 6}, {"symbol": "ZEC", "decimals": 8}, {"symbol": "BASE", "decimals": 8}],
        markets=[{"symbol": "ZEC/USDC", "engine": "http", "tick": "0.01", "lot": "0.0001", "min_notional": "1",
                  "maker_fee_bps": 10, "taker_fee_bps": 20}],
        engines={"http": {"url": url, "token_env": "TACHYON_ENGINE_TOKEN", "timeout_s": 5}},
        wallet={"password_file": str(dir_ / "pw")},
    )


def test_daemon_settles_fills_from_the_remote_engine_exactly_once(daemon_factory, sockdir, tmp_path):
    server = ServerProc(tmp_path, server_document(tmp_path / "engine-data")).start()
    try:
        d = daemon_factory(daemon_document(sockdir, server.url), env={"TACHYON_ENGINE_TOKEN": TOKEN}).start()
        d.call("wallet.create", {"password": PASSWORD})
        for account in ("maker", "taker"):
            d.call("accounts.create", {"name": account})
        d.call("ledger.deposit", {"account": "maker", "token": "ZEC", "amount": "2", "reference": "m"})
        d.call("ledger.deposit", {"account": "taker", "token": "USDC", "amount": "100", "reference": "t"})
        ask = d.call("dex.place_order", {"account": "maker", "market": "ZEC/USDC", "side": "sell", "type": "limit",
                                         "price": "40.00", "qty": "1"})
        assert ask["status"] == "open"
        assert d.call("dex.order_book", {"market": "ZEC/USDC"})["asks"] == [["40.00", "1.00"]]
        bid = d.call("dex.place_order", {"account": "taker", "market": "ZEC/USDC", "side": "buy", "type": "limit",
                                         "price": "40.00", "qty": "1"})
        assert (bid["status"], bid["filled"], bid["cost"], bid["fee"]) == ("closed", "1.00", "40.00", "0.08")
        assert "secret" not in d.stderr() and TOKEN not in d.stderr()

        # SIGKILL and restart: the fill is not settled a second time from the server's feed.
        d.signal(signal.SIGKILL)
        d.proc.wait(10)
        d2 = daemon_factory(d.doc, env={"TACHYON_ENGINE_TOKEN": TOKEN}).start()
        d2.call("dex.markets")
        bal = {(b["account"], b["token"]): b["available_minor"] for b in d2.call("ledger.balances")}
        assert bal[("taker", "ZEC")] == 100_000_000 and bal[("taker", "USDC")] == 100_000_000 - 40_000_000 - 80_000
        assert bal[("maker", "USDC")] == 40_000_000 - 40_000
        assert len(d2.call("dex.trades")) == 1
        assert d2.call("ledger.verify")["ok"] is True
    finally:
        server.kill()


def test_a_market_the_server_defines_differently_is_refused(daemon_factory, sockdir, tmp_path):
    server = ServerProc(tmp_path, server_document(tmp_path / "engine-data")).start()
    try:
        doc = daemon_document(sockdir, server.url)
        doc["markets"][0]["tick"] = "0.1"
        d = daemon_factory(doc, env={"TACHYON_ENGINE_TOKEN": TOKEN}).start()
        d.call("wallet.create", {"password": PASSWORD})
        import json

        answer = json.loads(d.raw(b'{"jsonrpc":"2.0","method":"dex.place_order","id":1,"params":{"market":"ZEC/USDC",'
                                  b'"side":"buy","type":"limit","price":"40.0","qty":"1"}}\n'))
        assert "error" in answer and "tick" in answer["error"]["message"], answer
        assert d.call("daemon.info")["version"]
    finally:
        server.kill()
