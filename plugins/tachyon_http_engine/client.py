"""HttpEngine: the OrderBookEngine protocol over HTTP+JSON to a remote matching service (docs/engine-api.yaml)."""

from __future__ import annotations

import ipaddress
import os
import ssl
from decimal import Decimal, InvalidOperation
from typing import Any, Sequence
from urllib.parse import quote, urlsplit

import httpx

from tachyond.engine import Depth, EngineContext, EngineOrder, Event, MarketSpec
from tachyond.errors import EngineError, UnknownMarket

DEFAULT_TIMEOUT_S = 5
DEFAULT_TOKEN_ENV = "TACHYON_ENGINE_TOKEN"
_KEYS = ("url", "timeout_s", "token_env", "token_file", "cafile")


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
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
        if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) < 9:
            raise EngineError("engines.http.url: is required and must start with http:// or https://")
        try:
            host = urlsplit(url).hostname
        except ValueError:
            raise EngineError("engines.http.url: is not a valid URL") from None
        if url.startswith("http://") and not _is_loopback(host):
            # The bearer token and every order would cross the network in clear.
            raise EngineError(f"engines.http.url: https:// is required unless the host is loopback, not {host}")
        cafile = config.get("cafile")
        if cafile is not None:
            if not isinstance(cafile, str) or not cafile:
                raise EngineError("engines.http.cafile: must be the path of a PEM file")
            if not url.startswith("https://"):
                raise EngineError("engines.http.cafile: pins the server's CA for an https:// url only")
            try:
                ssl.create_default_context(cafile=cafile)
            except (OSError, ssl.SSLError) as exc:
                raise EngineError(f"engines.http.cafile: cannot load {cafile}: "
                                  f"{getattr(exc, 'strerror', None) or exc}") from None
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
                raise EngineError(f"engines.http.token_file: cannot read {config['token_file']}: {exc.strerror}") from None
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
            self._config = dict(config)
            if self._client is not None:
                self._client.headers["Authorization"] = f"Bearer {token}"
        return apply

    def __init__(self, ctx: EngineContext):
        self.validate_config(dict(ctx.config))
        self.name = ctx.name
        self.url = ctx.config["url"].rstrip("/")
        self.timeout_s = float(ctx.config.get("timeout_s", DEFAULT_TIMEOUT_S))
        self.token_env = ctx.config.get("token_env", DEFAULT_TOKEN_ENV)
        self._config = dict(ctx.config)
        self._client: httpx.AsyncClient | None = None
        self._markets: set[str] = set()

    async def start(self, markets: Sequence[MarketSpec]) -> None:
        """Connect and check that the server defines every market exactly as the daemon does."""
        token = self.read_token(self._config)
        cafile = self._config.get("cafile")
        # With cafile only that CA is trusted for the server's certificate (pinned); else the system's CAs.
        verify: Any = ssl.create_default_context(cafile=cafile) if cafile else True
        self._client = httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s, verify=verify,
                                         headers={"Authorization": f"Bearer {token}"})
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

    async def _call(self, method: str, path: str, *, json: Any = None, params: Any = None) -> dict[str, Any]:
        """One request; every failure is an EngineError (UnknownMarket for a 404) naming the url, never the token."""
        if self._client is None:
            raise EngineError(f"engine server {self.url}: the http engine is not started (or closed)")
        try:
            resp = await self._client.request(method, path, json=json, params=params)
        except httpx.TimeoutException:
            raise EngineError(f"engine server {self.url}: no answer within {self.timeout_s:g}s ({method} {path})") from None
        except httpx.HTTPError as exc:
            raise EngineError(f"engine server {self.url}: {type(exc).__name__}: {_reason(exc)}") from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        message = body.get("error") if isinstance(body, dict) else None
        if resp.status_code == 200 and isinstance(body, dict):
            return body
        if resp.status_code == 401:
            raise EngineError(f"engine server {self.url} refused the bearer token from "
                              f"{'token_file' if self._config.get('token_file') else self.token_env}")
        if resp.status_code == 404 and message:
            raise UnknownMarket(f"engine server {self.url}: {message}")
        if resp.status_code == 409 and message:
            raise EngineError(message)
        raise EngineError(f"engine server {self.url}: {method} {path} answered {resp.status_code}"
                          + (f": {message}" if message else ""))

    def _served(self, market: str) -> None:
        if market not in self._markets:
            raise UnknownMarket(f"market {market} is not served by the http engine")

    @staticmethod
    def _events(body: dict[str, Any]) -> list[Event]:
        try:
            return [Event.from_dict(d) for d in body["events"]]
        except (KeyError, TypeError) as exc:
            raise EngineError(f"engine server answered malformed events: {exc}") from None

    async def submit(self, order: EngineOrder) -> list[Event]:
        self._served(order.market)
        return self._events(await self._call("POST", "/v1/orders", json=dict(order.__dict__)))

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

    async def events_after(self, seq: int, limit: int = 1000) -> list[Event]:
        return self._events(await self._call("GET", "/v1/events", params={"after": seq, "limit": max(0, limit)}))

    async def last_seq(self) -> int:
        body = await self._call("GET", "/v1/events", params={"after": 0, "limit": 0})
        last = body.get("last_seq")
        if type(last) is not int:
            raise EngineError(f"engine server {self.url} answered a malformed last_seq")
        return last

    async def compact(self, applied_seq: int) -> None:
        """Tell the server every event ``<= applied_seq`` is applied; it may stop serving them."""
        await self._call("POST", "/v1/compact", json={"applied_seq": applied_seq})

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
