"""JSON-RPC 2.0 over a Unix socket: the method registry, request handling and the socket server.

One message per line both ways. Batches, notifications, named and positional params and the
specification's error codes are handled here; methods only see validated params as a dict.
"""

from __future__ import annotations

import contextvars
import errno
import grp
import json
import logging
import os
import pwd
import socket as stdsocket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

from . import errors
from .errors import TachyonError

log = logging.getLogger("tachyond.rpc")

MAX_LINE_BYTES = 1024 * 1024
MAX_IN_FLIGHT_PER_CONNECTION = 256
STREAM_FLUSH_S = 1.0   # at a graceful stop, how long streams (dex.watch) get to send what they queued
CORE_NAMESPACES = ("rpc", "daemon", "plugins", "wallet", "accounts", "tokens", "ledger", "onramp", "dex")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class Connection:
    """The socket connection a call arrived on, for methods that stream (subscriptions such as ``dex.watch``).

    ``notify`` writes a JSON-RPC notification (no ``id``) on the connection, never interleaved with answers;
    tasks started in ``nursery`` live until the client disconnects or the daemon stops.
    """

    def __init__(self, server: "RpcServer", stream: trio.SocketStream, send_lock: trio.Lock, nursery: trio.Nursery):
        self._server = server
        self._stream = stream
        self._send_lock = send_lock
        self.nursery = nursery

    def start_stream(self, fn: Callable[[], Awaitable[None]], stop: Callable[[str], None]) -> None:
        """Run ``fn`` (a stream of notifications) for as long as the connection lives. At a graceful stop the
        server calls ``stop(reason)``, which should make ``fn`` send what it has queued, say why, and return;
        the server waits a moment for that before it closes the connection."""
        self._server._start_stream(self.nursery, fn, stop)

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
            raise errors.InvalidParams(f"param '{self.name}' must be {' or '.join(self.types())}, not {_json_type(value)}",
                                       data={"param": self.name})
        if self.enum is not None and value not in self.enum:
            raise errors.InvalidParams(f"param '{self.name}' must be one of {', '.join(map(str, self.enum))}, not {value!r}",
                                       data={"param": self.name})
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

    def bind(self, params: Any) -> dict[str, Any]:
        """Map positional or named params onto the declaration; -32602 names the offending param."""
        if params is None:
            params = {}
        if isinstance(params, list):
            if len(params) > len(self.params):
                raise errors.InvalidParams(f"{self.name} takes at most {len(self.params)} positional params, got {len(params)}")
            named = {p.name: v for p, v in zip(self.params, params)}
        else:
            named = dict(params)
            known = {p.name for p in self.params}
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

    def method(self, name: str, params: list[Param] | tuple[Param, ...] = (), result: str = "") -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`add` for the core; the function's docstring is the method's doc."""
        def deco(fn: Handler) -> Handler:
            self.add(name, fn, params, fn.__doc__ or "", result)
            return fn
        return deco

    def discover(self, version: str) -> dict[str, Any]:
        """An OpenRPC 1.x document of every method, plugins' included."""
        return {
            "openrpc": "1.2.6",
            "info": {"title": "tachyond JSON-RPC API", "version": version,
                     "description": "JSON-RPC 2.0 over a Unix socket, one message per line. "
                                    "Amounts are decimal strings in whole token units; results also carry *_minor ints."},
            "methods": [m.openrpc() for m in sorted(self.methods.values(), key=lambda m: m.name)],
            # OpenRPC's components.errors is a map from a name to an Error object.
            "components": {"errors": {e.__name__: {"code": e.code, "message": e.title} for e in errors.ALL_ERRORS}},
        }


def _error(code: int, message: str, id_: Any, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "error": err, "id": id_}


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool))


