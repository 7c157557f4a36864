"""JSON-RPC 2.0 over a Unix socket: the method registry, request handling and the socket server.

One message per line both ways. Batches, notifications, named and positional params and the
specification's error codes are handled here; methods only see validated params as a dict.
"""

from __future__ import annotations

import contextvars
import errno
import functools
import grp
import json
import logging
import math
import os
import pwd
import re
import socket as stdsocket
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

from . import errors, jsonx
from .errors import TachyonError

log = logging.getLogger("tachyond.rpc")

MAX_LINE_BYTES = 1024 * 1024
MAX_IN_FLIGHT_PER_CONNECTION = 256   # calls: a batch counts each of its members
MAX_BATCH = 1000                     # calls in one batch; a longer batch is one -32600 (id null)
STREAM_FLUSH_S = 1.0   # at a graceful stop, how long streams (dex.watch) get to send what they queued
CORE_NAMESPACES = ("rpc", "daemon", "plugins", "wallet", "accounts", "tokens", "ledger", "onramp", "dex")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class Connection:
    """The socket connection a call arrived on, for methods that stream (subscriptions such as ``dex.watch``).

    ``notify`` writes a JSON-RPC notification (no ``id``) on the connection, never interleaved with answers;
    tasks started in ``nursery`` live until the client disconnects or the daemon stops.
    """

    def __init__(self, server: "RpcServer", stream: trio.SocketStream, send_lock: trio.Lock, nursery: trio.Nursery,
                 slot: "_Slot | None" = None):
        self._server = server
        self._stream = stream
        self._send_lock = send_lock
        self.nursery = nursery
        self._slot = slot

    def start_stream(self, fn: Callable[[], Awaitable[None]], stop: Callable[[str], None]) -> None:
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


class _Outbox:
    """A connection's answers on their way out: one write carries every answer ready by then.

    The first answering task to find nobody sending becomes the sender: it takes the connection's send lock
    (without a checkpoint when it is free; ``notify`` holds it too, so nothing interleaves) and writes what
    is pending until nothing is. Answers that arrive meanwhile are appended and their tasks return at once;
    the sender writes them in its next ``send_all``, and runs their after-answer hooks only once their bytes
    are on the socket. With pipelining clients (or many calls finishing in one group commit), that is one
    system call and one trio checkpoint for many answers instead of a lock round trip and a write each.
    """

    __slots__ = ("stream", "lock", "pending", "hooks", "sending")

    def __init__(self, stream: trio.SocketStream, lock: trio.Lock):
        self.stream = stream
        self.lock = lock
        self.pending: list[bytes] = []
        self.hooks: list[Callable[[], None]] = []
        self.sending = False

    async def send(self, data: bytes, hooks: list[Callable[[], None]]) -> None:
        self.pending.append(data)
        if hooks:
            self.hooks.extend(hooks)
        if self.sending:
            return
        self.sending = True
        lock = self.lock
        try:
            try:
                lock.acquire_nowait()
            except trio.WouldBlock:
                await lock.acquire()
            try:
                pending = self.pending
                while pending:
                    out = pending[0] if len(pending) == 1 else b"".join(pending)
                    pending.clear()
                    ready, self.hooks = self.hooks, []
                    await self.stream.send_all(out)
                    for hook in ready:
                        hook()
            finally:
                lock.release()
        finally:
            self.sending = False


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

    @functools.cached_property
    def _names(self) -> frozenset[str]:
        """The declared param names, computed once per method rather than on every call."""
        return frozenset(p.name for p in self.params)

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
        i = _WS.match(text).end()
        if not text.startswith("[", i):
            return _DECODER.decode(text)
        items: list[Any] = []
        i = _WS.match(text, i + 1).end()
        if text.startswith("]", i):
            i += 1
        else:
            while True:
                item, i = _DECODER.raw_decode(text, i)
                items.append(item)
                if len(items) > MAX_BATCH:
                    return LineError(errors.INVALID_REQUEST,
                                     f"Invalid Request: a batch may hold at most {MAX_BATCH:,} calls")
                i = _WS.match(text, i).end()
                if text.startswith(",", i):
                    i = _WS.match(text, i + 1).end()
                    continue
                if text.startswith("]", i):
                    i += 1
                    break
                raise ValueError("expected , or ] in a batch")
        if _WS.match(text, i).end() != len(text):
            raise ValueError("extra data after the batch")
        return items
    except (ValueError, RecursionError):  # bad JSON or UTF-8, NaN/Infinity, an integer past Python's digit limit
        return LineError(errors.PARSE_ERROR, "Parse error")


