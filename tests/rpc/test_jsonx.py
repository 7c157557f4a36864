"""tachyond.jsonx (msgspec): the fast codec gives the standard library's results, and the daemon works without it."""

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tachyond import jsonx

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_round_trip_matches_the_standard_library(value):
    encoded = jsonx.dumps(value)
    assert isinstance(encoded, bytes)
    assert json.loads(encoded) == value
    assert jsonx.loads(encoded) == value
    assert jsonx.loads(json.dumps(value)) == value


@pytest.mark.parametrize("value", [2**64, -(2**70), {1: "a"}, {"s": "\ud800"}, [True, 2**100]])
def test_big_ints_odd_keys_and_surrogates_are_encoded_as_the_standard_library_does(value):
    assert jsonx.dumps(value) == json.dumps(value, separators=(",", ":")).encode()


@pytest.mark.parametrize("value", [{(1, 2): 3}, {"a": object()}])
def test_what_the_standard_library_refuses_is_refused(value):
    with pytest.raises(TypeError):
        jsonx.dumps(value)


def test_decoding_accepts_and_refuses_what_the_standard_library_does():
    assert jsonx.loads(b"123456789012345678901234567890") == 123456789012345678901234567890
    assert jsonx.loads('{"a": "\\u00e9"}') == {"a": "é"}
    assert jsonx.loads(b"[NaN]")[0] != jsonx.loads(b"[NaN]")[0]  # NaN, as json.loads accepts it
    with pytest.raises(json.JSONDecodeError):
        jsonx.loads(b'{"a": ')
    with pytest.raises(ValueError):
        jsonx.loads(b"\xff")


def test_stored_bodies_stay_compact():
    assert jsonx.dumps({"a": [1, None, "x"], "b": {}}) == b'{"a":[1,null,"x"],"b":{}}'
    assert jsonx.dumps("just text") == b'"just text"'


def test_without_orjson_the_standard_library_serves():
    code = ("import sys; sys.modules['msgspec'] = None\n"
            "from tachyond import jsonx\n"
            "assert jsonx.BACKEND == 'json', jsonx.BACKEND\n"
            "assert jsonx.dumps({'a': [1, 'é']}) == b'{\"a\":[1,\"\\\\u00e9\"]}', jsonx.dumps({'a': [1, 'é']})\n"
            "assert jsonx.loads(b'[1, 2]') == [1, 2]\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def _stdlib_line(line: bytes):
    """What the RPC parser accepted before msgspec: the standard library, strict, no NaN/Infinity."""
    def no_constant(name):
        raise ValueError(name)
    try:
        text = line.decode(json.detect_encoding(line), "surrogatepass")
        if text.startswith("\ufeff"):
            raise ValueError("BOM")
        return json.JSONDecoder(parse_constant=no_constant).decode(text)
    except (ValueError, RecursionError):
        return "parse error"


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    json_values.map(lambda v: json.dumps({"jsonrpc": "2.0", "id": 1, "params": v}).encode()),
    st.text(alphabet='{}[]":,0123456789.eE+-tfnaulrsNIy \t\\u\x01é\ud800', max_size=40).map(
        lambda t: ("{" + t).encode("utf-8", "surrogatepass")),
    st.binary(max_size=40).map(lambda b: b"{" + b)))
def test_rpc_lines_are_accepted_and_refused_exactly_as_the_standard_library_does(line):
    from tachyond.rpc.dispatch import LineError, parse_line

    got = parse_line(line)
    expected = _stdlib_line(line)
    if expected == "parse error":
        assert isinstance(got, LineError) and got.code == -32700, (line, got)
    else:
        assert not isinstance(got, LineError) and got == expected, (line, got, expected)
