"""The method registry, request dispatch and the call context (connection, answer hooks)."""

from __future__ import annotations

import contextvars
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from .. import errors, jsonx
from ..errors import TachyonError
from .protocol import Method, _dump, _error, _no_constant, _valid_id

if TYPE_CHECKING:
    from .protocol import Handler, Param
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .guards import Slot
    from .server import RpcServer

log = logging.getLogger("tachyond.rpc")


MAX_BATCH = 1000                     # calls in one batch; a longer batch is one -32600 (id null)

CORE_NAMESPACES = ("rpc", "daemon", "plugins", "wallet", "accounts", "tokens", "ledger", "onramp", "dex")

class Connection:
    """The socket connection a call arrived on, for methods that stream (subscriptions such as ``dex.watch``).

    ``notify`` writes a JSON-RPC notification (no ``id``) on the connection, never interleaved with answers;
    tasks started in ``nursery`` live until the client disconnects or the daemon stops.
    """

    def __init__(self, server: RpcServer, stream: trio.SocketStream, send_lock: trio.Lock, nursery: trio.Nursery,
                 slot: Slot | None = None):
        self._server = server
        self._stream = stream
        self._send_lock = send_lock
        self.nursery = nursery
        self._slot = slot

    def start_stream(self, fn: Callable[[], Awaitable[None]], stop: Callable[[str], object]) -> None:
        """Run ``fn`` (a stream of notifications) for as long as the connection lives. At a graceful stop the
        server calls ``stop(reason)``, which should make ``fn`` send what it has queued, say why, and return;
        the server waits a moment for that before it closes the connection."""
        slot = self._slot
        if slot is None:
            self._server._start_stream(self.nursery, fn, stop)
            return

        async def counted() -> None:   # a connection with a stream is never idle (no idle timeout, no eviction)
            slot.streams += 1
            slot.update_idle()
            try:
                await fn()
            finally:
                slot.streams -= 1
                slot.update_idle()

        self._server._start_stream(self.nursery, counted, stop)

    async def notify(self, method: str, params: Any) -> None:
        line = _dump({"jsonrpc": "2.0", "method": method, "params": params})
        async with self._send_lock:
            await self._stream.send_all(line)

_CONNECTION: contextvars.ContextVar[Connection | None] = contextvars.ContextVar("tachyond_rpc_connection",
                                                                                 default=None)

_AFTER_ANSWER: contextvars.ContextVar[list[Callable[[], None]] | None] = contextvars.ContextVar(
    "tachyond_rpc_after_answer", default=None)

def current_connection() -> Connection | None:
    """The connection the running call came on; None for calls made in process (no socket)."""
    return _CONNECTION.get()

def detach_call_context() -> None:
    """For a background task started from inside a call: forget that call's connection and answer hooks."""
    _CONNECTION.set(None)
    _AFTER_ANSWER.set(None)

def after_answer(fn: Callable[[], None]) -> None:
    """Run ``fn`` once the running call's answer is on the socket (so a stream never overtakes its answer)."""
    hooks = _AFTER_ANSWER.get()
    if hooks is None:
        fn()
    else:
        hooks.append(fn)

