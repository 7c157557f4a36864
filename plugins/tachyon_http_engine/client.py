"""HttpEngine: the OrderBookEngine protocol over HTTP+JSON to a remote matching service (docs/engine-api.yaml)."""

from __future__ import annotations

import ipaddress
import json as jsonlib
import logging
import os
import ssl
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from tachyond.engine import Depth, EngineContext, EngineOrder, EngineUnavailable, Event, MarketSpec
from tachyond.errors import EngineError, UnknownMarket

log = logging.getLogger("tachyon_http_engine.client")

DEFAULT_TIMEOUT_S = 5
DEFAULT_TOKEN_ENV = "TACHYON_ENGINE_TOKEN"
MAX_ANSWER_BYTES = 16 * 1024 * 1024   # a larger answer is refused, never read whole
_EVENT_FIELDS = frozenset(Event._fields)
_EVENT_REQUIRED = _EVENT_FIELDS - Event._field_defaults.keys()
_KEYS = ("url", "timeout_s", "token_env", "token_file", "cafile")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _seg(text: str) -> str:
    """One URL path segment: a market's "/" is sent as %2F."""
    return quote(text, safe="")


def _decimal(text: Any) -> Decimal | None:
    try:
        return Decimal(text) if isinstance(text, str) else None
    except InvalidOperation:
        return None


