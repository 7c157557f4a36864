"""The money code pinned to exact figures: amounts, a market's fee and hold arithmetic, the ledger's posting and
idempotency rules, and settlement of engine events (record_orders_op / settle_op on a real wallet file).

These run in-process and fast on purpose: they are the test selection of `make mutate` (docs/reliability.md),
so every figure is asserted exactly, including where a fee does not divide and must be rounded UP.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
import trio

from tachyond import errors
from tachyond.amounts import Token, fmt_minor, parse_decimal, to_minor
from tachyond.config import MarketConfig
from tachyond.dex.market import Market, fee_minor
from tachyond.dex.store import DEX_SCHEMA, order_read, record_orders_op, settle_op, trades_read
from tachyond.engine import Event
from tachyond.ledger.journal import Posting
from tachyond.ledger.service import Ledger
from tachyond.wallet.wallet import Wallet

USDC, ZEC = Token("USDC", 6), Token("ZEC", 8)
TOKENS = {"USDC": USDC, "ZEC": ZEC}
PW = "money test password"


def market(maker: int = 10, taker: int = 20, **kw) -> Market:
    cfg = dict(symbol="ZEC/USDC", base="ZEC", quote="USDC", engine="memory", tick=Decimal("0.01"),
               lot=Decimal("0.0001"), min_notional=Decimal("1"), maker_fee_bps=maker, taker_fee_bps=taker,
               protection_bps=500)
    cfg.update(kw)
    return Market.from_config(MarketConfig(**cfg), TOKENS)


# ----- amounts -----

@pytest.mark.parametrize("text,decimals,minor", [
    ("12.5", 6, 12_500_000), ("0.000001", 6, 1), ("101.22", 6, 101_220_000), ("7", 0, 7), ("0", 6, 0),
    ("00.10", 8, 10_000_000), (" 3.25 ", 2, 325), (Decimal("1.5"), 1, 15), (42, 2, 4200),
])
def test_to_minor_exact(text, decimals, minor):
    assert to_minor(text, decimals, "T", allow_zero=True) == minor


@pytest.mark.parametrize("value,message", [
    ("0.0000001", "0.0000001 is finer than USDC's 6 decimals"),
    ("1e3", "amount '1e3' is not a plain non-negative decimal such as \"12.5\""),
    ("-1", "amount '-1' is not a plain non-negative decimal such as \"12.5\""),
    ("", "amount '' is not a plain non-negative decimal such as \"12.5\""),
    ("1.", "amount '1.' is not a plain non-negative decimal such as \"12.5\""),
    (1.5, "amount must be a decimal string such as \"12.5\", got float"),
    (True, "amount must be a decimal string such as \"12.5\", got bool"),
    (None, "amount must be a decimal string such as \"12.5\", got NoneType"),
    ("0", "amount must be greater than zero"),
    ("0.000", "amount must be greater than zero"),
    (Decimal("NaN"), "amount must be finite"),
    (Decimal("-2"), "amount -2 is negative"),
    ("1" * 65, "amount has more than 64 characters"),
    ("1.0000000000000000000000000000001", "1.0000000000000000000000000000001 is finer than USDC's 6 decimals"),
])
def test_to_minor_refusals_say_why(value, message):
    with pytest.raises(errors.AmountError) as info:
        USDC.to_minor(value)
    assert info.value.message == message


def test_amount_edges():
    assert len("1" * 62 + ".5") == 64 and USDC.to_minor("1" * 62 + ".5") == int("1" * 62) * 10**6 + 500_000
    with pytest.raises(errors.AmountError) as info:
        parse_decimal("x")
    assert info.value.message == "amount 'x' is not a plain non-negative decimal such as \"12.5\""
    with pytest.raises(errors.AmountError) as info:
        to_minor("x", 6, "USDC", what="qty")
    assert info.value.message == "qty 'x' is not a plain non-negative decimal such as \"12.5\""
    assert USDC.to_minor("0", allow_zero=True) == 0
    assert parse_decimal("12.50") == Decimal("12.50")
    with pytest.raises(errors.AmountError) as info:
        parse_decimal("x", "price")
    assert info.value.message == "price 'x' is not a plain non-negative decimal such as \"12.5\""
    with pytest.raises(errors.AmountError) as info:
        to_minor("0", 6, "USDC", what="qty")
    assert info.value.message == "qty must be greater than zero"


@pytest.mark.parametrize("minor,decimals,text", [
    (1_250_000, 6, "1.25"), (500_000_000, 6, "500.00"), (12_345, 8, "0.00012345"), (0, 6, "0.00"),
    (-1_020_000, 6, "-1.02"), (7, 0, "7"), (-7, 0, "-7"), (5, 1, "0.5"), (10, 1, "1.0"), (101_220_000, 6, "101.22"),
    (1, 6, "0.000001"), (100, 2, "1.00"), (-1, 8, "-0.00000001"),
])
def test_fmt_minor(minor, decimals, text):
    assert fmt_minor(minor, decimals) == text
    assert ZEC.fmt(100_000_000) == "1.00"


# ----- a market's arithmetic -----

@pytest.mark.parametrize("notional,bps,fee", [
    (5050, 20, 11),          # 10.1 -> 11: rounded up, never down
    (5050, 10, 6),           # 5.05 -> 6
    (5000, 20, 10),          # exact
    (1, 1, 1),               # the smallest fee is a whole minor unit
    (9_999, 1, 1), (10_000, 1, 1), (10_001, 1, 2),
    (0, 20, 0), (123_456_789, 0, 0),
    (100_000_000, 20, 200_000), (101_000_000, 20, 202_000), (101_000_000, 10, 101_000),
    (1_000_000_007, 33, 3_300_001),  # 3,300,000.0231 -> 3,300,001
])
def test_fee_minor_rounds_up(notional, bps, fee):
    assert fee_minor(notional, bps) == fee


def test_market_units_and_edges():
    m = market()
    assert (m.tick_minor, m.lot_minor, m.unit_minor, m.min_notional_minor) == (10_000, 10_000, 1, 1_000_000)
    assert m.price_ticks("50.50") == 5050 and m.qty_lots("2") == 20_000
    assert m.price_ticks("0.01") == 1 and m.qty_lots("0.0001") == 1   # one step is a whole, positive step
    assert m.notional_minor(5050, 1) == 5050 and m.notional_minor(5000, 20_000) == 100_000_000
    assert (m.price_minor(5050), m.qty_minor(20_000)) == (50_500_000, 200_000_000)
    assert (m.fmt_price(5050), m.fmt_qty(20_000), m.fmt_quote(101_220_000)) == ("50.50", "2.00", "101.22")
    for call, value, message in [
        (m.price_ticks, "10.005", "price 10.005 is off the tick 0.01 of ZEC/USDC"),
        (m.qty_lots, "0.00001", "qty 0.00001 is off the lot 0.0001 of ZEC/USDC"),
        (m.qty_lots, "0", "qty must be greater than zero"),
        (m.price_ticks, "-1", "price '-1' is not a plain non-negative decimal such as \"12.5\""),
    ]:
        with pytest.raises(errors.OrderRejected) as info:
            call(value)
        assert info.value.message == message
    third = market(tick=Decimal("0.03"))
    with pytest.raises(errors.OrderRejected) as info:
        third.price_ticks("0.1")  # an endless quotient (3.333...) is no whole number of ticks
    assert info.value.message == "price 0.1 is off the tick 0.03 of ZEC/USDC"
    assert third.price_ticks("0.09") == 3
    m.check_min_notional(100, 10_000)  # exactly 1.00: allowed
    with pytest.raises(errors.OrderRejected) as info:
        m.check_min_notional(100, 9_999)
    assert info.value.message == "notional 0.9999 USDC is under the min_notional 1.00 USDC of ZEC/USDC"
    assert m.describe() == {"symbol": "ZEC/USDC", "base": "ZEC", "quote": "USDC", "engine": "memory",
                            "tick": "0.01", "lot": "0.0001", "min_notional": "1.00", "tick_minor": 10_000,
                            "lot_minor": 10_000, "min_notional_minor": 1_000_000, "maker_fee_bps": 10,
                            "taker_fee_bps": 20, "protection_bps": 500}


@pytest.mark.parametrize("maker,taker", [(10, 20), (20, 10)])
def test_bid_hold_is_the_docs_worked_hold_at_the_higher_rate(maker, taker):
    """docs/dex.md: a bid of 2 ZEC at 50.50 holds 101.22 USDC, whichever of maker and taker is the higher fee."""
    m = market(maker, taker)
    assert m.reserve_fee_bps(False) == 20
    assert m.bid_hold_per_lot_minor(5050, False) == 5050 + 11
    assert m.hold("buy", 5050, 20_000, False) == ("USDC", 101_220_000)
    assert m.hold("sell", 5050, 20_000, False) == ("ZEC", 200_000_000)


def test_post_only_bid_holds_the_maker_fee_only():
    assert market(10, 20).hold("buy", 5050, 20_000, True) == ("USDC", 20_000 * (5050 + 6))
    assert market(30, 20).hold("buy", 5050, 20_000, True) == ("USDC", 20_000 * (5050 + 16))
    assert market(10, 20).reserve_fee_bps(True) == 10


@pytest.mark.parametrize("side,best,bound", [
    ("buy", 5000, 5250), ("buy", 5050, 5302),       # 5302.5 rounded down: never above the band
    ("sell", 5000, 4750), ("sell", 5050, 4798),     # 4797.5 rounded up: never below the band
    ("sell", 1, 1), ("buy", 1, 1),
])
def test_protection_bound_stays_inside_the_band(side, best, bound):
    assert market().protection_ticks(side, best) == bound


def test_protection_zero_and_full_band():
    assert market(protection_bps=0).protection_ticks("sell", 5000) == 5000
    assert market(protection_bps=10_000).protection_ticks("sell", 5000) == 1
    assert market(protection_bps=10_000).protection_ticks("buy", 5000) == 10_000


# ----- the ledger: posting and idempotency -----

async def started(path, schemas: bool = False) -> tuple[Wallet, Ledger]:
    wallet = Wallet(path, scrypt_n=2**10)
    ledger = Ledger(wallet, TOKENS)
    if schemas:
        wallet.add_schema("dex", DEX_SCHEMA)
    await wallet.start()
    await wallet.create(PW)
    return wallet, ledger


def bal(rows, account, token) -> tuple[int, int]:
    [row] = [r for r in rows if (r["account"], r["token"]) == (account, token)]
    return row["available_minor"], row["locked_minor"]


async def test_repeated_withdraw_and_transfer_after_the_balance_is_drained_return_the_first_entry(tmp_path):
    """The idempotency lookup comes before the funds check: a retry of a spent reference is not 'insufficient'."""
    with trio.fail_after(20):
        wallet, ledger = await started(tmp_path)
        try:
            await ledger.create_account("bob")
            await ledger.deposit("default", "USDC", 10_000_000, "d1")
            sent = await ledger.transfer("default", "bob", "USDC", 4_000_000, "t1")
            out = await ledger.withdraw("default", "USDC", 6_000_000, "w1")
            assert bal(await ledger.balances("default"), "default", "USDC") == (0, 0)
            again_out = await ledger.withdraw("default", "USDC", 6_000_000, "w1")
            again_sent = await ledger.transfer("default", "bob", "USDC", 4_000_000, "t1")
            assert again_out == {**out, "repeated": True} and out["repeated"] is False
            assert again_sent == {**sent, "repeated": True}
            assert [p["amount_minor"] for p in out["postings"]] == [6_000_000, -6_000_000]
            assert [p["account"] for p in out["postings"]] == ["external:chain", "default"]
            assert bal(await ledger.balances("bob"), "bob", "USDC") == (4_000_000, 0)
            assert len(await ledger.history()) == 3
            with pytest.raises(errors.InsufficientFunds) as info:
                await ledger.withdraw("default", "USDC", 1, "w2")
            assert info.value.message == "insufficient available USDC: need 0.000001, have 0.00"
            assert (await ledger.verify())["ok"]
        finally:
            await wallet.aclose()


async def test_entry_shapes_and_refusals(tmp_path):
    with trio.fail_after(20):
        wallet, ledger = await started(tmp_path)
        try:
            entry = await ledger.deposit("default", "ZEC", 150_000_000, "chain-1", source="zcash")
            assert (entry["id"], entry["key"], entry["kind"], entry["memo"], entry["links"]) == \
                (1, "deposit:chain-1", "deposit", None, None)
            assert entry["postings"] == [
                {"account": "external:zcash", "token": "ZEC", "bucket": "available", "amount": "-1.50",
                 "amount_minor": -150_000_000, "hold": None},
                {"account": "default", "token": "ZEC", "bucket": "available", "amount": "1.50",
                 "amount_minor": 150_000_000, "hold": None}]
            out = await ledger.withdraw("default", "ZEC", 50_000_000, "x", dest="zcash")
            assert out["key"] == "withdraw:x" and out["postings"][0]["account"] == "external:zcash"
            await ledger.create_account("amy")
            auto = await ledger.transfer("default", "amy", "ZEC", 1)
            assert auto["key"].startswith("transfer:") and len(auto["key"]) == len("transfer:") + 24
            with pytest.raises(errors.InvalidParams) as info:
                await ledger.transfer("amy", "amy", "ZEC", 1, "same")
            assert info.value.message == "from and to are the same account"
            with pytest.raises(errors.InvalidParams):
                await ledger.transfer("default", "fees", "ZEC", 1, "sys")
            with pytest.raises(errors.InvalidParams):
                await ledger.deposit("default", "ZEC", 1, "r" * 247)
            assert (await ledger.deposit("default", "ZEC", 1, "r" * 246))["key"] == "deposit:" + "r" * 246
            assert (await ledger.transfer("default", "amy", "ZEC", 1, "t" * 246))["key"] == "transfer:" + "t" * 246
            with pytest.raises(errors.InvalidParams) as info:
                await ledger.transfer("default", "amy", "ZEC", 1, "t" * 247)
            assert info.value.message == "reference must be a non-empty string of at most 246 characters"
            with pytest.raises(errors.InvalidParams) as info:
                await ledger.withdraw("default", "ZEC", 1, "")
            assert info.value.message == "reference must be a non-empty string of at most 246 characters"
            for amount in (0, -1, True, 1.0, "1"):
                with pytest.raises(errors.AmountError) as info:
                    await ledger.transfer("default", "amy", "ZEC", amount, "zero")
                assert info.value.message == "amount must be a positive integer of minor units"

            def post(tx, key, kind, postings, memo=None, links=None):
                return tx.post_entry(key, kind, postings, memo, links)

            good = [Posting("default", "ZEC", -1), Posting("amy", "ZEC", 1)]
            for args, exc, message in [
                (
                    ("", "x", good),
                    errors.InvalidParams,
                    "idempotency key must be a non-empty string of at most 256 characters",
                ),
                (("k" * 257, "x", good), errors.InvalidParams, None),
                (("k", "Bad", good), errors.InvalidParams, "invalid entry kind 'Bad'"),
                (("k", 5, good), errors.InvalidParams, "invalid entry kind 5"),
                (
                    ("k", "x", good, ""),
                    errors.InvalidParams,
                    "memo must be a non-empty string of at most 1000 characters",
                ),
                (("k", "x", good, "m" * 1001), errors.InvalidParams, None),
                (("k", "x", good, None, "1"), errors.InvalidParams, "links must be a list of entry ids or keys"),
                (("k", "x", good, None, [True]), errors.InvalidParams, "links must be a list of entry ids or keys"),
                (("k", "x", good, None, [1.5]), errors.InvalidParams, None),
                (("k", "x", []), errors.InvalidParams, "an entry needs at least one posting"),
                (("k", "x", [("default", "ZEC", -1)]), errors.InvalidParams, "postings must be Posting objects"),
                (
                    ("k", "x", [Posting("default", "DOGE", -1), Posting("amy", "DOGE", 1)]),
                    errors.UnknownToken,
                    "unknown token 'DOGE'",
                ),
                (
                    ("k", "x", [Posting("default", "ZEC", 0)]),
                    errors.AmountError,
                    "a posting's delta_minor must be a non-zero integer",
                ),
                (("k", "x", [Posting("default", "ZEC", True), Posting("amy", "ZEC", -1)]), errors.AmountError, None),
                (("k", "x", [Posting("default", "ZEC", 1.0), Posting("amy", "ZEC", -1)]), errors.AmountError, None),
                (
                    ("k", "x", [Posting("default", "ZEC", -1, "spare")]),
                    errors.InvalidParams,
                    "bucket must be one of available, locked",
                ),
                (
                    ("k", "x", [Posting("default", "ZEC", -1, "locked")]),
                    errors.InvalidParams,
                    "locked postings, and only they, name a hold",
                ),
                (
                    ("k", "x", [Posting("default", "ZEC", -1, "available", "h")]),
                    errors.InvalidParams,
                    "locked postings, and only they, name a hold",
                ),
                (
                    ("k", "x", [Posting("default", "ZEC", -1, "locked", "")]),
                    errors.InvalidParams,
                    "hold id must be a non-empty string of at most 256 characters",
                ),
                (
                    ("k", "x", [Posting("default", "ZEC", -1), Posting("amy", "ZEC", 2)]),
                    errors.InvalidParams,
                    "entry does not balance in ZEC: postings sum to 1 minor units",
                ),
                (
                    ("k", "x", [Posting("default", "ZEC", -1), Posting("ghost", "ZEC", 1)]),
                    errors.UnknownAccount,
                    "unknown account 'ghost'",
                ),
                (
                    ("k", "x", [Posting("default", "ZEC", -1), Posting("Bad Name", "ZEC", 1)]),
                    errors.InvalidParams,
                    None,
                ),
                (
                    ("k", "x", [Posting("default", "USDC", -1), Posting("amy", "USDC", 1)]),
                    errors.InsufficientFunds,
                    "insufficient available USDC: need 0.000001, have 0.00",
                ),
                (
                    ("k", "x", [Posting("default", "ZEC", -1, "locked", "h1"), Posting("default", "ZEC", 1)]),
                    errors.InsufficientFunds,
                    "insufficient locked ZEC: need 0.00000001, have 0.00",
                ),
            ]:
                with pytest.raises(exc) as info:
                    await wallet.write(post, *args)
                if message is not None:
                    assert info.value.message == message
            assert len(await ledger.history()) == 5  # nothing refused was written
            assert (await ledger.verify())["ok"]
        finally:
            await wallet.aclose()


async def test_holds_are_per_account_and_token_and_cannot_be_overdrawn(tmp_path):
    with trio.fail_after(20):
        wallet, ledger = await started(tmp_path)
        try:
            await ledger.create_account("amy")
            await ledger.deposit("default", "USDC", 5_000_000, "d1")
            await ledger.deposit("amy", "USDC", 5_000_000, "d2")

            def post(tx, key, postings):
                return tx.post_entry(key, "order", postings)

            def lock(account, amount, hold):
                return [Posting(account, "USDC", -amount), Posting(account, "USDC", amount, "locked", hold)]

            await wallet.write(post, "lock:a", lock("default", 3_000_000, "h"))
            for postings, message in [
                (lock("amy", 1, "h"), "hold 'h' belongs to another account or token"),
                ([Posting("default", "ZEC", -1, "locked", "h"), Posting("default", "ZEC", 1)],
                 "hold 'h' belongs to another account or token"),
                (lock("default", 1, "g") + lock("amy", 1, "g"), "hold 'g' belongs to another account or token"),
            ]:
                with pytest.raises(errors.InvalidParams) as info:
                    await wallet.write(post, "bad", postings)
                assert info.value.message == message
            # Another hold of the same account: its locked balance covers it, the hold itself does not.
            await wallet.write(post, "lock:b", lock("default", 1_000_000, "h2"))
            with pytest.raises(errors.InsufficientFunds) as info:
                await wallet.write(post, "over", [Posting("default", "USDC", -1_000_001, "locked", "h2"),
                                                  Posting("default", "USDC", 1_000_001)])
            assert info.value.message == "hold h2 has 1.00 USDC remaining, need 1.000001"
            rel = await wallet.write(post, "rel", [Posting("default", "USDC", -1_000_000, "locked", "h2"),
                                                   Posting("default", "USDC", 1_000_000)])
            assert rel["repeated"] is False
            assert await wallet.write(
                lambda tx: (tx.hold_remaining("h"), tx.hold_remaining("h2"), tx.balance("default", "USDC"))
            ) == (3_000_000, 0, (2_000_000, 3_000_000))
            # Both legs of one account in one entry net out before the funds check.
            await wallet.write(
                post,
                "swap",
                [
                    Posting("default", "USDC", -2_000_000),
                    Posting("default", "USDC", 2_000_000, "locked", "h3"),
                    Posting("default", "USDC", -2_000_000, "locked", "h3"),
                    Posting("default", "USDC", 2_000_000),
                ],
            )
            assert (await ledger.verify())["ok"]
        finally:
            await wallet.aclose()


# ----- settlement: recorded orders and engine events on a real wallet file -----

def new_order(oid, account, side, price_ticks, qty_lots, post_only=False, tif="gtc", coid=None):
    return {"id": oid, "client_order_id": coid, "account": account, "market": "ZEC/USDC", "side": side,
            "type": "limit", "time_in_force": tif, "post_only": post_only, "price_ticks": price_ticks,
            "qty_lots": qty_lots, "filled_lots": 0, "cost_minor": 0, "fee_minor": 0, "status": "open",
            "created_at": 1.0, "trades": []}


async def record(wallet, m, *orders):
    items = [(o, *m.hold(o["side"], o["price_ticks"], o["qty_lots"], o["post_only"])) for o in orders]
    return await wallet.write(record_orders_op, items)


def postings_of(entry) -> list[tuple]:
    return [(p["account"], p["token"], p["bucket"], p["amount"]) for p in entry["postings"]]


async def test_worked_example_settles_exactly_as_documented(tmp_path):
    """docs/dex.md's worked example, entry by entry (maker 10 bps, taker 20 bps)."""
    m = market(10, 20)
    with trio.fail_after(20):
        wallet, ledger = await started(tmp_path, schemas=True)
        try:
            for name in ("maker", "taker"):
                await ledger.create_account(name)
            await ledger.deposit("maker", "ZEC", 200_000_000, "m")
            await ledger.deposit("taker", "USDC", 101_220_000, "t")   # exactly the hold: no spare funds
            [(k1, ask)] = await record(wallet, m, new_order("oa", "maker", "sell", 5000, 20_000))
            [(k2, bid)] = await record(wallet, m, new_order("ob", "taker", "buy", 5050, 20_000))
            assert (k1, k2) == ("new", "new")
            hist = await ledger.history(limit=2)
            assert [e["key"] for e in hist] == ["order:ob", "order:oa"]
            assert postings_of(hist[0]) == [("taker", "USDC", "available", "-101.22"),
                                            ("taker", "USDC", "locked", "101.22")]
            events = [Event(1, "ZEC/USDC", "fill", "ob", 20_000, 5000, "oa", "buy"),
                      Event(2, "ZEC/USDC", "done", "oa", 0, reason="filled"),
                      Event(3, "ZEC/USDC", "done", "ob", 0, reason="filled")]
            result = await wallet.write(settle_op, "memory", 40, events, {"oa": ask, "ob": bid}, {"ZEC/USDC": m})
            [trade] = result["trades"]
            assert (trade["seq"], trade["notional_minor"], trade["taker_fee_minor"], trade["maker_fee_minor"]) == \
                (41, 100_000_000, 200_000, 100_000)
            assert (trade["maker_account"], trade["taker_account"], trade["engine"]) == ("maker", "taker", "memory")
            fill = (await ledger.history(limit=1))[0]
            assert fill["key"] == "fill:memory:41"
            assert postings_of(fill) == [("taker", "USDC", "locked", "-101.22"), ("taker", "USDC", "available", "1.02"),
                                         ("taker", "ZEC", "available", "2.00"), ("maker", "ZEC", "locked", "-2.00"),
                                         ("maker", "USDC", "available", "99.90"), ("fees", "USDC", "available", "0.30")]
            orders = result["orders"]
            assert {o["status"] for o in orders.values()} == {"closed"}
            assert (orders["ob"]["filled_lots"], orders["ob"]["cost_minor"], orders["ob"]["fee_minor"]) == \
                (20_000, 100_000_000, 200_000)
            assert (orders["oa"]["cost_minor"], orders["oa"]["fee_minor"], orders["oa"]["trades"]) == \
                (100_000_000, 100_000, [trade["id"]])
            rows = await ledger.balances()
            assert bal(rows, "taker", "USDC") == (1_020_000, 0) and bal(rows, "taker", "ZEC") == (200_000_000, 0)
            assert bal(rows, "maker", "USDC") == (99_900_000, 0) and bal(rows, "maker", "ZEC") == (0, 0)
            assert await wallet.write(lambda tx: tx.balance("fees", "USDC")) == (300_000, 0)
            seqs = await wallet.read(lambda rtx: rtx.conn.execute("SELECT * FROM dex_engines").fetchall())
            assert seqs == [("memory", 40, 3)]
            # Settling the same events again (a replay after a crash) moves nothing: the fill key is taken.
            again = await wallet.write(settle_op, "memory", 40, events[:1], {"oa": ask, "ob": bid}, {"ZEC/USDC": m},
                                       False)
            assert again["trades"][0]["notional_minor"] == 100_000_000
            assert len(await ledger.history(limit=100)) == 5 and await ledger.balances() == rows
            assert (await ledger.verify())["ok"]
        finally:
            await wallet.aclose()