class Registry:
    """Every RPC method, declared once with its doc and params."""

    def __init__(self) -> None:
        self.methods: dict[str, Method] = {}

    def add(self, name: str, handler: Handler, params: list[Param] | tuple[Param, ...] = (), doc: str = "",
            result: str = "", plugin: str | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("method name must be a non-empty string")
        if plugin is not None:
            ns, dot, rest = name.partition(".")
            if not dot or not ns or not rest:
                raise ValueError(f"plugin {plugin!r}: method {name!r} must be namespaced as '<namespace>.<method>'")
            if ns in CORE_NAMESPACES:
                raise ValueError(f"plugin {plugin!r}: method {name!r} uses the core namespace '{ns}.'")
        if name in self.methods:
            other = self.methods[name].plugin or "the core"
            who = f"plugin {plugin!r}" if plugin else "the core"
            raise ValueError(f"{who}: method {name!r} is already registered by {other}")
        self.methods[name] = Method(name, handler, tuple(params), doc, result, plugin)

    def method(
        self, name: str, params: list[Param] | tuple[Param, ...] = (), result: str = ""
    ) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`add` for the core; the function's docstring is the method's doc."""
        def deco(fn: Handler) -> Handler:
            self.add(name, fn, params, fn.__doc__ or "", result)
            return fn
        return deco

    def discover(self, version: str) -> dict[str, Any]:
        """An OpenRPC 1.x document of every method, plugins' included."""
        return {
            "openrpc": "1.2.6",
            "info": {
                "title": "tachyond JSON-RPC API",
                "version": version,
                "description": "JSON-RPC 2.0 over a Unix socket, one message per line. "
                "Amounts are decimal strings in whole token units; results also carry *_minor ints.",
            },
            "methods": [m.openrpc() for m in sorted(self.methods.values(), key=lambda m: m.name)],
            # OpenRPC's components.errors is a map from a name to an Error object.
            "components": {"errors": {e.__name__: {"code": e.code, "message": e.title} for e in errors.ALL_ERRORS}},
        }

class Pending:
    """A call whose method may reach a checkpoint: its coroutine (not started yet) and what its answer needs."""

    __slots__ = ("awaitable", "method", "id", "notification")

    def __init__(self, awaitable: Awaitable[Any], method: Method, id_: Any, notification: bool):
        self.awaitable = awaitable
        self.method = method
        self.id = id_
        self.notification = notification


def _run_to_end(coro: Any) -> Any:
    """Run a coroutine that has no ``await`` in it (:attr:`Method.inline`) to its end, here and now."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()   # not reached: without an await, a coroutine cannot suspend
    raise RuntimeError(f"{coro!r} suspended although it has no await")


class Dispatcher:
    """Turns request lines into response lines; counts calls and errors."""

    def __init__(self, registry: Registry, metrics: Any = None):
        self.registry = registry
        self.metrics = metrics
        self.stopping = False
        self._call_counters: dict[str, Any] = {}

    async def handle_line(self, line: bytes) -> bytes | None:
        """Answer one line (a request or a batch); None when nothing is to be sent back."""
        return await self.handle_doc(parse_line(line))

    async def handle_doc(self, doc: Any) -> bytes | None:
        """Answer a parsed line (see :func:`parse_line`); None when nothing is to be sent back."""
        if isinstance(doc, LineError):
            return _dump(_error(doc.code, doc.message, None))
        if isinstance(doc, list):
            if not doc:
                return _dump(_error(errors.INVALID_REQUEST, "Invalid Request", None))
            answers: list[dict[str, Any] | None] = [None] * len(doc)

            async def one(i: int, req: Any) -> None:
                answers[i] = await self.handle_request(req)

            async with trio.open_nursery() as nursery:
                for i, req in enumerate(doc):
                    nursery.start_soon(one, i, req)
            out = [a for a in answers if a is not None]
            return _dump(out) if out else None
        answer = await self.handle_request(doc)
        return _dump(answer) if answer is not None else None

    async def handle_request(self, req: Any) -> dict[str, Any] | None:
        """Answer one request object; None for a valid notification."""
        answer = self.start_request(req)
        if type(answer) is Pending:
            return await self.finish_request(answer)
        return answer  # type: ignore[return-value]  # not a Pending: the answer itself

    def start_request(self, req: Any) -> dict[str, Any] | Pending | None:
        """The part of a call that runs without a checkpoint: validation, binding, and the call of the method.

        A method that cannot reach a checkpoint (see :attr:`Method.inline`) is run to its end here, and the
        answer (None for a notification) is returned; any other returns a :class:`Pending`, its coroutine not
        started yet, for :meth:`finish_request` to await (in a task of its own, so that it holds up nothing).
        """
        if not isinstance(req, dict):
            return _error(errors.INVALID_REQUEST, "Invalid Request", None)
        id_ = req.get("id")
        is_notification = "id" not in req
        if (req.get("jsonrpc") != "2.0" or not isinstance(req.get("method"), str)
                or not _valid_id(id_) or not isinstance(req.get("params", []), (list, dict))):
            return _error(errors.INVALID_REQUEST, "Invalid Request", id_ if _valid_id(id_) else None)
        name = req["method"]
        method = self.registry.methods.get(name)
        if method is None:
            self._count(name, errors.METHOD_NOT_FOUND, known=False)
            return None if is_notification else _error(errors.METHOD_NOT_FOUND, "Method not found", id_)
        try:
            if self.stopping and name != "daemon.info":
                raise errors.ShuttingDown()
            result = method.handler(method.bind(req.get("params")))
            if hasattr(type(result), "__await__"):
                if not method.inline:
                    return Pending(result, method, id_, is_notification)
                result = _run_to_end(result)
        except Exception as exc:  # contained: one bad call never takes the daemon down
            return self._failed(method, exc, id_, is_notification)
        self._count(name, None)
        if is_notification:
            return None
        return {"jsonrpc": "2.0", "result": result, "id": id_}

    async def finish_request(self, call: Pending) -> dict[str, Any] | None:
        """Await a call :meth:`start_request` left pending; its answer (None for a notification)."""
        try:
            result = await call.awaitable
        except Exception as exc:  # contained: one bad call never takes the daemon down
            return self._failed(call.method, exc, call.id, call.notification)
        self._count(call.method.name, None)
        if call.notification:
            return None
        return {"jsonrpc": "2.0", "result": result, "id": call.id}

    def _failed(self, method: Method, exc: Exception, id_: Any, is_notification: bool) -> dict[str, Any] | None:
        """The answer to a call whose method raised: its own code for a TachyonError, else an internal error."""
        name = method.name
        if isinstance(exc, TachyonError):
            self._count(name, exc.code)
            return None if is_notification else _error(exc.code, exc.message, id_, exc.data)
        if method.plugin:
            log.exception("plugin %s raised in %s", method.plugin, name, exc_info=exc)
            code, message = (
                errors.PluginError.code,
                f"plugin '{method.plugin}' failed in {name}: {type(exc).__name__}: {exc}",
            )
        else:
            log.exception("internal error in %s", name, exc_info=exc)
            code, message = (
                errors.INTERNAL_ERROR,
                f"Internal error in {name}: {type(exc).__name__} (details in the daemon log)",
            )
        self._count(name, code)
        return (
            None
            if is_notification
            else _error(code, message, id_, {"plugin": method.plugin} if method.plugin else None)
        )

    def _count(self, name: str, code: int | None, known: bool = True) -> None:
        if self.metrics is None:
            return
        label = name if known else "<unknown>"
        child = self._call_counters.get(label)
        if child is None:  # prometheus' labels() takes a lock and a dict walk: keep the child
            child = self._call_counters[label] = self.metrics.rpc_calls.labels(label)
        child.inc()
        if code is not None:
            self.metrics.rpc_errors.labels(label, str(code)).inc()

@dataclass(frozen=True)
class LineError:
    """A line that is no request: answered with one error, id null."""

    code: int
    message: str

_WS = re.compile(r"[ \t\n\r]*")

_DECODER = None

def parse_line(line: bytes) -> Any:
    """Parse one line: the JSON document, or a :class:`LineError` (parse error; a batch over ``MAX_BATCH``).

    A batch is parsed member by member and given up at member ``MAX_BATCH + 1``, so an oversized batch
    costs the time to scan its first thousand members, not a million objects.
    """
    if _FAST_DECODE is not None and line[:1] == b"{":
        # Fast path for the common case, one request object: msgspec parses the bytes directly. Whatever it
        # refuses (BOM, UTF-16/32, NaN, lone surrogates, digit-limit integers, bad JSON) takes the path below,
        # which accepts or refuses exactly as before.
        try:
            return _FAST_DECODE(line)
        except _FastDecodeError:
            pass
    global _DECODER
    if _DECODER is None:
        _DECODER = json.JSONDecoder(parse_constant=_no_constant)
    try:
        text = line.decode(json.detect_encoding(line), "surrogatepass")
        if text.startswith("\ufeff"):
            raise ValueError("a BOM is not JSON")
        i = _WS.match(text).end()  # type: ignore[union-attr]  # [ \t\n\r]* matches everywhere, never None
        if not text.startswith("[", i):
            return _DECODER.decode(text)
        items: list[Any] = []
        i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]  # [ \t\n\r]* matches everywhere, never None
        if text.startswith("]", i):
            i += 1
        else:
            while True:
                item, i = _DECODER.raw_decode(text, i)
                items.append(item)
                if len(items) > MAX_BATCH:
                    return LineError(errors.INVALID_REQUEST,
                                     f"Invalid Request: a batch may hold at most {MAX_BATCH:,} calls")
                i = _WS.match(text, i).end()  # type: ignore[union-attr]  # [ \t\n\r]* matches everywhere, never None
                if text.startswith(",", i):
                    i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]  # [ \t\n\r]* matches everywhere, never None
                    continue
                if text.startswith("]", i):
                    i += 1
                    break
                raise ValueError("expected , or ] in a batch")
        if _WS.match(text, i).end() != len(text):  # type: ignore[union-attr]  # [ \t\n\r]* matches everywhere, never None
            raise ValueError("extra data after the batch")
        return items
    except (ValueError, RecursionError):  # bad JSON or UTF-8, NaN/Infinity, an integer past Python's digit limit
        return LineError(errors.PARSE_ERROR, "Parse error")

_FAST_DECODE, _FastDecodeError = jsonx.FAST_DECODE, jsonx.FastDecodeError
