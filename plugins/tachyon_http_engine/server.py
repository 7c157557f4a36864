"""tachyon-engine-server: the reference implementation of the remote engine protocol (docs/engine-api.yaml).

Plain ASGI served by hypercorn under trio; the books are tachyond.matching's Matcher (see backend.py).
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from tachyond.config import ConfigError, MarketConfig
from tachyond.engine import EngineOrder, Event
from tachyond.errors import EngineError, UnknownMarket

from .backend import FeedGone, ServerBackend
from .server_config import ServerConfig, load_config, parse_config  # noqa: F401  (parse_config: re-exported)

log = logging.getLogger("tachyon_http_engine.server")

MAX_BODY_BYTES = 64 * 1024
MAX_LIMIT = 10_000
MAX_WAIT_S = 60
_ORDER_FIELDS = {"order_id": str, "market": str, "owner": str, "side": str, "price_ticks": int,
                 "qty_lots": int, "tif": str, "post_only": bool}
_ORDER_DEFAULTS = {"tif": "gtc", "post_only": False}


# ----- the ASGI app --------------------------------------------------------------------------------

class BadRequest(Exception):
    """A malformed request: answered 400."""


def _json_body(status: int, body: Any) -> tuple[int, bytes]:
    return status, json.dumps(body, separators=(",", ":")).encode()


def _events(events: list[Event]) -> dict[str, Any]:
    return {"events": [e.to_dict() for e in events]}


def _market_dict(m: MarketConfig) -> dict[str, str]:
    return {"symbol": m.symbol, "base": m.base, "quote": m.quote, "tick": str(m.tick), "lot": str(m.lot)}


def parse_order(body: Any) -> EngineOrder:
    """An EngineOrder from a request body, with exact types (a bool is not an int, no extra fields)."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    extra = set(body) - set(_ORDER_FIELDS)
    if extra:
        raise BadRequest(f"unknown field {sorted(extra)[0]!r}")
    values = dict(_ORDER_DEFAULTS)
    for name, typ in _ORDER_FIELDS.items():
        if name not in body:
            if name in values:
                continue
            raise BadRequest(f"field {name!r} is required")
        value = body[name]
        if type(value) is not typ:
            raise BadRequest(f"field {name!r} must be {'an integer' if typ is int else typ.__name__}")
        values[name] = value
    return EngineOrder(**values)


def _int_param(query: dict[str, list[str]], name: str, default: int, minimum: int, maximum: int) -> int:
    raw = query.get(name, [None])[-1]
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be an integer") from None
    if not minimum <= value <= maximum:
        raise BadRequest(f"query parameter {name!r} must be {minimum}..{maximum}")
    return value


def _float_param(query: dict[str, list[str]], name: str, default: float, minimum: float, maximum: float) -> float:
    raw = query.get(name, [None])[-1]
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be a number") from None
    if not minimum <= value <= maximum:
        raise BadRequest(f"query parameter {name!r} must be {minimum:g}..{maximum:g}")
    return value