class Dispatcher:
    """Turns request lines into response lines; counts calls and errors."""

    def __init__(self, registry: Registry, metrics: Any = None):
        self.registry = registry
        self.metrics = metrics
        self.stopping = False
        self._call_counters: dict[str, Any] = {}

    async def handle_line(self, line: bytes) -> bytes | None:
        """Answer one line (a request or a batch); None when nothing is to be sent back."""
        try:
            doc = json.loads(line, parse_constant=_no_constant)
        except (ValueError, RecursionError):  # bad JSON or UTF-8, NaN/Infinity, an integer past Python's digit limit
            return _dump(_error(errors.PARSE_ERROR, "Parse error", None))
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
            params = method.bind(req.get("params"))
            result = await method.handler(params)
        except TachyonError as exc:
            self._count(name, exc.code)
            return None if is_notification else _error(exc.code, exc.message, id_, exc.data)
        except Exception as exc:  # contained: one bad call never takes the daemon down
            if method.plugin:
                log.exception("plugin %s raised in %s", method.plugin, name)
                code, message = errors.PluginError.code, f"plugin '{method.plugin}' failed in {name}: {type(exc).__name__}: {exc}"
            else:
                log.exception("internal error in %s", name)
                code, message = errors.INTERNAL_ERROR, f"Internal error in {name}: {type(exc).__name__} (details in the daemon log)"
            self._count(name, code)
            return None if is_notification else _error(code, message, id_, {"plugin": method.plugin} if method.plugin else None)
        self._count(name, None)
        if is_notification:
            return None
        return {"jsonrpc": "2.0", "result": result, "id": id_}

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


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _dump(obj: Any) -> bytes:
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    except UnicodeEncodeError:  # a lone surrogate (e.g. an id of "\ud800") is only expressible escaped
        return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


# --- the socket server -----------------------------------------------------------------------------

class SocketInUse(Exception):
    """Another live daemon answers on the socket path."""


