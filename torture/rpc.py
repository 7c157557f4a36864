"""A small trio JSON-RPC client for the daemon's Unix socket (one message per line), as the load clients use it."""

from __future__ import annotations

import itertools
import json
from typing import Any

import trio

STOPPING = -32050


class Down(Exception):
    """The daemon is not answering: the connection failed, closed, or the daemon said it is stopping."""


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(f"{code} {message}")
        self.code, self.message, self.data = code, message, data


class Rpc:
    """One connection, reopened on the next call after it broke."""

    def __init__(self, path: str):
        self.path = path
        self.stream: trio.SocketStream | None = None
        self.buf = b""
        self.ids = itertools.count(1)

    async def aclose(self) -> None:
        if self.stream is not None:
            stream, self.stream, self.buf = self.stream, None, b""
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _line(self) -> bytes:
        assert self.stream is not None
        while b"\n" not in self.buf:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    async def call(self, method: str, params: Any = None, *, timeout_s: float = 60) -> Any:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self.ids), "method": method}
        if params is not None:
            msg["params"] = params
        try:
            with trio.fail_after(timeout_s):
                if self.stream is None:
                    self.stream = await trio.open_unix_socket(self.path)
                await self.stream.send_all(json.dumps(msg).encode() + b"\n")
                while True:
                    answer = json.loads(await self._line())
                    if answer.get("id") == msg["id"]:
                        break
        except (OSError, EOFError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await self.aclose()
            raise Down(f"{type(exc).__name__}: {exc}") from None
        except trio.TooSlowError:
            await self.aclose()
            raise
        if "error" in answer:
            err = answer["error"]
            if err.get("code") == STOPPING:
                await self.aclose()
                raise Down("daemon is stopping")
            raise RpcError(err["code"], err["message"], err.get("data"))
        return answer["result"]
