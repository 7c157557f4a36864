"""A blocking JSON-RPC 2.0 client over the daemon's Unix socket, one message per line."""

from __future__ import annotations

import errno
import itertools
import json
import os
import socket
import time
from typing import Any

DEFAULT_SOCKET = "/run/tachyond/rpc.sock"


class RpcError(Exception):
    """The daemon answered with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class DaemonNotRunning(Exception):
    """Nothing listens on the socket (absent, refused or not permitted)."""


def default_socket() -> str:
    return os.environ.get("TACHYON_SOCKET") or DEFAULT_SOCKET


class Client:
    """One connection; ``call`` sends a request and waits for its answer."""

    def __init__(self, path: str | None = None, *, who: str = "tachyon-ctl", timeout_s: float = 60.0):
        self.path = path or default_socket()
        self.who = who
        self.timeout_s = timeout_s
        self._ids = itertools.count(1)
        self._sock: socket.socket | None = None
        self.notifications: list[dict[str, Any]] = []   # server notifications read while waiting for an answer
        self._buf = b""

    def connect(self) -> None:
        for attempt in range(50):
            try:
                return self._connect_once()
            except BlockingIOError:  # EAGAIN: the listen backlog is full for a moment
                time.sleep(0.01 * (attempt + 1))
        raise DaemonNotRunning(f"tachyond at {self.path} is too busy to accept a connection; retry")

    def _connect_once(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(self.path)
        except BlockingIOError:
            sock.close()
            raise
        except FileNotFoundError:
            sock.close()
            raise DaemonNotRunning(f"tachyond is not running: no socket at {self.path} "
                                   "(start it, or point --socket / $TACHYON_SOCKET at its socket)") from None
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.ECONNREFUSED, errno.ENOTSOCK):
                raise DaemonNotRunning(
                    f"tachyond is not running: {self.path} refuses connections (a stale socket?)"
                ) from None
            if exc.errno == errno.EACCES:
                raise DaemonNotRunning(
                    f"permission denied on {self.path}: run as the daemon's user or a member of its socket_group"
                ) from None
            raise DaemonNotRunning(f"cannot reach tachyond at {self.path}: {exc.strerror}") from None
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def call(self, method: str, params: Any = None, *, label: str | None = None) -> Any:
        if self._sock is None:
            self.connect()
        req_id = f"{self.who}:{label or method}#{next(self._ids)}"
        req: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": req_id}
        if params is not None:
            req["params"] = params
        assert self._sock is not None
        try:
            self._sock.sendall(json.dumps(req).encode() + b"\n")
            while True:
                line = self._read_line()
                msg = json.loads(line)
                if isinstance(msg, dict) and "method" in msg:
                    self.notifications.append(msg)   # a stream's notification (dex.watch), not this call's answer
                elif isinstance(msg, dict) and msg.get("id") in (req_id, None):
                    break
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise DaemonNotRunning(f"tachyond closed the connection ({exc.strerror}); is it stopping?") from None
        except TimeoutError:
            raise DaemonNotRunning(
                f"tachyond at {self.path} did not answer {method} within {self.timeout_s:g} s"
            ) from None
        except ValueError:
            raise DaemonNotRunning(
                f"{self.path} answered something that is not JSON-RPC; is it tachyond's socket?"
            ) from None
        if "error" in msg:
            err = msg["error"]
            if msg.get("id") is None and err.get("code") == -32000:
                # Not an answer to this call: the daemon refused the connection itself (peer credentials).
                raise DaemonNotRunning(f"tachyond at {self.path} refused this connection: {err.get('message')}")
            raise RpcError(err.get("code", -32603), err.get("message", "unknown error"), err.get("data"))
        return msg.get("result")

    def batch(self, calls: list[tuple[str, Any]], *, label: str = "batch") -> list[Any]:
        """Several independent calls in one JSON-RPC batch (one line out, one line back): ``calls`` is a list of
        ``(method, params)``; returns their results in the same order, or raises the first error (by
        position) as RpcError after all have run, with ``data["index"]`` naming the call that failed."""
        if not calls:
            return []
        if self._sock is None:
            self.connect()
        first = next(self._ids)
        ids = [f"{self.who}:{label}#{first}.{i}" for i in range(len(calls))]
        reqs = []
        for req_id, (method, params) in zip(ids, calls, strict=False):
            req: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": req_id}
            if params is not None:
                req["params"] = params
            reqs.append(req)
        assert self._sock is not None
        try:
            self._sock.sendall(json.dumps(reqs).encode() + b"\n")
            while True:
                msg = json.loads(self._read_line())
                if isinstance(msg, dict) and "method" in msg:
                    self.notifications.append(msg)
                    continue
                if isinstance(msg, dict) and "error" in msg and msg.get("id") is None:
                    err = msg["error"]   # the batch itself was refused (or the connection, see call)
                    raise RpcError(err.get("code", -32603), err.get("message", "unknown error"), err.get("data"))
                if isinstance(msg, list):
                    break
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise DaemonNotRunning(f"tachyond closed the connection ({exc.strerror}); is it stopping?") from None
        except TimeoutError:
            raise DaemonNotRunning(
                f"tachyond at {self.path} did not answer a batch within {self.timeout_s:g} s"
            ) from None
        except ValueError:
            raise DaemonNotRunning(
                f"{self.path} answered something that is not JSON-RPC; is it tachyond's socket?"
            ) from None
        by_id = {a.get("id"): a for a in msg if isinstance(a, dict)}
        results = []
        for i, req_id in enumerate(ids):
            answer = by_id.get(req_id)
            if answer is None:
                raise RpcError(-32603, f"the daemon's batch answer has no answer for {calls[i][0]}", {"index": i})
            if "error" in answer:
                err = answer["error"]
                data = err.get("data")
                data = {**data, "index": i} if isinstance(data, dict) else {"index": i, "data": data}
                raise RpcError(err.get("code", -32603), err.get("message", "unknown error"), data)
            results.append(answer.get("result"))
        return results

    def next_notification(self) -> dict[str, Any]:
        """The next server notification on this connection ({method, params}), waiting without a timeout."""
        if self.notifications:
            return self.notifications.pop(0)
        assert self._sock is not None
        self._sock.settimeout(None)
        try:
            while True:
                msg = json.loads(self._read_line())
                if isinstance(msg, dict) and "method" in msg:
                    return msg
        except ValueError:
            raise DaemonNotRunning(f"{self.path} sent something that is not JSON-RPC") from None
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise DaemonNotRunning(f"tachyond closed the connection ({exc.strerror})") from None
        finally:
            if self._sock is not None:
                self._sock.settimeout(self.timeout_s)

    def _read_line(self) -> bytes:
        assert self._sock is not None
        while b"\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise DaemonNotRunning("tachyond closed the connection before answering; is it stopping?")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line