async def test_maker_fee_above_taker_fee_a_resting_bid_with_no_spare_funds_fills_as_maker(tmp_path):
    """maker 20 bps > taker 10 bps: the bid's hold is the docs' 101.22 (the higher rate) and covers its maker fee."""
    m = market(20, 10)
    with trio.fail_after(20):
        wallet, ledger = await started(tmp_path, schemas=True)
        try:
            for name in ("buyer", "seller"):
                await ledger.create_account(name)
            await ledger.deposit("buyer", "USDC", 101_220_000, "b")
            await ledger.deposit("seller", "ZEC", 200_000_000, "s")
            [(_, bid)] = await record(wallet, m, new_order("ob", "buyer", "buy", 5050, 20_000))
            assert bal(await ledger.balances("buyer"), "buyer", "USDC") == (0, 101_220_000)
            [(_, ask)] = await record(wallet, m, new_order("oa", "seller", "sell", 5050, 20_000))
            events = [Event(1, "ZEC/USDC", "rested", "ob", 20_000),
                      Event(2, "ZEC/USDC", "fill", "oa", 20_000, 5050, "ob", "sell"),
                      Event(3, "ZEC/USDC", "done", "ob", 0, reason="filled"),
                      Event(4, "ZEC/USDC", "done", "oa", 0, reason="filled")]
            result = await wallet.write(settle_op, "memory", 0, events, {"oa": ask, "ob": bid}, {"ZEC/USDC": m})
            [trade] = result["trades"]
            assert (trade["maker_fee_minor"], trade["taker_fee_minor"]) == (202_000, 101_000)
            fill = (await ledger.history(limit=1))[0]
            assert postings_of(fill) == [
                ("buyer", "USDC", "locked", "-101.22"),
                ("buyer", "USDC", "available", "0.018"),
                ("buyer", "ZEC", "available", "2.00"),
                ("seller", "ZEC", "locked", "-2.00"),
                ("seller", "USDC", "available", "100.899"),
                ("fees", "USDC", "available", "0.303"),
            ]
            rows = await ledger.balances()
            assert bal(rows, "buyer", "USDC") == (18_000, 0) and bal(rows, "seller", "USDC") == (100_899_000, 0)
            assert (await ledger.verify())["ok"]
        finally:
            await wallet.aclose()