_FAST_DECODE, _FastDecodeError = jsonx.FAST_DECODE, jsonx.FastDecodeError


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _dump(obj: Any) -> bytes:
    # UTF-8 (not \u escapes); a lone surrogate (e.g. an id of "\ud800"), only expressible escaped, makes
    # jsonx fall back to the standard library's escaped form.
    return jsonx.dumps(obj) + b"\n"


# --- the socket server -----------------------------------------------------------------------------

# accept(2) failures that mean "out of a resource for now": the process or system is out of descriptors or
# memory. The server logs, backs off and keeps serving what is open; the next accept tries again.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_BACKOFF_MIN_S = 0.05
ACCEPT_BACKOFF_MAX_S = 1.0
ACCEPT_LOG_EVERY_S = 10.0


class AcceptBackoff:
    """What an accept loop does when accept() fails for want of descriptors or memory (EMFILE, ENFILE...).

    It logs (the first failure, then at most once per ``ACCEPT_LOG_EVERY_S`` with a count), counts the
    failure in ``tachyon_accept_errors``, and sleeps a backoff that doubles up to ``ACCEPT_BACKOFF_MAX_S``; a
    successful accept resets it. Connections already open are served meanwhile.
    """

    def __init__(self, server: str, metrics: Any = None, logger: logging.Logger | None = None):
        self.server = server
        self.metrics = metrics
        self.log = logger or log
        self.delay = ACCEPT_BACKOFF_MIN_S
        self.failures = 0
        self._last_log = -float("inf")

    @staticmethod
    def is_capacity_error(exc: BaseException) -> bool:
        return isinstance(exc, OSError) and exc.errno in ACCEPT_CAPACITY_ERRNOS

    async def failed(self, exc: OSError) -> None:
        self.failures += 1
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        if self.metrics is not None:
            self.metrics.accept_errors.labels(self.server, name).inc()
        now = trio.current_time()
        if now - self._last_log >= ACCEPT_LOG_EVERY_S:
            self._last_log = now
            self.log.error("%s: accept() failed with %s (%s), %d time(s) so far; new connections wait, open ones are "
                           "served; retrying in %.2fs (raise LimitNOFILE or lower the connection caps)",
                           self.server, name, os.strerror(exc.errno or 0), self.failures, self.delay)
        await trio.sleep(self.delay)
        self.delay = min(ACCEPT_BACKOFF_MAX_S, self.delay * 2)

    def succeeded(self) -> None:
        self.delay = ACCEPT_BACKOFF_MIN_S


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (systemd's LimitNOFILE), so the caps bind first."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard


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


class _Slot:
    """One allowed connection's bookkeeping: its uid, what it has in flight, its cancel scope (eviction)."""

    __slots__ = ("uid", "scope", "idle_scope", "in_flight", "streams", "partial", "idle_timeout_s", "gone")

    def __init__(self, uid: int, idle_timeout_s: float):
        self.uid = uid
        self.scope = trio.CancelScope()
        self.idle_scope: trio.CancelScope | None = None
        self.in_flight = 0       # calls, a batch counting each member
        self.streams = 0
        self.partial = False     # bytes of an unfinished line are buffered
        self.idle_timeout_s = idle_timeout_s
        self.gone = False

    def idle(self) -> bool:
        return self.in_flight == 0 and self.streams == 0 and not self.partial

    def update_idle(self) -> None:
        """(Re)start the idle timer when nothing is going on; stop it while something is."""
        if self.idle_scope is None or not self.idle_timeout_s:
            return
        self.idle_scope.deadline = trio.current_time() + self.idle_timeout_s if self.idle() else math.inf


class RpcServer:
    """Serves a Dispatcher on a Unix socket until the shutdown event, then drains in-flight calls.

    Connections are capped in total and per uid. At a cap, a new connection takes the place of the least
    recently active *idle* connection (nothing in flight, no stream, no partial line) of that uid (or of
    anyone, for the total cap); when none is idle it is refused with one error line. A connection idle for
    ``idle_timeout_s`` is closed. accept() failing for want of descriptors (EMFILE, ENFILE) is logged and
    retried with a backoff; the daemon goes on serving the connections it has.
    """

    def __init__(self, dispatcher: Dispatcher, *, drain_timeout_s: float = 10.0, max_connections: int = 1024,
                 max_connections_per_uid: int = 256, idle_timeout_s: float = 300.0):
        self.dispatcher = dispatcher
        self.drain_timeout_s = drain_timeout_s
        self.max_connections = max_connections
        self.max_connections_per_uid = max_connections_per_uid
        self.idle_timeout_s = idle_timeout_s
        self.in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        self._streams: dict[object, Callable[[str], None]] = {}   # running streams -> their stop()
        self._streams_changed = trio.Event()
        self._slots: OrderedDict[_Slot, None] = OrderedDict()     # least recently active first
        self._per_uid: dict[int, int] = {}
        self._last_refusal_log = -math.inf

    @property
    def metrics(self) -> Any:
        return self.dispatcher.metrics

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
        backoff = AcceptBackoff("rpc", self.metrics)
        try:
            async with trio.open_nursery() as conns:
                accept_scope = trio.CancelScope()

                async def accept_loop() -> None:
                    with accept_scope:
                        while True:
                            try:
                                stream = await listener.accept()
                            except OSError as exc:
                                if not AcceptBackoff.is_capacity_error(exc):
                                    raise
                                await backoff.failed(exc)
                                continue
                            backoff.succeeded()
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

    # --- caps -------------------------------------------------------------------------------------

    def _make_room(self, uid: int) -> str | None:
        """Evict an idle connection if a cap is reached; the cap's name when none can go."""
        if self._per_uid.get(uid, 0) >= self.max_connections_per_uid:
            victim = next((s for s in self._slots if s.uid == uid and s.idle()), None)
            if victim is None:
                return "per_uid"
            self._evict(victim)
        if len(self._slots) >= self.max_connections:
            victim = next((s for s in self._slots if s.idle()), None)
            if victim is None:
                return "total"
            self._evict(victim)
        return None

    def _evict(self, slot: _Slot) -> None:
        slot.scope.cancel()
        self._release(slot)
        if self.metrics is not None:
            self.metrics.rpc_connections_closed_idle.labels("evicted").inc()

    def _register(self, slot: _Slot) -> None:
        self._slots[slot] = None
        self._per_uid[slot.uid] = self._per_uid.get(slot.uid, 0) + 1
        if self.metrics is not None:
            self.metrics.rpc_connections_open.set(len(self._slots))

    def _release(self, slot: _Slot) -> None:
        if slot.gone:
            return
        slot.gone = True
        self._slots.pop(slot, None)
        left = self._per_uid.get(slot.uid, 1) - 1
        if left:
            self._per_uid[slot.uid] = left
        else:
            self._per_uid.pop(slot.uid, None)
        if self.metrics is not None:
            self.metrics.rpc_connections_open.set(len(self._slots))

    def _refusal_message(self, uid: int, reason: str) -> str:
        if reason == "per_uid":
            return (f"too many connections: uid {uid} has {self._per_uid.get(uid, 0)} open and busy "
                    f"(daemon.max_rpc_connections_per_uid = {self.max_connections_per_uid}); retry later")
        return (f"too many connections: {len(self._slots)} open and busy "
                f"(daemon.max_rpc_connections = {self.max_connections}); retry later")

    # --- one connection ---------------------------------------------------------------------------

    async def _connection(self, stream: trio.SocketStream, group: str | None) -> None:
        slot: _Slot | None = None
        try:
            ok, uid = peer_allowed(stream.socket, group)
            if not ok:
                log.warning("refused a connection from uid %d (not this user, root or the socket group)", uid)
                await self._refuse(stream, f"permission denied: uid {uid} may not use this socket")
                return
            reason = self._make_room(uid)
            if reason is not None:
                message = self._refusal_message(uid, reason)
                if self.metrics is not None:
                    self.metrics.rpc_connections_refused.labels(reason).inc()
                now = trio.current_time()
                if now - self._last_refusal_log >= 10.0:
                    self._last_refusal_log = now
                    log.warning("refused a connection: %s (further refusals are counted in "
                                "tachyon_rpc_connections_refused)", message)
                await self._refuse(stream, message)
                return
            slot = _Slot(uid, float(self.idle_timeout_s))
            self._register(slot)
            with slot.scope:
                await self._serve_connection(stream, slot)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; others are unaffected
        except Exception:
            log.exception("connection handler failed; the connection was closed")
        finally:
            if slot is not None:
                self._release(slot)
            with trio.CancelScope(shield=True):
                await stream.aclose()

    @staticmethod
    async def _refuse(stream: trio.SocketStream, message: str) -> None:
        with trio.move_on_after(1):
            await stream.send_all(_dump(_error(-32000, message, None)))
            # Half-close and drain what the peer sent, so closing does not reset the refusal away.
            await stream.send_eof()
            while len(await stream.receive_some(65536)) > 0:
                pass

    async def _serve_connection(self, stream: trio.SocketStream, slot: _Slot | None = None) -> None:
        slot = slot or _Slot(-1, 0)
        send_lock = trio.Lock()
        outbox = _Outbox(stream, send_lock)
        room = trio.Event()
        room.set()

        async def answer(doc: Any, calls: int) -> None:
            hooks: list[Callable[[], None]] = []
            _AFTER_ANSWER.set(hooks)   # this task's own context: the hooks of this call only
            try:
                out = await self.dispatcher.handle_doc(doc)
                if out is not None:
                    await outbox.send(out, hooks)   # runs the hooks once the answer is written
                else:
                    for hook in hooks:
                        hook()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                slot.in_flight -= calls
                slot.update_idle()
                room.set()
                self.in_flight -= 1
                if not self.in_flight:
                    self._idle.set()

        buf = bytearray()
        async with trio.open_nursery() as streams:
            # Streams (subscriptions) live in their own nursery, cancelled once the client stops sending and
            # its calls are answered; they never count as calls in flight, so they never hold up a drain.
            _CONNECTION.set(Connection(self, stream, send_lock, streams, slot))
            async with trio.open_nursery() as calls:
                with trio.CancelScope() as idle_scope:
                    slot.idle_scope = idle_scope
                    slot.update_idle()
                    while True:
                        data = await stream.receive_some(65536)
                        if not data:
                            break
                        if not slot.gone:
                            self._slots.move_to_end(slot)   # most recently active last
                        buf += data
                        while True:
                            nl = buf.find(b"\n")
                            if nl < 0:
                                break
                            line = bytes(buf[:nl])
                            del buf[:nl + 1]
                            if not line.strip():
                                continue
                            doc = parse_line(line)
                            n = len(doc) if isinstance(doc, list) and doc else 1
                            # Back-pressure: stop reading this client until its calls (a batch's each count)
                            # leave room; a batch larger than the limit waits for the connection to drain.
                            while slot.in_flight and slot.in_flight + n > MAX_IN_FLIGHT_PER_CONNECTION:
                                room = trio.Event()
                                await room.wait()
                            slot.in_flight += n
                            self.in_flight += 1
                            calls.start_soon(answer, doc, n)
                        slot.partial = bool(buf)
                        slot.update_idle()
                        if len(buf) > MAX_LINE_BYTES:
                            async with send_lock:
                                await stream.send_all(_dump(_error(errors.INVALID_REQUEST,
                                                                   "Invalid Request: line exceeds 1 MiB without a newline", None)))
                            calls.cancel_scope.cancel()
                            break
                slot.idle_scope = None
                if idle_scope.cancelled_caught:
                    log.debug("closed an RPC connection of uid %d: idle for %ss", slot.uid, self.idle_timeout_s)
                    if self.metrics is not None:
                        self.metrics.rpc_connections_closed_idle.labels("idle_timeout").inc()
            streams.cancel_scope.cancel()


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
