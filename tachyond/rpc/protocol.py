"""JSON-RPC 2.0 protocol objects: parameters, methods, error answers, the wire encoding."""

from __future__ import annotations

import dis
import functools
import inspect
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .. import errors, jsonx

Handler = Callable[[dict[str, Any]], Awaitable[Any]]

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "boolean": (bool,), "object": (dict,), "array": (list,),
    "number": (int, float), "null": (type(None),),
}

@dataclass(frozen=True)
class Param:
    """A declared param: its name, JSON type(s), whether required, and a line of description."""

    name: str
    type: str | tuple[str, ...] = "string"
    required: bool = True
    description: str = ""
    enum: tuple[Any, ...] | None = None
    minimum: int | None = None

    def types(self) -> tuple[str, ...]:
        return (self.type,) if isinstance(self.type, str) else self.type

    def schema(self) -> dict[str, Any]:
        ts = self.types()
        s: dict[str, Any] = {"type": ts[0] if len(ts) == 1 else list(ts)}
        if self.enum:
            s["enum"] = list(self.enum)
        if self.minimum is not None:
            s["minimum"] = self.minimum
        return s

    def check(self, value: Any) -> None:
        for t in self.types():
            py = _JSON_TYPES[t]
            if isinstance(value, bool) and t != "boolean":
                continue
            if isinstance(value, py):
                break
        else:
            raise errors.InvalidParams(
                f"param '{self.name}' must be {' or '.join(self.types())}, not {_json_type(value)}",
                data={"param": self.name},
            )
        if self.enum is not None and value not in self.enum:
            raise errors.InvalidParams(
                f"param '{self.name}' must be one of {', '.join(map(str, self.enum))}, not {value!r}",
                data={"param": self.name},
            )
        if self.minimum is not None and isinstance(value, int) and value < self.minimum:
            raise errors.InvalidParams(f"param '{self.name}' must be at least {self.minimum}, not {value}",
                                       data={"param": self.name})

def _json_type(value: Any) -> str:
    for name, py in _JSON_TYPES.items():
        if isinstance(value, bool):
            return "boolean"
        if isinstance(value, py):
            return name
    return type(value).__name__

@dataclass(frozen=True)
class Method:
    name: str
    handler: Handler
    params: tuple[Param, ...] = ()
    doc: str = ""
    result: str = ""
    plugin: str | None = None          # None for the core
    requires: tuple[Param, ...] = field(default=())

    @functools.cached_property
    def _names(self) -> frozenset[str]:
        """The declared param names, computed once per method rather than on every call."""
        return frozenset(p.name for p in self.params)

    @functools.cached_property
    def inline(self) -> bool:
        """True when the handler is an ``async def`` that cannot reach a checkpoint: no ``await``, ``async for``
        or ``async with`` anywhere in its body. The server runs such a call to its end in the connection's own
        task instead of starting a task for it; nothing can make it wait, so it holds up nothing behind it."""
        return _cannot_suspend(self.handler)

    def bind(self, params: Any) -> dict[str, Any]:
        """Map positional or named params onto the declaration; -32602 names the offending param."""
        if params is None:
            params = {}
        if isinstance(params, list):
            if len(params) > len(self.params):
                raise errors.InvalidParams(
                    f"{self.name} takes at most {len(self.params)} positional params, got {len(params)}"
                )
            named = {p.name: v for p, v in zip(self.params, params, strict=False)}
        else:
            named = dict(params)
            known = self._names
            for key in named:
                if key not in known:
                    hint = f" (known: {', '.join(sorted(known))})" if known else " (it takes no params)"
                    raise errors.InvalidParams(f"unknown param '{key}' for {self.name}{hint}", data={"param": key})
        for p in self.params:
            if p.name not in named or (named[p.name] is None and p.required):
                if p.required:
                    raise errors.InvalidParams(f"missing param '{p.name}' for {self.name}", data={"param": p.name})
                continue
            if named[p.name] is None:
                del named[p.name]
                continue
            p.check(named[p.name])
        return named

    def openrpc(self) -> dict[str, Any]:
        doc = self.doc.strip()
        summary = doc.splitlines()[0] if doc else self.name
        entry: dict[str, Any] = {
            "name": self.name,
            "summary": summary,
            "description": doc or summary,
            "paramStructure": "either",
            "params": [{"name": p.name, "required": p.required, "description": p.description, "schema": p.schema()}
                       for p in self.params],
            "result": {"name": "result", "description": self.result or "see description", "schema": {}},
        }
        if self.plugin:
            entry["x-plugin"] = self.plugin
        return entry

# The opcodes of await, async for and async with (an async comprehension's included), the only ways an
# ``async def`` suspends; CPython 3.11 and later compile every one of them with some of these.
_SUSPENDING_OPCODES = frozenset({"GET_AWAITABLE", "SEND", "YIELD_VALUE", "YIELD_FROM", "GET_AITER", "GET_ANEXT",
                                 "BEFORE_ASYNC_WITH", "SETUP_ASYNC_WITH", "END_ASYNC_FOR"})


def _cannot_suspend(fn: Any) -> bool:
    """Whether ``fn`` is a plain ``async def`` function whose own code never suspends (see Method.inline).

    Anything else (a plain ``def``, a ``functools.partial``, a callable object) answers False: a call whose
    result is awaitable then gets a task of its own.
    """
    if type(fn) is not types.FunctionType or not inspect.iscoroutinefunction(fn):
        return False
    return not any(ins.opname in _SUSPENDING_OPCODES for ins in dis.get_instructions(fn.__code__))


def _error(code: int, message: str, id_: Any, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "error": err, "id": id_}

def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool))

def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")

def _dump(obj: Any) -> bytes:
    # UTF-8 (not \u escapes); a lone surrogate (e.g. an id of "\ud800"), only expressible escaped, makes
    # jsonx fall back to the standard library's escaped form.
    return jsonx.dumps(obj) + b"\n"
