"""Fast JSON for the hot paths (RPC lines, sealed row bodies): msgspec when its wheel is installed, else the
standard library, with the standard library's results either way.

``bench/bench_json.py`` on the daemon's real messages (numbers in docs/performance.md): msgspec 0.23 and
orjson 3.13 both decode 4-10x and encode 4-10x faster than the standard library, close to each other; orjson
decodes an integer beyond 64 bits as a float (silently inexact, unacceptable for money), msgspec keeps it an
exact int, so msgspec is the one used.

Same results as ``json``: what msgspec refuses (NaN/Infinity in input, lone surrogates, numbers out of
float range, tuple keys, unknown types) falls back to the standard library, which then accepts it as it always
did or raises its own error. Differences that remain: non-ASCII text is written as UTF-8 rather than
``\\uXXXX`` escapes (both decode to the same string); a float NaN/Infinity is encoded as ``null`` (the daemon
never produces one: amounts are integers and decimal strings); enums, dataclasses and datetimes, which the
standard library refuses, are encoded (the daemon passes none).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["BACKEND", "FAST_DECODE", "FastDecodeError", "dumps", "loads", "stdlib_dumps"]


def _make_compact_encoder() -> Callable[[object], str]:
    """One reusable C encoder (json.dumps builds a new encoder per call); same output as dumps(separators=",:")."""
    reference = json.JSONEncoder(separators=(",", ":"))
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return reference.encode
    try:  # markers=None: no circular check (our values are trees), so one encoder is safe in every thread
        c_encoder = make(None, reference.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False,
                         True)
        probe = {"a": [1, -2.5, None, True, "\u00e9\n\x00"], "b": {}}
        if "".join(c_encoder(probe, 0)) != reference.encode(probe):
            return reference.encode
    except TypeError:
        return reference.encode
    return lambda obj: "".join(c_encoder(obj, 0))


_encode_compact = _make_compact_encoder()


def stdlib_dumps(obj: object) -> bytes:
    """Compact JSON bytes from the standard library alone."""
    if isinstance(obj, (dict, list, tuple)):
        return _encode_compact(obj).encode()
    return json.dumps(obj, separators=(",", ":")).encode()  # the C encoder only takes containers


try:
    import msgspec as _msgspec
except ImportError:  # no wheel for this platform: the standard library serves
    _msgspec = None  # type: ignore[assignment]  # no msgspec wheel: the stdlib path

if _msgspec is not None:
    BACKEND = "msgspec"
    _encode = _msgspec.json.Encoder().encode
    _decode = _msgspec.json.Decoder().decode
    _DecodeError = _msgspec.DecodeError
    # For callers with their own slow path (the RPC parser): the fast decoder alone, and what it raises.
    FAST_DECODE: Callable[[bytes], Any] | None = _decode
    FastDecodeError: type[Exception] = _DecodeError

    def dumps(obj: object) -> bytes:
        """Compact JSON as bytes."""
        try:
            return _encode(obj)
        except (TypeError, ValueError):  # unknown type, tuple key, lone surrogate: as the standard library does
            return stdlib_dumps(obj)

    def loads(data: bytes | bytearray | memoryview | str) -> Any:
        """Parse JSON; what msgspec refuses is parsed (or refused, with its message) by the standard library."""
        try:
            return _decode(data)
        except _DecodeError:
            return json.loads(data)  # type: ignore[arg-type]  # memoryview only reaches msgspec; json gets bytes/str
else:
    BACKEND = "json"
    dumps = stdlib_dumps
    FAST_DECODE = None
    FastDecodeError = ValueError

    def loads(data: bytes | bytearray | memoryview | str) -> Any:
        """Parse JSON."""
        return json.loads(data)