async def test_partial_fills_with_fees_that_do_not_divide(tmp_path):
    """One-lot fills at 50.50: taker fee 10.1 -> 11, maker fee 5.05 -> 6 minor units, each rounded up."""
    m = market(10, 20)
    with trio.fail_after(20):
        wallet, ledger = await started(tmp_path, schemas=True)
        try:
            for name in ("maker", "taker"):
                await ledger.create_account(name)
            await ledger.deposit("maker", "ZEC", 300_000_000, "m")
            await ledger.deposit("taker", "USDC", 1_000_000_000, "t")
            [(_, ask)] = await record(wallet, m, new_order("oa", "maker", "sell", 5050, 3))
            [(_, bid)] = await record(wallet, m, new_order("ob", "taker", "buy", 5100, 3))
            assert await wallet.write(lambda tx: tx.hold_remaining("order:ob")) == 3 * (5100 + 11)
            orders = {"oa": ask, "ob": bid}
            events = [Event(1, "ZEC/USDC", "fill", "ob", 1, 5050, "oa", "buy"),
                      Event(2, "ZEC/USDC", "fill", "ob", 2, 5050, "oa", "buy"),
                      Event(3, "ZEC/USDC", "done", "oa", 0, reason="filled"),
                      Event(4, "ZEC/USDC", "done", "ob", 0, reason="filled")]
            result = await wallet.write(settle_op, "memory", 0, events, orders, {"ZEC/USDC": m})
            assert [(t["taker_fee_minor"], t["maker_fee_minor"]) for t in result["trades"]] == [(11, 6), (21, 11)]
            first = (await ledger.history(limit=2))[1]
            assert [(p["account"], p["amount_minor"]) for p in first["postings"]] == [
                ("taker", -5111), ("taker", 50), ("taker", 10_000), ("maker", -10_000), ("maker", 5044), ("fees", 17)]
            rows = await ledger.balances()
            assert bal(rows, "taker", "USDC") == (1_000_000_000 - 15_150 - 32, 0)
            assert bal(rows, "maker", "USDC") == (15_150 - 17, 0)
            assert result["orders"]["ob"]["fee_minor"] == 32 and result["orders"]["oa"]["fee_minor"] == 17
            for oid in ("oa", "ob"):
                o = result["orders"][oid]
                assert (o["filled_lots"], o["cost_minor"], o["status"]) == (3, 15_150, "closed")
            # What was stored is what was answered: each trade row opens (AAD table|column|rowid) to the same dict.
            stored = await wallet.read(trades_read, None, None, 10)
            assert sorted(stored, key=lambda t: t["id"]) == result["trades"]
            assert [t["id"] for t in result["trades"]] == [1, 2]
            assert result["trades"][0] == {
                "seq": 1,
                "engine": "memory",
                "market": "ZEC/USDC",
                "price_ticks": 5050,
                "qty_lots": 1,
                "maker_order_id": "oa",
                "taker_order_id": "ob",
                "taker_side": "buy",
                "maker_fee_minor": 6,
                "taker_fee_minor": 11,
                "notional_minor": 5050,
                "ts": result["trades"][0]["ts"],
                "maker_account": "maker",
                "taker_account": "taker",
                "id": 1,
            }
            assert isinstance(result["trades"][0]["ts"], float)
            back = await wallet.read(order_read, "ob")
            assert (back["filled_lots"], back["status"], [t["id"] for t in back["trade_rows"]]) == (3, "closed", [1, 2])
            assert await wallet.write(lambda tx: (tx.hold_remaining("order:ob"), tx.hold_remaining("order:oa"))) == (
                0,
                0,
            )
            assert (await ledger.verify())["ok"]
        finally:
            await wallet.aclose()


