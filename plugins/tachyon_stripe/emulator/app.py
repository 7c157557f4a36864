"""A Stripe Crypto Onramp emulator: Stripe's wire format, a hosted checkout page, signed webhooks, switches.

Run it with ``tachyon-stripe-emulator`` or, inside a trio nursery, ``emu = await nursery.start(serve_emulator, cfg)``.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import string
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from ..forms import FormError, decode_form
from ..sessions import ApiError, SessionStore, check_params, list_page, quote_answer, random_id
from ..webhook_sender import DeliveryAttempt, WebhookSender
from .config import EmulatorConfig

API_VERSION = "2026-10-28.endive"  # the version stripe-python 16.1 pins
WIDGET_SCRIPTS = ("/v3/", "/crypto-onramp-outer.js")  # the stand-ins of Stripe.js and the onramp widget
SESSIONS_PATH = "/v1/crypto/onramp_sessions"
QUOTES_PATH = "/v1/crypto/onramp/quotes"
# The refusals tests can ask for (refuse_sessions): Stripe's codes, HTTP status, type and message.
REFUSALS = {
    "crypto_onramp_unsupported_country": (400, "invalid_request_error",
                                          "Transactions are not supported in this country."),
    "crypto_onramp_unsupportable_customer": (400, "invalid_request_error",
                                             "We are unable to support this customer."),
    "crypto_onramp_disabled": (400, "api_error", "Crypto onramp is disabled for this platform."),
    "crypto_onramp_merchant_not_properly_setup": (400, "invalid_request_error",
                                                  "Your business profile is missing a business name or URL."),
}
MAX_BODY_BYTES = 1 << 20
log = logging.getLogger("tachyon_stripe.emulator")

Response = tuple[int, dict[str, str], bytes]




def _json(status: int, payload: Any, **headers: str) -> Response:
    return status, {"content-type": "application/json", **headers}, json.dumps(payload, indent=2).encode()


def _redact_key(key: str) -> str:
    return f"{key[:8]}{'*' * 12}{key[-4:]}" if len(key) > 12 else "****"


class StripeEmulator:
    """The emulator: an ASGI app (``await emu(scope, receive, send)``) plus the control API tests call directly."""

    def __init__(self, config: EmulatorConfig = EmulatorConfig(), *, clock: Callable[[], float] = time.time):  # noqa: B008 - frozen
        self.config = config
        self.clock = clock
        self.base_url: str | None = None
        self.port: int | None = None
        self.store = SessionStore(clock=lambda: self.clock(), on_change=self._session_changed,
                                  public_url=lambda: self.config.public_url or self.base_url or "http://127.0.0.1",
                                  livemode=lambda: self.livemode,
                                  hosted=lambda: self.hosted_checkout)
        self.livemode = config.livemode
        self.accept_live_keys = config.accept_live_keys
        self.hosted_checkout = config.hosted_checkout
        self.refusal: str | None = None  # a REFUSALS code every session create answers with
        self.webhooks = WebhookSender(config.webhook_url, config.webhook_secrets,
                                      max_attempts=config.webhook_max_attempts, backoff_s=config.webhook_backoff_s,
                                      max_backoff_s=config.webhook_max_backoff_s, timeout_s=config.webhook_timeout_s,
                                      clock=lambda: self.clock())
        self.events: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []  # every /v1 request: method, path, params, idempotency_key
        self._fail_status = 500
        self._fail_remaining: int | None = 0  # None: fail every call until cleared
        self._fail_in_endpoint = False  # True: the endpoint began (an idempotent result is saved), then failed
        self._idempotency: dict[tuple[str, str], tuple[str, Response]] = {}
        self._template = string.Template(resources.files(__package__).joinpath("checkout.html").read_text("utf-8"))

    # ---- control API (also reachable over HTTP under /_emulator/) ----

    def complete_session(self, session_id: str, *, destination_amount: str | None = None,
                         wallet_address: str | None = None) -> dict[str, Any]:
        """Pay a session as a buyer would: -> requires_payment -> fulfillment_processing -> fulfillment_complete."""
        return self.store.complete(session_id, destination_amount=destination_amount, wallet_address=wallet_address)

    def reject_session(self, session_id: str) -> dict[str, Any]:
        """Stripe declines the buyer: the session becomes ``rejected``."""
        return self.store.reject(session_id)

    def set_session_status(self, session_id: str, status: str) -> dict[str, Any]:
        """Force any status, even one Stripe has not invented yet, and send its webhook."""
        return self.store.set_status(session_id, status)

    def create_foreign_session(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A session created by another app on the same Stripe account (no tachyon metadata)."""
        defaults = {"destination_currency": "usdc", "destination_network": "ethereum", "destination_amount": "25",
                    "wallet_addresses": {"ethereum": "0x52908400098527886E0F7030069857D2E4169EE7"},
                    "metadata": {"app": "another-app"}}
        return self.store.create(dict(params) if params is not None else defaults, self.config.unsupported_ips)

    def get_session(self, session_id: str) -> dict[str, Any]:
        """A copy of a session as the API would return it."""
        return self.store.get(session_id)

    def inject_errors(self, status: int = 500, count: int | None = 1, *, in_endpoint: bool = False) -> None:
        """Answer the next ``count`` API calls (every call when None) with ``status`` (500 or 429) and Stripe's JSON.

        ``in_endpoint``: the failure happens once the endpoint began (after the params validated), so, as at
        Stripe, the 500 is saved under the request's idempotency key and replayed to a retry with that key.
        """
        if status not in (500, 429):
            raise ValueError("status must be 500 or 429")
        self._fail_status, self._fail_remaining, self._fail_in_endpoint = status, count, in_endpoint

    def refuse_sessions(self, code: str | None) -> None:
        """Answer every session create with one of Stripe's refusals (REFUSALS), or stop (None)."""
        if code is not None and code not in REFUSALS:
            raise ValueError(f"code must be one of {', '.join(REFUSALS)}")
        self.refusal = code

    def emit_event(self, session_id: str, **override: Any) -> dict[str, Any]:
        """Send a webhook whose body differs from the API's session (``override`` sets its fields, e.g.
        status="fulfillment_complete"): the event that arrives ahead of, or out of step with, the API."""
        body = self.store.get(session_id)
        details = override.pop("transaction_details", None)
        body.update(override)
        if details:
            body["transaction_details"].update(details)
        return self._session_changed(body)

    def clear_errors(self) -> None:
        """Stop injecting API errors."""
        self._fail_remaining = 0

    def stop_webhooks(self) -> None:
        """Hold webhook delivery; events queue as pending."""
        self.webhooks.stop()

    def resume_webhooks(self) -> None:
        """Deliver held and future webhooks."""
        self.webhooks.resume()

    def pending_deliveries(self) -> list[dict[str, Any]]:
        """Events not yet delivered (held, queued or between retries)."""
        return list(self.webhooks.pending.values())

    @property
    def delivery_attempts(self) -> list[DeliveryAttempt]:
        return list(self.webhooks.attempts)

    def redeliver(self, event_id: str) -> bool:
        """Send an event again (Stripe delivers at least once); False if it is already pending."""
        event = next((e for e in self.events if e["id"] == event_id), None)
        if event is None:
            raise KeyError(event_id)
        return self.webhooks.enqueue(event)

    def set_webhook_endpoint(self, url: str | None, secrets: tuple[str, ...] | None = None) -> None:
        """Point webhooks elsewhere (the daemon's port may be known only after it binds)."""
        self.webhooks.url = url
        if secrets is not None:
            self.webhooks.secrets = tuple(secrets)

    async def wait_webhooks_idle(self) -> None:
        """Block until every queued webhook was delivered or abandoned."""
        await self.webhooks.wait_idle()

    def _session_changed(self, session: dict[str, Any]) -> dict[str, Any]:
        event = {
            "id": random_id("evt_"),
            "object": "event",
            "api_version": API_VERSION,
            "created": int(self.clock()),
            "data": {"object": session},
            "livemode": bool(session.get("livemode")),
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": "crypto.onramp_session_updated",
        }
        self.events.append(event)
        self.webhooks.enqueue(event)
        return event

    # ---- ASGI ----

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY_BYTES:
                status, headers, payload = _json(413, ApiError(413, "Request body too large.").body())
                break
        else:
            request_headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            status, headers, payload = self.handle(scope["method"], scope["path"],
                                                   scope.get("query_string", b"").decode("latin-1"),
                                                   request_headers, body)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})
        await send({"type": "http.response.body", "body": payload})

    def handle(self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes) -> Response:
        """Route one request: ``/v1`` API, ``/checkout`` page, ``/_emulator`` control."""
        if path.startswith("/v1/"):
            request_id = random_id("req_", 14)
            try:
                status, out_headers, payload = self._api(method, path, query, headers, body)
            except ApiError as exc:
                status, out_headers, payload = _json(exc.status, exc.body())
            except Exception:
                # An emulator bug answers like Stripe's own 500s, and is logged, rather than dropping the connection.
                log.exception("emulator failed on %s %s", method, path)
                status, out_headers, payload = _json(500, ApiError(500, "An unknown error occurred in the emulator.",
                                                                   type_="api_error").body())
            out_headers.setdefault("request-id", request_id)
            out_headers["stripe-version"] = API_VERSION
            return status, out_headers, payload
        if path.startswith("/checkout/"):
            return self._checkout(method, path.removeprefix("/checkout/"), body)
        if path in WIDGET_SCRIPTS or path.startswith("/embedded/"):
            from ..widget import handle_widget

            return handle_widget(self, method, path, query, body)
        if path.startswith("/_emulator/"):
            try:
                return self._control(method, path.removeprefix("/_emulator/"), query, body)
            except ApiError as exc:
                return _json(exc.status, exc.body())
            except (KeyError, ValueError) as exc:
                return _json(400, {"error": {"type": "emulator_error", "message": str(exc)}})
        if path in ("/", "/health"):
            return _json(200, {"object": "stripe_onramp_emulator", "api_version": API_VERSION,
                               "sessions": len(self.store.sessions)})
        return _json(404, {"error": {"type": "invalid_request_error", "message": f"Unrecognized URL: {path}"}})

    def _authenticate(self, headers: Mapping[str, str]) -> str:
        auth = headers.get("authorization", "")
        scheme, _, credential = auth.partition(" ")
        if scheme.lower() == "basic":
            try:
                credential = base64.b64decode(credential).decode().partition(":")[0]
            except (ValueError, UnicodeDecodeError):
                credential = ""
        elif scheme.lower() != "bearer":
            credential = ""
        credential = credential.strip()
        if not credential:
            raise ApiError(401, "You did not provide an API key. You need to provide your API key in the "
                           "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').")
        prefixes = ("sk_test_", "rk_test_") + (("sk_live_", "rk_live_") if self.accept_live_keys else ())
        accepted = credential.startswith(prefixes) and (
            credential in self.config.secret_keys if self.config.secret_keys else True)
        if not accepted:
            raise ApiError(401, f"Invalid API Key provided: {_redact_key(credential)}", code="api_key_invalid")
        return credential

    def _api(self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes) -> Response:
        api_key = self._authenticate(headers)
        if not self._fail_in_endpoint:
            self._injected_failure()
        try:
            params = decode_form(body if method == "POST" else query)
        except FormError as exc:
            raise ApiError(400, str(exc), param=exc.key) from None
        idempotency_key = headers.get("idempotency-key") if method == "POST" else None
        self.requests.append({"method": method, "path": path, "params": params,
                              "idempotency_key": idempotency_key})
        if idempotency_key:
            cached = self._idempotency.get((api_key, idempotency_key))
            fingerprint = f"{method} {path} {body!r}"
            if cached is not None:
                if cached[0] != fingerprint:
                    raise ApiError(400, "Keys for idempotent requests can only be used with the same parameters "
                                   f"they were first used with. Try using a key other than '{idempotency_key}' if "
                                   "you meant to execute a different request.", type_="idempotency_error")
                status, out_headers, payload = cached[1]
                return status, {**out_headers, "idempotent-replayed": "true"}, payload
            try:
                response = self._route(method, path, params)
            except ApiError as exc:
                if exc.status < 500:
                    # Failed validation: Stripe saves no result, the key may be used again.
                    return _json(exc.status, exc.body())
                response = _json(exc.status, exc.body())
            except Exception:
                log.exception("emulator failed on %s %s", method, path)
                response = _json(500, ApiError(500, "An unknown error occurred in the emulator.",
                                               type_="api_error").body())
            # Once the endpoint began, its result is saved, a 500 included (Stripe's idempotency page).
            self._idempotency[(api_key, idempotency_key)] = (fingerprint, response)
            return response
        return self._route(method, path, params)

    def _injected_failure(self) -> None:
        if self._fail_remaining is None or self._fail_remaining > 0:
            if self._fail_remaining is not None:
                self._fail_remaining -= 1
            if self._fail_status == 429:
                raise ApiError(429, "Request rate limit exceeded. Learn more about rate limits here "
                               "https://stripe.com/docs/rate-limits.", code="rate_limit")
            raise ApiError(500, "An unknown error occurred (injected by the emulator).", type_="api_error")

    def _route(self, method: str, path: str, params: dict[str, Any]) -> Response:
        if path == SESSIONS_PATH and method == "POST":
            session = self.store.create(params, self.config.unsupported_ips, self.config.unsupportable_ips)
            try:   # the params validated (store.create); what fails from here leaves no session behind
                if self.refusal is not None:
                    status, kind, message = REFUSALS[self.refusal]
                    raise ApiError(status, message, code=self.refusal, type_=kind)
                if self._fail_in_endpoint:
                    self._injected_failure()
            except ApiError:
                self.store.sessions.pop(session["id"])
                raise
            return _json(200, session)
        if path == QUOTES_PATH and method == "GET":
            return _json(
                200, quote_answer(params, self.livemode, round(self.clock(), 6))
            )  # a float, as Stripe's rate_fetched_at
        if self._fail_in_endpoint:
            self._injected_failure()
        if path == SESSIONS_PATH and method == "GET":
            return _json(200, list_page(self.store, params, SESSIONS_PATH))
        session_id = path.removeprefix(SESSIONS_PATH + "/")
        if path.startswith(SESSIONS_PATH + "/") and "/" not in session_id and method == "GET":
            check_params(params, frozenset({"expand"}))
            return _json(200, self.store.get(session_id))
        raise ApiError(404, f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
                       "or we can help at https://support.stripe.com/.")

    # ---- hosted checkout ----

    def _checkout(self, method: str, session_id: str, body: bytes) -> Response:
        session = self.store.sessions.get(session_id)
        if session is None:
            return 404, {"content-type": "text/plain; charset=utf-8"}, b"No such onramp session.\n"
        notice, notice_class, status = "Review and pay.", "", 200
        if method == "POST":
            try:
                form = decode_form(body)
                if form.get("action") == "decline":
                    self.store.reject(session_id)
                    notice = "Declined."
                else:
                    self.store.complete(session_id, destination_amount=form.get("destination_amount") or None,
                                        wallet_address=form.get("wallet_address") or None)
                    notice = "Payment complete: your crypto is on its way."
            except (ApiError, FormError) as exc:
                notice, notice_class, status = str(exc), "error", getattr(exc, "status", 400)
        elif method != "GET":
            return 405, {"content-type": "text/plain; charset=utf-8", "allow": "GET, POST"}, b"Method not allowed.\n"
        return status, {"content-type": "text/html; charset=utf-8"}, self._render(session_id, notice, notice_class)

    def _render(self, session_id: str, notice: str, notice_class: str) -> bytes:
        session = self.store.sessions[session_id]
        d = session["transaction_details"]
        network = d["destination_network"] or ", ".join(d["destination_networks"] or ["any"])
        addresses = {k: v for k, v in d["wallet_addresses"].items() if isinstance(v, str)}
        wallet = d["wallet_address"] or ", ".join(addresses.values()) or "(enter one)"
        wallet_input = "" if d["lock_wallet_address"] else \
            '<p><label>Wallet <input name="wallet_address" value=""></label></p>'
        payable = session["status"] in ("initialized", "requires_payment", "fulfillment_processing")
        values = {"session_id": session_id, "status": session["status"], "network": network,
                  "currency": d["destination_currency"] or ", ".join(d["destination_currencies"] or ["any"]),
                  "wallet": wallet, "amount": d["destination_amount"] or "", "notice": notice,
                  "notice_class": notice_class}
        page = self._template.substitute({k: html.escape(str(v), quote=True) for k, v in values.items()},
                                         wallet_input=wallet_input, disabled="" if payable else "disabled")
        return page.encode()

    # ---- control routes ----

    def _control(self, method: str, route: str, query: str, body: bytes) -> Response:
        args = {**decode_form(query), **decode_form(body)}
        parts = route.strip("/").split("/")
        if method == "GET" and parts == ["webhooks"]:
            return _json(200, {"paused": self.webhooks.paused, "url": self.webhooks.url,
                               "pending": [e["id"] for e in self.pending_deliveries()],
                               "attempts": [a.__dict__ for a in self.webhooks.attempts]})
        if method == "GET" and parts == ["events"]:
            return _json(200, {"object": "list", "data": self.events})
        if method != "POST":
            return _json(405, {"error": {"type": "emulator_error", "message": "control routes take POST"}})
        if parts == ["sessions"]:
            return _json(200, self.create_foreign_session(args or None))
        if len(parts) == 3 and parts[0] == "sessions":
            session_id, action = parts[1], parts[2]
            if action == "complete":
                return _json(200, self.complete_session(session_id, destination_amount=args.get("destination_amount"),
                                                        wallet_address=args.get("wallet_address")))
            if action == "reject":
                return _json(200, self.reject_session(session_id))
            if action == "status":
                return _json(200, self.set_session_status(session_id, args["status"]))
        if parts == ["errors"]:
            count = args.get("count", "1")
            self.inject_errors(int(args.get("status", "500")), None if count == "all" else int(count))
            return _json(200, {"status": self._fail_status, "remaining": self._fail_remaining})
        if parts == ["refuse"]:
            self.refuse_sessions(args.get("code") or None)
            return _json(200, {"code": self.refusal})
        if len(parts) == 3 and parts[0] == "sessions" and parts[2] == "emit":
            return _json(200, self.emit_event(parts[1], **{k: v for k, v in args.items() if k == "status"}))
        if parts == ["errors", "clear"]:
            self.clear_errors()
            return _json(200, {"remaining": 0})
        if parts == ["webhooks", "stop"]:
            self.stop_webhooks()
            return _json(200, {"paused": True})
        if parts == ["webhooks", "resume"]:
            self.resume_webhooks()
            return _json(200, {"paused": False})
        if len(parts) == 3 and parts[0] == "events" and parts[2] == "redeliver":
            return _json(200, {"queued": self.redeliver(parts[1])})
        return _json(404, {"error": {"type": "emulator_error", "message": f"no control route {route}"}})

    def _bound(self, bind: str) -> None:
        parsed = urlsplit(bind)
        self.port = parsed.port
        self.base_url = f"{parsed.scheme}://{parsed.netloc}"