def _reason(exc: BaseException) -> str:
    """What went wrong: httpx's own text, or (a TLS refusal under trio says nothing itself) the certificate or
    TLS error found along the exception's causes."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLError):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


class HttpEngine:
    """A remote engine. Durable: the server keeps the sequenced feed the core settles from."""

    durable = True

    @staticmethod
    def validate_config(config: dict) -> None:
        """Checked by the daemon at start, so a bad [engines.http] stops it before anything runs."""
        for key in config:
            if key not in _KEYS:
                raise EngineError(f"engines.http.{key}: unknown key (known: {', '.join(_KEYS)})")
        url = config.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://", "unix:")) or len(url) < 9:
            raise EngineError("engines.http.url: is required and must start with https://, http:// (loopback "
                              "hosts only) or unix:/path/to/socket")
        if url.startswith("http://") and not _loopback(urlsplit(url).hostname or ""):
            raise EngineError("engines.http.url: plain http:// is allowed only to a loopback host (127.0.0.1, "
                              "::1, localhost); use https:// (the token and every order cross the network)")
        for key in ("token_file", "cafile"):
            if key in config and (not isinstance(config[key], str) or not config[key]):
                raise EngineError(f"engines.http.{key}: must be a file path")
        if "token_file" in config and "token_env" in config:
            raise EngineError("engines.http.token_file: give token_env or token_file, not both")
        timeout = config.get("timeout_s", DEFAULT_TIMEOUT_S)
        if type(timeout) not in (int, float) or not timeout > 0:
            raise EngineError("engines.http.timeout_s: must be a positive number of seconds")
        token_env = config.get("token_env", DEFAULT_TOKEN_ENV)
        if not isinstance(token_env, str) or not token_env:
            raise EngineError("engines.http.token_env: must name an environment variable")

    @staticmethod
    def read_token(config: dict) -> str:
        """The bearer token: ``token_file``'s content (``$CREDENTIALS_DIRECTORY/…`` allowed), else ``token_env``'s."""
        from tachyond.config import expand_path

        if config.get("token_file"):
            try:
                token = open(expand_path(config["token_file"]), encoding="utf-8").read().strip()
            except OSError as exc:
                raise EngineError(
                    f"engines.http.token_file: cannot read {config['token_file']}: {exc.strerror}"
                ) from None
            if not token:
                raise EngineError(f"engines.http.token_file: {config['token_file']} is empty")
            return token
        env = config.get("token_env", DEFAULT_TOKEN_ENV)
        token = os.environ.get(env, "")
        if not token:
            raise EngineError(f"engines.http.token_env: environment variable {env} is not set or empty")
        return token

    def prepare_config(self, config: dict) -> Any:
        """Reload: read the new token now (a ConfigError naming the key when it cannot be read); the returned
        apply makes every later request carry it. Requests in flight finish with the old one."""
        from tachyond.config import ConfigError

        try:
            self.validate_config(config)
            token = self.read_token(config)
        except EngineError as exc:
            key, _, reason = exc.message.partition(": ")
            raise ConfigError(key, reason) from None

        def apply() -> None:
            self.token_env = config.get("token_env", DEFAULT_TOKEN_ENV)
            self.token_file = config.get("token_file")
            if self._client is not None:
                self._client.headers["Authorization"] = f"Bearer {token}"
        return apply

    def __init__(self, ctx: EngineContext):
        self.validate_config(dict(ctx.config))
        self.name = ctx.name
        url = ctx.config["url"].rstrip("/")
        self._uds: str | None = None
        if url.startswith("unix:"):
            self._uds, url = url[len("unix:"):], "http://localhost"
        self.url = url
        self.timeout_s = float(ctx.config.get("timeout_s", DEFAULT_TIMEOUT_S))
        self.token_env = ctx.config.get("token_env", DEFAULT_TOKEN_ENV)
        self.token_file = ctx.config.get("token_file")
        self.cafile = ctx.config.get("cafile")
        self.client_id = ctx.client_id
        self._client: httpx.AsyncClient | None = None
        self._markets: set[str] = set()
        self.epoch: str | None = None      # the server's feed epoch, read at start
        self.feed_durable = True           # whether the server says its log survives a restart

    @property
    def _token_source(self) -> str:
        return f"engines.http.token_file {self.token_file}" if self.token_file else self.token_env

    def _token(self) -> str:
        return self.read_token({"token_file": self.token_file} if self.token_file else {"token_env": self.token_env})

    async def start(self, markets: Sequence[MarketSpec]) -> None:
        """Connect, check that the server defines every market exactly as the daemon does, read its feed's epoch."""
        token = self._token()
        verify: Any = True
        if self.cafile:
            try:
                verify = ssl.create_default_context(cafile=self.cafile)
            except (OSError, ssl.SSLError) as exc:
                raise EngineError(f"engines.http.cafile: cannot load {self.cafile}: {exc}") from None
        transport = httpx.AsyncHTTPTransport(uds=self._uds, verify=verify) if self._uds else None
        self._client = httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s, verify=verify,
                                         transport=transport,
                                         headers={"Authorization": f"Bearer {token}",
                                                  "X-Tachyon-Client": self.client_id or "anonymous"})
        served = {m.get("symbol"): m for m in (await self._call("GET", "/v1/markets"))["markets"]
                  if isinstance(m, dict)}
        for spec in markets:
            theirs = served.get(spec.symbol)
            if theirs is None:
                raise EngineError(f"market {spec.symbol}: the engine server at {self.url} does not serve it "
                                  f"(it serves: {', '.join(sorted(map(str, served))) or 'nothing'})")
            diffs = []
            for field in ("base", "quote"):
                if theirs.get(field) != getattr(spec, field):
                    diffs.append(f"{field} {getattr(spec, field)} here, {theirs.get(field)} on the server")
            for field in ("tick", "lot"):
                if _decimal(theirs.get(field)) != _decimal(getattr(spec, field)):
                    diffs.append(f"{field} {getattr(spec, field)} here, {theirs.get(field)} on the server")
            if diffs:
                raise EngineError(f"market {spec.symbol} is defined differently by the engine server at "
                                  f"{self.url}: {'; '.join(diffs)}")
        self._markets = {spec.symbol for spec in markets}
        feed = await self._call("GET", "/v1/events", params={"after": 0, "limit": 0})
        epoch = feed.get("epoch")
        if epoch is not None and (not isinstance(epoch, str) or not 0 < len(epoch) <= 64):
            raise EngineError(f"engine server {self.url} announced a malformed feed epoch")
        self.epoch = epoch
        self.feed_durable = feed.get("durable", True) is not False

    async def _call(self, method: str, path: str, *, json: Any = None, params: Any = None,
                    timeout_s: float | None = None) -> dict[str, Any]:
        """One request; every failure is an EngineError (UnknownMarket for a 404) naming the url, never the token.

        Unreachable, timeouts and 5xx are EngineUnavailable (worth retrying). The server's own error text is
        logged, not passed on: what a caller sees is this client's wording.
        """
        if self._client is None:
            raise EngineUnavailable(f"engine server {self.url}: the http engine is not started (or closed)")
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            async with self._client.stream(method, path, json=json, params=params, timeout=timeout) as resp:
                data = bytearray()
                async for chunk in resp.aiter_bytes():
                    data += chunk
                    if len(data) > MAX_ANSWER_BYTES:
                        raise EngineError(f"engine server {self.url}: {method} {path} answered more than "
                                          f"{MAX_ANSWER_BYTES} bytes; refused")
        except httpx.TimeoutException:
            raise EngineUnavailable(f"engine server {self.url}: no answer within {timeout:g}s "
                                    f"({method} {path})") from None
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"engine server {self.url}: {type(exc).__name__}: {_reason(exc)}") from None
        try:
            body, is_json = jsonlib.loads(bytes(data)), True
        except ValueError:
            body, is_json = None, False
        message = body.get("error") if isinstance(body, dict) else None
        if resp.status_code == 200 and isinstance(body, dict):
            return body
        if resp.status_code == 200:
            raise EngineError(f"engine server {self.url}: {method} {path} answered 200 with "
                              f"{'JSON that is not an object' if is_json else 'a body that is not JSON'}")
        if message is not None:
            log.warning("engine server %s: %s %s answered %d: %.200r", self.url, method, path, resp.status_code,
                        message)
        if resp.status_code == 401:
            raise EngineError(f"engine server {self.url} refused the bearer token from {self._token_source}")
        if resp.status_code == 404 and message:
            raise UnknownMarket(f"engine server {self.url}: {method} {path}: not found there")
        if resp.status_code == 410:
            raise EngineError(f"engine server {self.url}: {method} {path}: those events are gone from its feed "
                              "(compacted)")
        if resp.status_code >= 500:
            raise EngineUnavailable(f"engine server {self.url}: {method} {path} answered {resp.status_code}")
        raise EngineError(f"engine server {self.url}: {method} {path} answered {resp.status_code} (its reason is "
                          "in the daemon's log)")

    def _served(self, market: str) -> None:
        if market not in self._markets:
            raise UnknownMarket(f"market {market} is not served by the http engine")

    @staticmethod
    def _events(body: dict[str, Any]) -> list[Event]:
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list):
            raise EngineError("engine server answered malformed events: no list of events")
        for i, d in enumerate(events, 1):
            if not isinstance(d, dict):
                raise EngineError(f"engine server answered malformed events: event {i} of the answer is not an object")
            unknown = d.keys() - _EVENT_FIELDS
            missing = _EVENT_REQUIRED - d.keys()
            if unknown or missing:
                # The server's own text (a field's name) is logged bounded and escaped, never put in the error
                # that reaches dex.markets, /healthz reasons or RPC answers.
                log.warning("engine server answered an event with fields %.200r not in the protocol", sorted(unknown))
                what = ", ".join(filter(None, [f"{len(unknown)} field(s) not in the protocol (named in the daemon's "
                                               "log)" if unknown else "",
                                               f"no {', '.join(sorted(missing))}" if missing else ""]))
                raise EngineError(f"engine server answered malformed events: event {i} of the answer has {what}")
        return [Event.from_dict(d) for d in events]

    async def submit(self, order: EngineOrder) -> list[Event]:
        self._served(order.market)
        try:
            body = await self._call("POST", "/v1/orders", json=dict(order.__dict__))
        except (EngineUnavailable, UnknownMarket):
            raise
        except EngineError:
            raise EngineError(f"engine server {self.url} refused order {order.order_id} (its reason is in the "
                              "daemon's log)") from None
        return self._events(body)

    async def cancel(self, market: str, order_id: str) -> list[Event]:
        self._served(market)
        return self._events(await self._call("POST", f"/v1/orders/{_seg(market)}/{_seg(order_id)}/cancel"))

    async def depth(self, market: str, levels: int) -> Depth:
        self._served(market)
        body = await self._call("GET", f"/v1/depth/{_seg(market)}", params={"levels": max(0, levels)})
        try:
            return Depth(int(body["seq"]), [(int(p), int(q)) for p, q in body["bids"]],
                         [(int(p), int(q)) for p, q in body["asks"]])
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineError(f"engine server {self.url} answered a malformed depth: {exc}") from None

    async def open_orders(self, market: str) -> list[EngineOrder]:
        self._served(market)
        body = await self._call("GET", f"/v1/open-orders/{_seg(market)}")
        try:
            return [EngineOrder(**o) for o in body["orders"]]
        except (KeyError, TypeError) as exc:
            raise EngineError(f"engine server {self.url} answered malformed open orders: {exc}") from None

    def _same_feed(self, body: dict[str, Any]) -> None:
        if self.epoch is not None and body.get("epoch") != self.epoch:
            raise EngineUnavailable(f"engine server {self.url}: its feed epoch is no longer {self.epoch}")

    async def events_after(self, seq: int, limit: int = 1000) -> list[Event]:
        body = await self._call("GET", "/v1/events", params={"after": seq, "limit": max(0, limit)})
        self._same_feed(body)
        return self._events(body)

    async def follow(self, after: int, wait_s: float) -> list[Event]:
        """Long-poll the feed: events after ``after``, the server waiting up to ``wait_s`` for the first."""
        body = await self._call("GET", "/v1/events", params={"after": after, "limit": 1000, "wait_s": wait_s},
                                timeout_s=wait_s + self.timeout_s)
        self._same_feed(body)
        return self._events(body)

    async def last_seq(self) -> int:
        body = await self._call("GET", "/v1/events", params={"after": 0, "limit": 0})
        last = body.get("last_seq")
        if type(last) is not int:
            raise EngineError(f"engine server {self.url} answered a malformed last_seq")
        return last

    async def compact(self, applied_seq: int) -> None:
        """Acknowledge every event ``<= applied_seq`` (the header X-Tachyon-Client says whose); the server
        decides what it compacts. (The core sends it every 256 seqs and whenever the feed is idle.)"""
        await self._call("POST", "/v1/compact", json={"applied_seq": applied_seq})

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
