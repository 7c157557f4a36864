"""Property test: random valid and invalid ledger operations keep every invariant and match a plain model."""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tachyond import errors
from tachyond.amounts import Token
from tachyond.ledger.journal import Posting, lock_postings, release_postings
from tachyond.ledger.service import Ledger
from tachyond.wallet.wallet import Wallet

TOKENS = {"USDC": Token("USDC", 6), "ZEC": Token("ZEC", 8)}
USERS = ["default", "a1", "a2"]
HOLDS = ["h0", "h1"]

user = st.sampled_from(USERS)
token = st.sampled_from(sorted(TOKENS))
amount = st.integers(min_value=1, max_value=6)  # small, so exact-balance edges come up often
hold = st.sampled_from(HOLDS)
aim = st.sampled_from(["drawn", "owner", "exact", "over"])
hold_op = st.tuples(st.just("hold"), user, token, amount, hold)
# Holds, releases and fills are listed twice: they need each other in one example to reach their edges.
operation = st.one_of(
    hold_op, hold_op,
    st.tuples(st.just("deposit"), user, token, amount),
    st.tuples(st.just("withdraw"), user, token, amount),
    st.tuples(st.just("transfer"), user, user, token, amount),
    # The trailing aim: "drawn" keeps the drawn account, token and amount; "owner" aims at the hold's owner;
    # "exact" and "over" also take exactly what remains, or one minor unit more.
    st.tuples(st.just("release"), user, token, amount, hold, aim),
    st.tuples(st.just("release"), user, token, amount, hold, aim),
    st.tuples(st.just("consume"), user, token, amount, hold, st.sampled_from(USERS + ["fees"]), aim),
    st.tuples(st.just("consume"), user, token, amount, hold, st.sampled_from(USERS + ["fees"]), aim),
    st.tuples(st.just("unbalanced"), user, token, amount),
)


class Model:
    """The same rules written plainly: what the ledger must accept and the balances it must end with."""

    def __init__(self) -> None:
        self.bal: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        self.holds: dict[str, list] = {}

    def hold_ok(self, name, account, tok, delta) -> bool:
        owner = self.holds.get(name)
        if owner is not None and owner[:2] != [account, tok]:
            return False
        return (owner[2] if owner else 0) + delta >= 0

    def resolve(self, op) -> tuple:
        """Turn a drawn release/consume into a concrete op, aimed at the hold's owner when the flag says so."""
        if op[0] not in ("release", "consume"):
            return op
        kind, acct, tok, amt, name, *rest, aim_at = op
        if aim_at != "drawn" and name in self.holds:
            acct, tok, remaining = self.holds[name]
            if aim_at in ("exact", "over") and remaining:
                amt = remaining + (aim_at == "over")
        return (kind, acct, tok, amt, name, *rest)

    def apply(self, op) -> bool:
        kind, *args = op
        if kind == "deposit":
            acct, tok, amt = args
            self.bal[(acct, tok)][0] += amt
            self.bal[("external:chain", tok)][0] -= amt
        elif kind == "withdraw":
            acct, tok, amt = args
            if self.bal[(acct, tok)][0] < amt:
                return False
            self.bal[(acct, tok)][0] -= amt
            self.bal[("external:chain", tok)][0] += amt
        elif kind == "transfer":
            src, dst, tok, amt = args
            if src == dst or self.bal[(src, tok)][0] < amt:
                return False
            self.bal[(src, tok)][0] -= amt
            self.bal[(dst, tok)][0] += amt
        elif kind == "hold":
            acct, tok, amt, name = args
            if self.bal[(acct, tok)][0] < amt or not self.hold_ok(name, acct, tok, amt):
                return False
            self.bal[(acct, tok)][0] -= amt
            self.bal[(acct, tok)][1] += amt
            self.holds.setdefault(name, [acct, tok, 0])[2] += amt
        elif kind in ("release", "consume"):
            acct, tok, amt, name, *dst = args
            if not self.hold_ok(name, acct, tok, -amt) or name not in self.holds:
                return False
            to = dst[0] if dst else acct
            self.bal[(acct, tok)][1] -= amt
            self.bal[(to, tok)][0] += amt
            self.holds[name][2] -= amt
        else:
            return False
        return True


def _postings(op) -> tuple[str, list[Posting]]:
    kind, *args = op
    if kind == "hold":
        acct, tok, amt, name = args
        return "lock", lock_postings(acct, tok, amt, name)
    if kind == "release":
        acct, tok, amt, name = args
        return "release", release_postings(acct, tok, amt, name)
    if kind == "consume":
        acct, tok, amt, name, to = args
        return "fill", [Posting(acct, tok, -amt, "locked", name), Posting(to, tok, amt)]
    acct, tok, amt = args
    return "bogus", [Posting(acct, tok, -amt), Posting("fees", tok, amt + 1)]