async def test_release_reasons_venue_fills_and_ignored_events(tmp_path):
    m = market(10, 20)
    with trio.fail_after(20):
        wallet, ledger = await started(tmp_path, schemas=True)
        try:
            await ledger.deposit("default", "USDC", 100_000_000, "d")
            await ledger.deposit("default", "ZEC", 100_000_000, "z")
            placed = await record(wallet, m, new_order("b1", "default", "buy", 5000, 100),
                                  new_order("b2", "default", "buy", 5000, 100, post_only=True),
                                  new_order("s1", "default", "sell", 6000, 100),
                                  new_order("s2", "default", "sell", 6000, 100),
                                  new_order("s3", "default", "sell", 6000, 100))
            orders = {o["id"]: o for _, o in placed}
            # b1 fills 40 lots against an order this wallet did not place (the venue's), then expires.
            events = [Event(0, "ZEC/USDC", "done", "nobody", 1, reason="expired"),  # unknown: skipped, not the end
                      Event(1, "ZEC/USDC", "fill", "b1", 40, 4900, "foreign", "buy"),
                      Event(2, "ZEC/USDC", "done", "b1", 60, reason="expired"),
                      Event(3, "ZEC/USDC", "done", "b2", 100, reason="post_only"),
                      Event(4, "ZEC/USDC", "done", "s1", 100, reason="canceled"),
                      Event(5, "ZEC/USDC", "done", "s2", 100, reason="self_trade"),
                      Event(6, "ZEC/USDC", "done", "s3", 100, reason="mystery"),
                      Event(7, "ZEC/USDC", "done", "s3", 100, reason="expired"),   # no longer open: ignored
                      Event(8, "ZEC/USDC", "done", "nobody", 1, reason="expired")]  # unknown: ignored
            result = await wallet.write(settle_op, "memory", 0, events, orders, {"ZEC/USDC": m})
            status = {i: (o["status"], o["done_reason"]) for i, o in result["orders"].items()}
            assert status == {"b1": ("expired", "expired"), "b2": ("rejected", "post_only"),
                              "s1": ("canceled", "canceled"), "s2": ("canceled", "self_trade"),
                              "s3": ("canceled", "mystery")}
            [trade] = result["trades"]
            assert (trade["maker_fee_minor"], trade["taker_fee_minor"], trade["maker_account"]) == (0, 392, None)
            fill = [e for e in await ledger.history(limit=100) if e["kind"] == "fill"][0]
            assert [(p["account"], p["token"], p["amount_minor"]) for p in fill["postings"]] == [
                ("default", "USDC", -40 * (5000 + 10)), ("default", "USDC", 40 * 5010 - 196_000 - 392),
                ("default", "ZEC", 400_000), ("venue:memory", "ZEC", -400_000), ("venue:memory", "USDC", 196_000),
                ("fees", "USDC", 392)]
            releases = {e["key"]: e for e in await ledger.history(limit=100) if e["kind"] == "release"}
            assert sorted(releases) == ["release:b1", "release:b2", "release:s1", "release:s2", "release:s3"]
            assert [p["amount_minor"] for p in releases["release:b1"]["postings"]] == [-60 * 5010, 60 * 5010]
            assert [p["amount_minor"] for p in releases["release:b2"]["postings"]] == [-100 * 5005, 100 * 5005]
            assert [p["amount_minor"] for p in releases["release:s1"]["postings"]] == [-1_000_000, 1_000_000]
            rows = await ledger.balances("default")
            assert bal(rows, "default", "USDC") == (100_000_000 - 196_000 - 392, 0)
            assert bal(rows, "default", "ZEC") == (100_400_000, 0)
            seqs = await wallet.read(lambda rtx: rtx.conn.execute("SELECT * FROM dex_engines").fetchall())
            assert seqs == [("memory", 0, 8)]
            assert (await ledger.verify())["ok"]
            # A seller filled by the venue: the venue pays the notional, the seller its maker fee.
            [(_, s4)] = await record(wallet, m, new_order("s4", "default", "sell", 6000, 10))
            res = await wallet.write(settle_op, "memory", 0, [Event(9, "ZEC/USDC", "fill", "foreign2", 10, 6000,
                                                                    "s4", "buy")], {"s4": s4}, {"ZEC/USDC": m}, False)
            assert (res["trades"][0]["maker_fee_minor"], res["trades"][0]["taker_fee_minor"]) == (60, 0)
            assert res["orders"]["s4"]["status"] == "open" and res["orders"]["s4"]["filled_lots"] == 10
            fill = (await ledger.history(limit=1))[0]
            assert [(p["account"], p["token"], p["amount_minor"]) for p in fill["postings"]] == [
                ("venue:memory", "USDC", -60_000), ("venue:memory", "ZEC", 100_000), ("default", "ZEC", -100_000),
                ("default", "USDC", 59_940), ("fees", "USDC", 60)]
            seqs = await wallet.read(lambda rtx: rtx.conn.execute("SELECT * FROM dex_engines").fetchall())
            assert seqs == [("memory", 0, 8)]  # store_seq=False leaves the applied seq alone
            assert (await ledger.verify())["ok"]
        finally:
            await wallet.aclose()


