"""The Stripe Crypto Onramp provider, on stripe-python's raw requests (no onramp class exists in stable releases)."""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

import stripe

from tachyond import jsonx
from tachyond.config import ConfigError
from tachyond.errors import OnrampError, RegionNotAllowed
from tachyond.providers import Embed, Quote, QuoteRequest, SessionInfo, SessionRequest, WebhookEvent, WebhookRejected

from .settings import Settings

SESSIONS_PATH = "/v1/crypto/onramp_sessions"
QUOTES_PATH = "/v1/crypto/onramp/quotes"
# The embedded widget's scripts, from Stripe's onramp guide: they must load from Stripe's own hosts.
STRIPE_JS = "https://js.stripe.com/v3/"
ONRAMP_JS = "https://crypto-js.stripe.com/crypto-onramp-outer.js"
# Stripe's refusals of a customer's region: RegionNotAllowed, with Stripe's message.
REGION_CODES = frozenset({"crypto_onramp_unsupported_country", "crypto_onramp_unsupportable_customer"})
# Refusals only the operator can fix: what to do, said plainly.
OPERATOR_CODES = {
    "crypto_onramp_disabled": "the onramp is switched off for this Stripe account: nothing can be bought until "
                              "Stripe switches it on again; see docs/stripe.md (applying for onramp access) "
                              "and ask Stripe support",
    "crypto_onramp_merchant_not_properly_setup": "the Stripe account's business profile is incomplete: fill in "
                                                 "the business name and website URL in the Dashboard "
                                                 "(Settings > Business), see docs/stripe.md",
}
SESSION_EVENT_TYPES = frozenset({"crypto.onramp_session_updated", "crypto.onramp_session.updated",
                                 "checkout.session.completed"})
WALLET_TAG_KEY = "tachyon_wallet"
_SESSION_ID_RE = re.compile(r"[A-Za-z0-9_]{1,255}")
_KEY_RE = re.compile(r"\b(?:sk|rk)_(?:test|live)_[A-Za-z0-9*]+")
_MAX_PAGES = 1000


def _scrub(text: str, secret: str | None = None) -> str:
    """Remove API keys (ours, and anything key-shaped) from a message."""
    if secret:
        text = text.replace(secret, "[redacted]")
    return _KEY_RE.sub("[redacted]", text)


def key_livemode(key: str) -> bool:
    """The mode a Stripe API key acts in: sk_live_/rk_live_ live (True), sk_test_/rk_test_ test (False)."""
    if key.startswith(("sk_live_", "rk_live_")):
        return True
    if key.startswith(("sk_test_", "rk_test_")):
        return False
    raise ValueError("not a Stripe secret or restricted key")


def request_wallet_key(network: str) -> str:
    """The create param key for a network's address: Stripe names Base ``base_network`` (``base`` is refused)."""
    return "base_network" if network == "base" else network


class _HTTPXClient(stripe.HTTPXClient):
    """stripe's HTTPXClient, handing the encoded form body to httpx as ``content`` (``data=str`` is deprecated)."""

    def _get_request_args_kwargs(self, method: str, url: str, headers: Mapping[str, str], post_data: Any):
        args, kwargs = super()._get_request_args_kwargs(method, url, headers, post_data)
        if isinstance(kwargs.get("data"), (str, bytes)):
            kwargs["content"] = kwargs.pop("data")
        return args, kwargs


