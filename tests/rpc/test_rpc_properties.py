"""Property: whatever JSON arrives, the dispatcher answers well-formed JSON-RPC 2.0, never raises, and stays silent
only for notifications: everything with an "id" (and anything that is not an object) gets its answer."""

from __future__ import annotations

import json

import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tachyond.config import from_mapping
from tachyond.daemon import Daemon

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
methods = st.one_of(st.sampled_from(["daemon.info", "plugins.list", "rpc.discover", "wallet.unlock", "ledger.deposit",
                                     "dex.place_order", "onramp.claim", "nope.nothing"]), json_values)
requests = st.fixed_dictionaries({}, optional={"jsonrpc": st.one_of(st.just("2.0"), json_values), "method": methods,
                                               "params": json_values, "id": json_values})
messages = st.one_of(requests, st.lists(requests, max_size=4), json_values)


def _daemon() -> Daemon:
    d = Daemon(from_mapping({"daemon": {"data_dir": "/tmp/ty-rpc-properties", "socket": "/tmp/ty-rpc-properties/s"},
                             "tokens": [{"symbol": "USDC", "decimals": 6}]}))
    d.load_plugins()
    return d


DAEMON = _daemon()


def check_response(r: object) -> None:
    assert isinstance(r, dict) and r["jsonrpc"] == "2.0" and "id" in r
    assert ("result" in r) != ("error" in r)
    if "error" in r:
        assert isinstance(r["error"]["code"], int) and isinstance(r["error"]["message"], str)


@settings(max_examples=300, deadline=None)
@given(messages)
@example({"jsonrpc": "2.0", "method": "nope.nothing", "id": 7})                      # method not found
@example({"jsonrpc": "2.0", "method": "wallet.unlock", "params": {"password": "x"}, "id": "u"})  # a refusal
@example({"jsonrpc": "2.0", "method": "ledger.deposit", "params": [1, 2], "id": 8})  # bad params
@example([{"jsonrpc": "2.0", "method": "daemon.info"}, {"jsonrpc": "2.0", "method": "nope.nothing", "id": "b"}])
@example({"jsonrpc": "2.0", "method": "daemon.info", "id": None})
def test_any_json_gets_a_well_formed_answer(message):
    line = json.dumps(message).encode()

    async def run() -> bytes | None:
        return await DAEMON.dispatcher.handle_line(line)

    out = trio.run(run)
    elements = message if isinstance(message, list) and message else [message]
    expected = [m for m in elements if expects_answer(m)]
    if out is None:
        # Silence is only for a notification, or a batch of only notifications.
        assert not expected, f"no answer to {message!r}"
        return
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    answer = json.loads(out)
    if isinstance(answer, list):
        assert isinstance(message, list) and 0 < len(answer) <= len(message)
        for r in answer:
            check_response(r)
    else:
        assert not (isinstance(message, list) and message), "a batch is answered with a list"
        check_response(answer)
        answer = [answer]
    assert len(answer) >= len(expected)
    answered_ids = [r["id"] for r in answer]
    for m in expected:
        if isinstance(m, dict) and _echoable(m["id"]):
            assert m["id"] in answered_ids, f"{m!r} got no answer with its id"


def _echoable(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def expects_answer(m: object) -> bool:
    """Anything but an object, and any object with an "id", must be answered (an error when it is invalid)."""
    return not isinstance(m, dict) or "id" in m