class EngineApp:
    """The protocol's routes as one ASGI callable; every route needs ``Authorization: Bearer <token>``."""

    def __init__(self, backend: ServerBackend, markets: tuple[MarketConfig, ...], token: str):
        self.backend = backend
        self.markets = markets
        self.set_token(token)

    def set_token(self, token: str) -> None:
        """The accepted bearer tokens: a comma-separated list while a token is being rotated (any of them is
        accepted; docs/operations.md). SIGHUP re-reads them, so a rotation needs no restart."""
        self._expected = tuple(f"Bearer {t.strip()}".encode() for t in token.split(",") if t.strip())

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        status, body = await self._handle(scope, receive)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="tachyon-engine"'))
            headers.append((b"connection", b"close"))  # the body was not read: do not reuse the connection
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _handle(self, scope: dict, receive: Callable[[], Awaitable[dict]]) -> tuple[int, bytes]:
        auth = b""
        for key, value in scope.get("headers", []):
            if key.lower() == b"authorization":
                auth = value
        if not any([hmac.compare_digest(auth, expected) for expected in self._expected]):
            return _json_body(401, {"error": "missing or wrong bearer token"})
        # Market symbols hold a "/": route on the raw path, then decode each segment (ZEC%2FUSDC).
        raw_path = scope.get("raw_path") or scope["path"].encode()
        parts = [unquote(p.decode("latin-1")) for p in raw_path.split(b"?")[0].split(b"/")[1:]]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        method = scope["method"]
        client = "anonymous"
        for key, value in scope.get("headers", []):
            if key.lower() == b"x-tachyon-client":
                client = value.decode("latin-1")[:64]
        try:
            body = await self._read_body(receive) if method == "POST" else None
            return await self._route(method, parts, query, body, client)
        except BadRequest as exc:
            return _json_body(400, {"error": str(exc)})
        except UnknownMarket as exc:
            return _json_body(404, {"error": exc.message})
        except FeedGone as exc:
            return _json_body(410, {"error": exc.message})
        except EngineError as exc:
            return _json_body(409, {"error": exc.message})

    async def _read_body(self, receive: Callable[[], Awaitable[dict]]) -> Any:
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise BadRequest("client disconnected")
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise BadRequest(f"body larger than {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        data = b"".join(chunks)
        if not data:
            return {}
        try:
            return json.loads(data)
        except ValueError:
            raise BadRequest("body is not valid JSON") from None

    async def _route(self, method: str, parts: list[str], query: dict[str, list[str]], body: Any,
                     client: str = "anonymous") -> tuple[int, bytes]:
        b = self.backend
        if len(parts) < 2 or parts[0] != "v1":
            return _json_body(404, {"error": "no such route"})
        route, args = parts[1], parts[2:]
        want = {("markets", 0): "GET", ("orders", 0): "POST", ("orders", 3): "POST", ("depth", 1): "GET",
                ("open-orders", 1): "GET", ("events", 0): "GET", ("compact", 0): "POST"}
        expected = want.get((route, len(args)))
        if expected is None or (route == "orders" and args and args[2] != "cancel"):
            return _json_body(404, {"error": "no such route"})
        if method != expected:
            return _json_body(405, {"error": f"method not allowed: use {expected}"})
        if route == "markets":
            return _json_body(200, {"markets": [_market_dict(m) for m in self.markets]})
        if route == "orders" and not args:
            return _json_body(200, _events(await b.submit(parse_order(body))))
        if route == "orders":
            return _json_body(200, _events(await b.cancel(args[0], args[1])))
        if route == "depth":
            depth = b.depth(args[0], _int_param(query, "levels", 10, 0, MAX_LIMIT))
            return _json_body(200, {"seq": depth.seq, "bids": depth.bids, "asks": depth.asks})
        if route == "open-orders":
            return _json_body(200, {"orders": [o.__dict__ for o in b.open_orders(args[0])]})
        if route == "events":
            after = _int_param(query, "after", 0, 0, 2**63 - 1)
            limit = _int_param(query, "limit", 1000, 0, MAX_LIMIT)
            wait_s = _float_param(query, "wait_s", 0.0, 0.0, MAX_WAIT_S)
            # limit=0 only reads last_seq, so it never fails on a compacted feed.
            if not limit:
                events = []
            elif wait_s:
                events = await b.wait_events(after, limit, wait_s)
            else:
                events = b.events_after(after, limit)
            return _json_body(200, {"events": [e.to_dict() for e in events], "last_seq": b.last_seq(),
                                    "epoch": b.epoch, "durable": b.durable, "first_seq": b._floor + 1})
        applied = body.get("applied_seq") if isinstance(body, dict) else None
        if type(applied) is not int or applied < 0:
            raise BadRequest("field 'applied_seq' must be a non-negative integer")
        await b.compact(applied, client)
        return _json_body(200, {})


# ----- running -------------------------------------------------------------------------------------

def hypercorn_config(cfg: ServerConfig) -> HypercornConfig:
    """hypercorn's config built from ours (never from raw user keys)."""
    hc = HypercornConfig()
    hc.bind = [f"[{cfg.host}]:{cfg.port}" if ":" in cfg.host else f"{cfg.host}:{cfg.port}"]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("tachyon_http_engine.hypercorn")
    hc.graceful_timeout = 3.0
    hc.keep_alive_timeout = 75.0   # longer than a feed long-poll (MAX_WAIT_S)
    if cfg.certfile:
        hc.certfile, hc.keyfile = cfg.certfile, cfg.keyfile
    return hc


async def serve(cfg: ServerConfig, token: str, shutdown: trio.Event,
                *, task_status: Any = trio.TASK_STATUS_IGNORED, apps: list | None = None) -> None:
    """Serve until ``shutdown`` is set; reports the bound URLs through ``task_status``; the app is appended
    to ``apps`` (SIGHUP gives it the re-read token)."""
    backend = await trio.to_thread.run_sync(
        lambda: ServerBackend([m.symbol for m in cfg.markets], data_dir=cfg.data_dir, retention_s=cfg.retention_s))
    try:
        app = EngineApp(backend, cfg.markets, token)
        if apps is not None:
            apps.append(app)
        await hypercorn_serve(app, hypercorn_config(cfg), shutdown_trigger=shutdown.wait,
                              task_status=task_status, mode="asgi")
    finally:
        backend.close()


async def _run(cfg: ServerConfig, token: str) -> None:
    shutdown = trio.Event()
    apps: list[EngineApp] = []
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(partial(serve, cfg, token, shutdown, apps=apps))
            for url in urls:
                print(f"tachyon-engine-server: listening on {url} (engine {cfg.engine})", file=sys.stderr, flush=True)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    # Token rotation without a restart: re-read token_file (or token_env); a file that cannot be
                    # read keeps the tokens in force, and says so.
                    try:
                        fresh = cfg.token()
                    except ConfigError as exc:
                        log.error("SIGHUP: %s; the tokens in force are kept", exc)
                        continue
                    for app in apps:
                        app.set_token(fresh)
                    log.info("SIGHUP: bearer tokens re-read (%d accepted)", len(apps[0]._expected) if apps else 0)
                    continue
                log.info("received %s: stopping", signal.Signals(signum).name)
                shutdown.set()
                break


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tachyon-engine-server --config FILE``: exit 0 after SIGTERM/SIGINT, 2 on a bad config."""
    parser = argparse.ArgumentParser(prog="tachyon-engine-server",
                                     description="Reference server of the tachyond remote engine protocol.")
    parser.add_argument("--config", required=True, type=Path, help="TOML file: [server], [[tokens]], [[markets]]")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config)
        token = cfg.token()
    except ConfigError as exc:
        print(f"tachyon-engine-server: {exc}", file=sys.stderr)
        return 2
    trio.run(_run, cfg, token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
