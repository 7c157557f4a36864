"""The emulator's stand-in of Stripe's embedded onramp widget: the two scripts a page loads and the calls they make.

Real pages load ``https://js.stripe.com/v3/`` and ``https://crypto-js.stripe.com/crypto-onramp-outer.js``;
with ``[onramp.stripe] widget_base_url`` pointing here (test keys only) the daemon's embedded page loads these
instead, so a browser can pay offline. The widget authenticates with the session's client secret only, as
Stripe's does, and completes the purchase through the same session store as the hosted checkout page
(status changes, webhooks). Never a production component: Stripe's scripts must come from Stripe.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .forms import FormError, decode_form
from .sessions import ApiError, by_client_secret

if TYPE_CHECKING:
    from .emulator.app import Response, StripeEmulator

_CORS = {"access-control-allow-origin": "*", "access-control-allow-methods": "GET, POST",
         "access-control-allow-headers": "content-type"}

STRIPE_JS = """/* Stand-in of Stripe.js (tachyon's Stripe emulator): nothing here talks to Stripe. */
window.Stripe = window.Stripe || function (publishableKey) { return {emulated: true}; };
"""

ONRAMP_JS = """/* Stand-in of Stripe's embedded onramp widget (tachyon's Stripe emulator). */
(function () {
  var base = new URL(document.currentScript.src).origin;
  function call(method, path, data) {
    var init = {method: method};
    if (data) { init.body = new URLSearchParams(data); }
    return fetch(base + path, init).then(function (r) { return r.json(); });
  }
  function el(tag, id, text) {
    var node = document.createElement(tag);
    if (id) { node.id = id; }
    if (text) { node.textContent = text; }
    return node;
  }
  window.StripeOnramp = function (publishableKey) {
    if (!/^pk_test_/.test(publishableKey || "")) {
      throw new Error("the emulator's onramp widget takes a pk_test_ publishable key");
    }
    return {
      createSession: function (options) {
        var secret = options.clientSecret, listeners = {};
        function emit(type, session) {
          (listeners[type] || []).forEach(function (cb) { cb({type: type, payload: {session: session}}); });
        }
        return {
          addEventListener: function (type, cb) { (listeners[type] = listeners[type] || []).push(cb); },
          mount: function (target) {
            var root = typeof target === "string" ? document.querySelector(target) : target;
            call("GET", "/embedded/session?client_secret=" + encodeURIComponent(secret)).then(function (s) {
              root.textContent = "";
              if (s.error) { root.appendChild(el("p", "onramp-notice", s.error.message)); return; }
              root.appendChild(el("p", "onramp-summary", "Buy " + (s.destination_amount || "") + " " +
                (s.destination_currency || "") + " on " + (s.destination_network || "") + " to " +
                (s.wallet_address || "")));
              var pay = el("button", "onramp-pay", "Pay (emulated)");
              var notice = el("p", "onramp-notice", "Review and pay.");
              pay.disabled = ["initialized", "requires_payment", "fulfillment_processing"].indexOf(s.status) < 0;
              pay.addEventListener("click", function () {
                pay.disabled = true;
                call("POST", "/embedded/pay", {client_secret: secret}).then(function (done) {
                  if (done.error) { notice.textContent = done.error.message; pay.disabled = false; return; }
                  notice.textContent = "Payment complete: your crypto is on its way.";
                  emit("onramp_session_updated", done);
                });
              });
              root.appendChild(pay);
              root.appendChild(notice);
              emit("onramp_ui_loaded", s);
            });
          }
        };
      }
    };
  };
})();
"""


def _summary(session: dict[str, Any]) -> dict[str, Any]:
    """What the widget shows: never the client secret."""
    d = session["transaction_details"]
    return {"id": session["id"], "status": session["status"], "destination_amount": d["destination_amount"],
            "destination_currency": d["destination_currency"], "destination_network": d["destination_network"],
            "wallet_address": d["wallet_address"] or next(
                (a for a in (d["wallet_addresses"] or {}).values() if isinstance(a, str)), None)}


def _json(status: int, payload: Any) -> Response:
    return status, {"content-type": "application/json", **_CORS}, json.dumps(payload).encode()


def handle_widget(emu: StripeEmulator, method: str, path: str, query: str, body: bytes) -> Response:
    """Serve the stand-in scripts and the widget's two calls (``/embedded/session``, ``/embedded/pay``)."""
    if method == "OPTIONS":
        return 204, dict(_CORS), b""
    if path in ("/v3/", "/crypto-onramp-outer.js"):
        if method != "GET":
            return 405, {"content-type": "text/plain; charset=utf-8", "allow": "GET"}, b"Method not allowed.\n"
        script = STRIPE_JS if path == "/v3/" else ONRAMP_JS
        return 200, {"content-type": "text/javascript; charset=utf-8", "cache-control": "no-store",
                     **_CORS}, script.encode()
    try:
        args = {**decode_form(query), **decode_form(body)}
    except FormError as exc:
        return _json(400, {"error": {"type": "invalid_request_error", "message": str(exc)}})
    secret = args.get("client_secret")
    session = by_client_secret(emu.store, secret) if isinstance(secret, str) and secret else None
    if session is None:
        return _json(404, {"error": {"type": "invalid_request_error", "message": "No such onramp session."}})
    try:
        if path == "/embedded/session" and method == "GET":
            return _json(200, _summary(session))
        if path == "/embedded/pay" and method == "POST":
            return _json(200, _summary(emu.store.complete(session["id"])))
    except ApiError as exc:
        return _json(exc.status, exc.body())
    return _json(404, {"error": {"type": "invalid_request_error", "message": f"Unrecognized URL: {path}"}})