def prepare_socket_path(path: Path) -> None:
    """Refuse if a live daemon answers on ``path``; remove a stale socket file left by a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(path):
        return
    import stat

    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise SocketInUse(f"{path} exists and is not a socket; remove it or choose another daemon.socket")
    probe = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            os.unlink(path)
            log.info("removed stale socket %s", path)
            return
        raise SocketInUse(f"cannot probe {path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise SocketInUse(f"another tachyond is already running on {path}")


def bind_socket(path: Path, mode: int, group: str | None) -> trio.socket.SocketType:
    """Bind under a umask that yields ``mode`` (no window with a wider mode), then hand it to ``group``."""
    sock = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock._sock.bind(str(path))  # a plain bind: trio's async bind adds nothing for a path
    finally:
        os.umask(old)
    if group is not None:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
    sock.listen(4096)  # capped by net.core.somaxconn; a flood of connects must not refuse good clients
    return sock


def peer_allowed(sock: Any, group: str | None) -> tuple[bool, int]:
    """SO_PEERCRED: the same uid, root, or a member of ``group``."""
    raw = sock.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, gid = struct.unpack("3i", raw)
    if uid in (0, os.getuid()):
        return True, uid
    if group is not None:
        gid_allowed = grp.getgrnam(group).gr_gid
        if gid == gid_allowed:
            return True, uid
        try:
            name = pwd.getpwuid(uid).pw_name
            if gid_allowed in os.getgrouplist(name, gid):
                return True, uid
        except KeyError:
            pass
    return False, uid


class RpcServer:
    """Serves a Dispatcher on a Unix socket until the shutdown event, then drains in-flight calls."""

    def __init__(self, dispatcher: Dispatcher, *, drain_timeout_s: float = 10.0):
        self.dispatcher = dispatcher
        self.drain_timeout_s = drain_timeout_s
        self.in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        self._streams: dict[object, Callable[[str], None]] = {}   # running streams -> their stop()
        self._streams_changed = trio.Event()

    def _start_stream(self, nursery: trio.Nursery, fn: Callable[[], Awaitable[None]],
                      stop: Callable[[str], None]) -> None:
        token = object()
        self._streams[token] = stop

        async def run() -> None:
            try:
                await fn()
            finally:
                self._streams.pop(token, None)
                self._streams_changed.set()

        nursery.start_soon(run)

    async def _end_streams(self, reason: str) -> None:
        """Ask every stream to finish (flushing what it queued) and wait for them, at most STREAM_FLUSH_S."""
        for stop in list(self._streams.values()):
            stop(reason)
        with trio.move_on_after(STREAM_FLUSH_S):
            while self._streams:
                self._streams_changed = trio.Event()
                await self._streams_changed.wait()

    async def serve(self, path: Path, mode: int, group: str | None, shutdown: trio.Event, *,
                    task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        prepare_socket_path(path)
        sock = bind_socket(path, mode, group)
        listener = trio.SocketListener(sock)
        try:
            async with trio.open_nursery() as conns:
                accept_scope = trio.CancelScope()

                async def accept_loop() -> None:
                    with accept_scope:
                        while True:
                            stream = await listener.accept()
                            conns.start_soon(self._connection, stream, group)

                conns.start_soon(accept_loop)
                task_status.started(path)
                await shutdown.wait()
                self.dispatcher.stopping = True
                accept_scope.cancel()
                await listener.aclose()
                _unlink(path)
                with trio.move_on_after(self.drain_timeout_s):
                    await self._wait_idle()
                await self._end_streams("the daemon is stopping")
                conns.cancel_scope.cancel()
        finally:
            _unlink(path)
            sock.close()

    async def _wait_idle(self) -> None:
        while self.in_flight:
            self._idle = trio.Event()
            await self._idle.wait()

    async def _connection(self, stream: trio.SocketStream, group: str | None) -> None:
        try:
            ok, uid = peer_allowed(stream.socket, group)
            if not ok:
                log.warning("refused a connection from uid %d (not this user, root or the socket group)", uid)
                with trio.move_on_after(1):
                    await stream.send_all(_dump(_error(-32000, f"permission denied: uid {uid} may not use this socket", None)))
                    # Half-close and drain what the peer sent, so closing does not reset the refusal away.
                    await stream.send_eof()
                    while len(await stream.receive_some(65536)) > 0:
                        pass
                return
            await self._serve_connection(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; others are unaffected
        except Exception:
            log.exception("connection handler failed; the connection was closed")
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        send_lock = trio.Lock()
        in_flight = 0
        room = trio.Event()
        room.set()

        async def answer(line: bytes) -> None:
            nonlocal in_flight
            hooks: list[Callable[[], None]] = []
            _AFTER_ANSWER.set(hooks)   # this task's own context: the hooks of this call only
            try:
                out = await self.dispatcher.handle_line(line)
                if out is not None:
                    async with send_lock:
                        await stream.send_all(out)
                for hook in hooks:
                    hook()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                in_flight -= 1
                room.set()
                self.in_flight -= 1
                if not self.in_flight:
                    self._idle.set()

        buf = bytearray()
        async with trio.open_nursery() as streams:
            # Streams (subscriptions) live in their own nursery, cancelled once the client stops sending and
            # its calls are answered; they never count as calls in flight, so they never hold up a drain.
            _CONNECTION.set(Connection(self, stream, send_lock, streams))
            async with trio.open_nursery() as calls:
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    buf += data
                    while True:
                        nl = buf.find(b"\n")
                        if nl < 0:
                            break
                        line = bytes(buf[:nl])
                        del buf[:nl + 1]
                        if not line.strip():
                            continue
                        while in_flight >= MAX_IN_FLIGHT_PER_CONNECTION:  # back-pressure: stop reading this client
                            room = trio.Event()
                            await room.wait()
                        in_flight += 1
                        self.in_flight += 1
                        calls.start_soon(answer, line)
                    if len(buf) > MAX_LINE_BYTES:
                        async with send_lock:
                            await stream.send_all(_dump(_error(errors.INVALID_REQUEST,
                                                               "Invalid Request: line exceeds 1 MiB without a newline", None)))
                        calls.cancel_scope.cancel()
                        break
            streams.cancel_scope.cancel()


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