async def _run(ledger: Ledger, wallet: Wallet, i: int, op) -> None:
    kind, *args = op
    if kind == "deposit":
        await ledger.deposit(args[0], args[1], args[2], f"d{i}")
    elif kind == "withdraw":
        await ledger.withdraw(args[0], args[1], args[2], f"w{i}")
    elif kind == "transfer":
        await ledger.transfer(*args, reference=f"t{i}")
    else:
        entry_kind, postings = _postings(op)
        await wallet.write(lambda tx: tx.post_entry(f"{entry_kind}:{i}", entry_kind, postings))


def _holds_sync(rtx) -> dict:
    rows = rtx.conn.execute("SELECT id, value FROM ledger_holds")
    return {v[0]: v[3] for v in (rtx.open_json("ledger_holds", "value", i, blob) for i, blob in rows)}


async def _state(ledger: Ledger, wallet: Wallet) -> dict:
    rows = await ledger.balances()
    for system in ("external:chain", "fees"):
        rows += await ledger.balances(system)
    state = {(r["account"], r["token"]): [r["available_minor"], r["locked_minor"]] for r in rows}
    state["holds"] = await wallet.read(_holds_sync)
    state["entries"] = len(await ledger.history(limit=1000))
    return state


async def _check_final(ledger: Ledger, wallet: Wallet, model: Model, accepted: int) -> None:
    """Journal sums to zero per token, replay gives the balances, locked equals open holds, verify agrees."""
    entries = await ledger.history(limit=1000)
    assert len(entries) == accepted
    replayed: dict = defaultdict(lambda: [0, 0])
    for entry in entries:
        per_token: dict = defaultdict(int)
        for p in entry["postings"]:
            per_token[p["token"]] += p["amount_minor"]
            replayed[(p["account"], p["token"])][p["bucket"] == "locked"] += p["amount_minor"]
        assert set(per_token.values()) <= {0}
    final = await _state(ledger, wallet)
    for key, value in final.items():
        if isinstance(key, tuple):
            assert replayed.get(key, [0, 0]) == value, key
    locked_by_pair: dict = defaultdict(int)
    for name, (acct, tok, remaining) in model.holds.items():
        assert final["holds"][name] == remaining
        assert await wallet.write(lambda tx, name=name: tx.hold_remaining(name)) == remaining
        locked_by_pair[(acct, tok)] += remaining
    for (acct, tok), (_, locked) in model.bal.items():
        assert locked == locked_by_pair.get((acct, tok), 0)
    check = await ledger.verify()
    assert check == {"ok": True, "entries": accepted, "problems": []}


@settings(max_examples=60, deadline=None)
@given(seed=st.lists(st.integers(min_value=0, max_value=10), min_size=len(USERS) * len(TOKENS),
                     max_size=len(USERS) * len(TOKENS)),
       ops=st.lists(operation, min_size=8, max_size=30))
async def test_random_operations_keep_invariants(seed, ops):
    with tempfile.TemporaryDirectory() as tmp, trio.fail_after(60):
        wallet = Wallet(Path(tmp), scrypt_n=2**10)
        ledger = Ledger(wallet, TOKENS)
        async with wallet:
            await wallet.create("pw")
            for name in USERS[1:]:
                await ledger.create_account(name)
            model, accepted = Model(), 0
            # Funded accounts first (zeros skipped), so holds, releases and fills reach their exact-balance edges.
            funding = [("deposit", acct, tok, amt) for (acct, tok), amt in
                       zip([(a, t) for a in USERS for t in sorted(TOKENS)], seed, strict=False) if amt]
            for i, op in enumerate(funding + ops):
                op = model.resolve(op)
                before = await _state(ledger, wallet)
                expect_ok = model.apply(op)
                try:
                    await _run(ledger, wallet, i, op)
                    ok = True
                except (errors.InsufficientFunds, errors.InvalidParams):
                    ok = False
                assert ok == expect_ok, op
                after = await _state(ledger, wallet)
                if not ok:
                    assert after == before, f"rejected {op} changed something"
                else:
                    accepted += 1
                for (acct, tok), (available, locked) in model.bal.items():
                    assert after.get((acct, tok), [0, 0]) == [available, locked], (acct, tok)
                for key, value in after.items():
                    if isinstance(key, tuple) and key[0] in USERS:
                        assert min(value) >= 0, key
            await _check_final(ledger, wallet, model, accepted)