async def test_record_refuses_short_funds_unknown_accounts_and_repeats_client_ids(tmp_path):
    m = market(10, 20)
    with trio.fail_after(20):
        wallet, ledger = await started(tmp_path, schemas=True)
        try:
            await ledger.deposit("default", "USDC", 101_220_000, "d")
            out = await record(wallet, m, new_order("o1", "default", "buy", 5050, 20_001, coid="c"),
                               new_order("o2", "ghost", "buy", 5050, 1),
                               new_order("o3", "default", "buy", 5050, 20_000, coid="c"),
                               new_order("o4", "default", "buy", 5050, 20_000, coid="c"),
                               new_order("o5", "default", "sell", 5050, 1))
            kinds = [k for k, _ in out]
            assert kinds == ["refused", "refused", "new", "repeat", "refused"]
            assert out[0][1].message == "insufficient available USDC: need 101.225061, have 101.22"
            assert out[1][1].message == "unknown account 'ghost'"
            assert out[3][1]["id"] == "o3" and out[2][1]["rowid"] == out[3][1]["rowid"]
            assert out[4][1].message == "insufficient available ZEC: need 0.0001, have 0.00"
            assert bal(await ledger.balances("default"), "default", "USDC") == (0, 101_220_000)
            assert [e["key"] for e in await ledger.history()] == ["order:o3", "deposit:d"]
            # client_order_id is unique per account: another account, or another id, is a new order.
            await ledger.create_account("amy")
            await ledger.deposit("amy", "USDC", 10_000_000, "a")
            out = await record(wallet, m, new_order("o7", "amy", "buy", 5050, 10, coid="c"),
                               new_order("o8", "amy", "buy", 5050, 10, coid="d"),
                               new_order("o9", "amy", "buy", 5050, 10, coid="d"))
            assert [(k, v["id"]) for k, v in out] == [("new", "o7"), ("new", "o8"), ("repeat", "o8")]
            # An order that exactly uses the available balance is accepted.
            await ledger.deposit("default", "ZEC", 10_000, "z")
            assert [k for k, _ in await record(wallet, m, new_order("o6", "default", "sell", 5050, 1))] == ["new"]
        finally:
            await wallet.aclose()