class StripeOnrampProvider:
    """Creates, fetches and lists Stripe onramp sessions and verifies Stripe's webhooks."""

    name = "stripe"

    def __init__(self, config: Mapping[str, Any], *, environ: Mapping[str, str] | None = None):
        s = Settings(config, os.environ if environ is None else environ)
        self.api_base = s.string("api_base", "https://api.stripe.com").rstrip("/")
        if urlsplit(self.api_base).scheme not in ("http", "https") or not urlsplit(self.api_base).netloc:
            raise ConfigError(s._key("api_base"), "must be an http(s) URL such as https://api.stripe.com")
        self.tolerance_s = s.number("tolerance_s", 300, integer=True)
        self.default_network = s.string("default_network", "ethereum")
        self.default_currency = s.string("default_currency", "usdc")
        self.reconcile_interval_s = s.number("reconcile_interval_s", 300)
        self.reconcile_lookback_h = s.number("reconcile_lookback_h", 72)
        self.timeout_s = s.number("timeout_s", 30)
        self.max_network_retries = s.number("max_network_retries", 2, integer=True, exclusive=False)
        self.allowed = s.allowed()
        if self.allowed is not None and self.default_currency not in self.allowed.get(self.default_network, ()):
            raise ConfigError(s._key("default_network"), f"{self.default_currency} on {self.default_network} is "
                              "not in onramp.stripe.allowed")
        keys = s.secret("secret_key", "STRIPE_SECRET_KEY")
        if len(keys) != 1 or not keys[0].startswith(("sk_test_", "rk_test_", "sk_live_", "rk_live_")):
            where = "secret_key_file" if "secret_key_file" in config else "secret_key_env"
            raise ConfigError(s._key(where), "must hold one Stripe secret key (sk_test_…, sk_live_…, rk_test_… "
                              "or rk_live_…)")
        self._secret_key = keys[0]
        # Sessions of the other mode are never credited: a sandbox session delivers nothing.
        self.livemode = key_livemode(self._secret_key)
        self.publishable_key = None
        if "publishable_key_env" in config or "publishable_key_file" in config:
            [pk, *more] = s.secret("publishable_key", "STRIPE_PUBLISHABLE_KEY")
            where = "publishable_key_file" if "publishable_key_file" in config else "publishable_key_env"
            if more or not pk.startswith(("pk_test_", "pk_live_")):
                raise ConfigError(s._key(where), "must hold one Stripe publishable key (pk_test_… or pk_live_…)")
            if pk.startswith("pk_live_") != self.livemode:
                raise ConfigError(s._key(where), "the publishable key's mode (test/live) differs from the "
                                  "secret key's")
            self.publishable_key = pk
        self.widget_base_url = None
        if "widget_base_url" in config:
            base = s.string("widget_base_url", "").rstrip("/")
            parts = urlsplit(base)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
                raise ConfigError(s._key("widget_base_url"), "must be a bare http(s) origin such as "
                                  "http://127.0.0.1:12111 (the emulator's stand-in widget; unset: Stripe's)")
            if self.livemode:
                raise ConfigError(s._key("widget_base_url"), "the stand-in widget is for test keys only: "
                                  "a live key loads Stripe's own scripts")
            self.widget_base_url = base
        self._webhook_secrets = tuple(s.secret("webhook_secret", "STRIPE_WEBHOOK_SECRET"))
        if not all(w.startswith("whsec_") for w in self._webhook_secrets):
            where = "webhook_secret_file" if "webhook_secret_file" in config else "webhook_secret_env"
            raise ConfigError(s._key(where), "every webhook secret must start with whsec_")
        self._http = _HTTPXClient(timeout=self.timeout_s)
        self._client = stripe.StripeClient(self._secret_key, base_addresses={"api": self.api_base},
                                           http_client=self._http, max_network_retries=self.max_network_retries)

    def __repr__(self) -> str:
        return f"StripeOnrampProvider(api_base={self.api_base!r}, webhook_secrets=<{len(self._webhook_secrets)}>)"

    async def _request(self, method: str, path: str, **params: Any) -> dict[str, Any]:
        """One API call, Stripe's errors turned into OnrampError (message and code kept, keys removed)."""
        try:
            response = await self._client.raw_request_async(method, path, **params)
            obj = self._client.deserialize(response, api_mode="V1")
        except stripe.StripeError as exc:
            error = exc.error
            code = (getattr(error, "code", None) or exc.code) if error is not None else exc.code
            kind = getattr(error, "type", None) if error is not None else None
            if isinstance(exc, stripe.APIConnectionError):
                message, kind = f"cannot reach Stripe at {self.api_base}", "api_connection_error"
            else:
                message = _scrub(exc.user_message or "Stripe returned an error without a message", self._secret_key)
            suffix = f" ({code})" if code else ""
            data = {"code": code, "type": kind, "http_status": exc.http_status, "request_id": exc.request_id}
            if code in REGION_CODES:
                raise RegionNotAllowed(f"Stripe: {message}{suffix}", data=data) from None
            if code in OPERATOR_CODES:
                raise OnrampError(f"Stripe refused ({code}): {OPERATOR_CODES[code]}. Stripe said: {message}",
                                  data=data) from None
            raise OnrampError(f"Stripe: {message}{suffix}", data=data) from None
        return obj.to_dict()

    @staticmethod
    def _session(raw: Mapping[str, Any]) -> SessionInfo:
        """A Stripe session object as SessionInfo; shape errors are OnrampError, unknown statuses kept as-is."""
        if not isinstance(raw, Mapping) or not isinstance(raw.get("id"), str) or raw.get("object") not in (
                None, "crypto.onramp_session"):
            raise OnrampError("Stripe returned something that is not an onramp session")
        details = raw.get("transaction_details")
        details = details if isinstance(details, Mapping) else {}
        metadata = raw.get("metadata") or {}
        created = raw.get("created")
        status = raw.get("status")
        livemode = raw.get("livemode")
        addresses = details.get("wallet_addresses")
        addresses = {("base" if k == "base_network" else k): v for k, v in addresses.items()
                     if isinstance(v, str) and v} if isinstance(addresses, Mapping) else {}
        used = details.get("wallet_address")
        return SessionInfo(
            id=raw["id"],
            status=status if isinstance(status, str) else "unknown",
            created=created if isinstance(created, int) and not isinstance(created, bool) else 0,
            url=raw.get("redirect_url"),
            client_secret=raw.get("client_secret"),
            network=details.get("destination_network"),
            currency=details.get("destination_currency"),
            amount=details.get("destination_amount"),
            wallet_tag=metadata.get(WALLET_TAG_KEY) if isinstance(metadata, Mapping) else None,
            transaction_id=details.get("transaction_id"),
            raw=dict(raw),
            livemode=livemode if isinstance(livemode, bool) else None,
            delivered_to=used if isinstance(used, str) and used else None,
            addresses=addresses,
            address_locked=details.get("lock_wallet_address") is True,
        )

    async def create_session(self, req: SessionRequest) -> SessionInfo:
        """Create a session locked to ``req``'s wallet, network, currency and amount; tagged with the wallet id."""
        try:
            if Decimal(req.amount) <= 0:
                raise InvalidOperation
        except InvalidOperation:
            raise OnrampError(f"amount {req.amount!r} is not a positive decimal string") from None
        params: dict[str, Any] = {
            "wallet_addresses": {request_wallet_key(req.network): req.destination_address},
            "destination_currency": req.currency,
            "destination_network": req.network,
            "destination_currencies": [req.currency],
            "destination_networks": [req.network],
            "destination_amount": req.amount,
            "lock_wallet_address": True,
            "metadata": {WALLET_TAG_KEY: req.wallet_tag},
        }
        if req.customer_ip:
            params["customer_ip_address"] = req.customer_ip
        return self._session(await self._request("post", SESSIONS_PATH, **params))

    async def retrieve_session(self, session_id: str) -> SessionInfo:
        """The authoritative state of one session."""
        if not _SESSION_ID_RE.fullmatch(session_id or ""):
            raise OnrampError(f"{session_id!r} is not a Stripe onramp session id")
        return self._session(await self._request("get", f"{SESSIONS_PATH}/{session_id}"))

    async def list_sessions(self, created_gte: int, status: str | None = None) -> list[SessionInfo]:
        """Every session created at or after ``created_gte`` (unix s), following ``starting_after``, newest first;
        ``status`` filters at Stripe (the list endpoint takes it: the spec's enum of the five statuses)."""
        sessions: list[SessionInfo] = []
        params: dict[str, Any] = {"created": {"gte": int(created_gte)}, "limit": 100}
        if status is not None:
            params["status"] = status
        for _ in range(_MAX_PAGES):
            page = await self._request("get", SESSIONS_PATH, **params)
            data = page.get("data")
            if page.get("object") != "list" or not isinstance(data, list):
                raise OnrampError("Stripe returned a malformed session list")
            sessions.extend(self._session(item) for item in data)
            if not page.get("has_more") or not data:
                return sessions
            params["starting_after"] = sessions[-1].id
        raise OnrampError(f"more than {_MAX_PAGES} pages of sessions since {created_gte}: shorten the lookback")

    async def quote(self, req: QuoteRequest) -> Quote:
        """Stripe's price for ``req`` (``GET /v1/crypto/onramp/quotes``): the entry for its network and currency."""
        params: dict[str, Any] = {"destination_currencies": [req.currency], "destination_networks": [req.network]}
        if req.amount_is == "source":
            params.update(source_amount=req.amount, source_currency=req.source_currency)
        else:
            params["destination_amount"] = req.amount
        answer = await self._request("get", QUOTES_PATH, **params)
        quotes = answer.get("destination_network_quotes")
        entries = quotes.get(request_wallet_key(req.network)) if isinstance(quotes, Mapping) else None
        entry = next((e for e in entries or () if isinstance(e, Mapping)
                      and e.get("destination_currency") == req.currency), None)
        if entry is None:
            raise OnrampError(f"Stripe quoted nothing for {req.currency} on {req.network}")
        fees = entry.get("fees") if isinstance(entry.get("fees"), Mapping) else {}

        def text(value: Any) -> str | None:
            return value if isinstance(value, str) else None

        fetched = answer.get("rate_fetched_at")
        return Quote(network=req.network, currency=req.currency,
                     destination_amount=text(entry.get("destination_amount")),
                     source_amount=text(answer.get("source_amount")),
                     source_currency=text(answer.get("source_currency")),
                     source_total_amount=text(entry.get("source_total_amount")),
                     network_fee=text(fees.get("network_fee_monetary")),
                     transaction_fee=text(fees.get("transaction_fee_monetary")),
                     # Stripe's rate_fetched_at is a float (unix seconds with a fraction), not an int.
                     fetched_at=float(fetched) if isinstance(fetched, (int, float)) and not isinstance(fetched, bool)
                     and math.isfinite(fetched) else None)

    def embed(self, info: SessionInfo) -> Embed | None:
        """The embedded onramp widget for one session (None without a publishable key or a client secret).

        Stripe's scripts from Stripe's hosts; with ``widget_base_url`` (test keys only) the emulator's stand-in.
        """
        if not self.publishable_key or not info.client_secret:
            return None
        if self.widget_base_url:
            base = self.widget_base_url
            scripts, hosts = (f"{base}/v3/", f"{base}/crypto-onramp-outer.js"), (base,)
            frames = connects = imgs = hosts
        else:
            scripts = (STRIPE_JS, ONRAMP_JS)
            hosts = ("https://js.stripe.com", "https://crypto-js.stripe.com")
            frames = (*hosts, "https://crypto.link.com")
            connects = ("https://api.stripe.com", *hosts)
            imgs = ("https://*.stripe.com",)
        return Embed(scripts=scripts, script_hosts=hosts, frame_hosts=frames, connect_hosts=connects,
                     img_hosts=imgs, bootstrap_js=_BOOTSTRAP_JS,
                     config={"publishable_key": self.publishable_key, "client_secret": info.client_secret,
                             "session_id": info.id})

    def verify_webhook(self, body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        """Verify ``Stripe-Signature`` (any v1 with any secret; age and future skew within tolerance); parse."""
        header = next((v for k, v in headers.items() if k.lower() == "stripe-signature"), None)
        if not header:
            raise WebhookRejected("no_signature", "missing Stripe-Signature header")
        timestamp, v1, stamps = None, [], 0
        for item in header.split(","):
            name, _, value = item.strip().partition("=")
            if name == "t":
                stamps += 1
                try:
                    timestamp = int(value)
                except ValueError:
                    timestamp = None
            elif name == "v1":
                v1.append(value)
        if stamps > 1:
            # stripe-python signs over the first t=; an appended t= must not pass an old event's age check.
            raise WebhookRejected("bad_signature", "Stripe-Signature has more than one t= timestamp")
        if timestamp is None:
            raise WebhookRejected("bad_signature", "Stripe-Signature has no valid t= timestamp")
        if not v1:
            raise WebhookRejected("bad_signature", "Stripe-Signature has no v1 signature (v0 is not accepted)")
        if not any(self._signed_by(body, header, secret) for secret in self._webhook_secrets):
            raise WebhookRejected("bad_signature", "no v1 signature matches a configured webhook secret")
        now = time.time()
        if timestamp < now - self.tolerance_s:
            raise WebhookRejected("stale", f"signature timestamp is {int(now - timestamp)} s old "
                                  f"(tolerance {self.tolerance_s} s)")
        if timestamp > now + self.tolerance_s:
            raise WebhookRejected("future", f"signature timestamp is {int(timestamp - now)} s in the future "
                                  f"(tolerance {self.tolerance_s} s): check the clock")
        try:
            event = jsonx.loads(body)  # after the signature check: an unsigned body is never parsed
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise WebhookRejected("bad_json", "webhook body is not JSON") from None
        return self._event(event)

    @staticmethod
    def _signed_by(body: bytes, header: str, secret: str) -> bool:
        try:
            # tolerance=None: the age is checked by the caller, which also rejects future timestamps.
            return stripe.WebhookSignature.verify_header(body, header, secret, tolerance=None)
        except (stripe.SignatureVerificationError, UnicodeDecodeError):
            return False

    @staticmethod
    def _event(event: Any) -> WebhookEvent:
        if not isinstance(event, dict) or not isinstance(event.get("id"), str) or \
                not isinstance(event.get("type"), str):
            raise WebhookRejected("bad_json", "webhook body is not a Stripe event (no id or type)")
        created = event.get("created")
        created = created if isinstance(created, int) and not isinstance(created, bool) else 0
        obj = (event.get("data") or {}).get("object") if isinstance(event.get("data"), dict) else None
        session_id = status = tag = None
        # Only an onramp session object carries a session: a checkout.session.completed from Stripe Checkout
        # holds a cs_… Checkout Session, which the onramp API cannot retrieve, so it is acknowledged and ignored.
        if event["type"] in SESSION_EVENT_TYPES and isinstance(obj, dict) and \
                obj.get("object") == "crypto.onramp_session" and isinstance(obj.get("id"), str):
            session_id = obj["id"]
            status = obj.get("status") if isinstance(obj.get("status"), str) else None
            metadata = obj.get("metadata")
            tag = metadata.get(WALLET_TAG_KEY) if isinstance(metadata, dict) else None
        return WebhookEvent(event_id=event["id"], type=event["type"], created=created, session_id=session_id,
                            session_status=status, wallet_tag=tag, raw=event)

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._http.close_async()


# Mounts Stripe's embedded onramp (the guide's calls) and shows the status it reports in the browser.
_BOOTSTRAP_JS = """
(function () {
  var cfg = window.ONRAMP_CONFIG;
  var status = document.getElementById("status");
  var onramp = window.StripeOnramp(cfg.publishable_key);
  var session = onramp.createSession({clientSecret: cfg.client_secret});
  session.addEventListener("onramp_session_updated", function (e) {
    var s = e && e.payload && e.payload.session;
    if (s && s.status) { status.textContent = s.status; }
  });
  session.mount("#onramp-element");
})();
"""


def make_provider(config: Mapping[str, Any]) -> StripeOnrampProvider:
    """The ``stripe`` provider factory: validates ``[onramp.stripe]`` and resolves its secrets."""
    return StripeOnrampProvider(config)