@pytest.mark.parametrize("maker,taker", [(15, 15), (20, 10_000)])
async def test_fills_at_equal_fees_and_at_a_whole_notional_fee(tmp_path, maker, taker):
    """Equal maker and taker fees, and a taker fee of 100% (the selling taker receives nothing), still balance; a
    post-only bid fills as the maker out of a hold at the maker rate."""
    m = market(maker, taker)
    with trio.fail_after(20):
        wallet, ledger = await started(tmp_path, schemas=True)
        try:
            for name in ("buyer", "seller"):
                await ledger.create_account(name)
            await ledger.deposit("seller", "ZEC", 100_000_000, "s")
            await ledger.deposit("buyer", "USDC", 1_000_000_000, "b")
            [(_, ask)] = await record(wallet, m, new_order("oa", "seller", "sell", 5000, 100))
            [(_, bid)] = await record(wallet, m, new_order("ob", "buyer", "buy", 5000, 100, post_only=True))
            fee_m, fee_t = fee_minor(500_000, maker), fee_minor(500_000, taker)
            assert await wallet.write(lambda tx: tx.hold_remaining("order:ob")) == 100 * (5000 + fee_minor(5000, maker))
            events = [Event(1, "ZEC/USDC", "fill", "oa", 100, 5000, "ob", "sell"),
                      Event(2, "ZEC/USDC", "done", "ob", 0, reason="filled"),
                      Event(3, "ZEC/USDC", "done", "oa", 0, reason="filled")]
            result = await wallet.write(settle_op, "memory", 0, events, {"oa": ask, "ob": bid}, {"ZEC/USDC": m})
            assert (result["trades"][0]["maker_fee_minor"], result["trades"][0]["taker_fee_minor"]) == (fee_m, fee_t)
            rows = await ledger.balances()
            assert bal(rows, "buyer", "USDC") == (1_000_000_000 - 500_000 - fee_m, 0)
            assert bal(rows, "seller", "USDC") == (500_000 - fee_t, 0)
            assert await wallet.write(lambda tx: tx.balance("fees", "USDC")) == (fee_m + fee_t, 0)
            assert (await ledger.verify())["ok"]
        finally:
            await wallet.aclose()


async def test_posting_and_amount_subclasses_are_accepted(tmp_path):
    """A Posting subclass, and an int subclass as delta (not bool), are postings and amounts like any other."""

    class Leg(Posting):
        pass

    class Minor(int):
        pass

    with trio.fail_after(20):
        wallet, ledger = await started(tmp_path)
        try:
            await ledger.deposit("default", "USDC", 5, "d")

            def post(tx):
                return tx.post_entry("sub", "transfer", [Leg("default", "USDC", Minor(-2)), Posting("fees", "USDC", 2)])

            entry = await wallet.write(post)
            assert [p["amount_minor"] for p in entry["postings"]] == [-2, 2] and entry["repeated"] is False
            assert bal(await ledger.balances("default"), "default", "USDC") == (3, 0)
        finally:
            await wallet.aclose()
