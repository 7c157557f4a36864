"""``GET /onramp/{session_id}``: the embedded onramp page, for a session this wallet created.

The provider's widget (Stripe: Stripe.js and the onramp script, from Stripe's hosts) is mounted with the
publishable key and the session's client secret, which the page fetches from the provider on each load and
puts only into the page itself: never a log line, never a cache (``Cache-Control: no-store``). The page carries
a Content-Security-Policy naming only the provider's hosts (scripts run by nonce), and answers 404 for any id
this wallet did not create, without asking the provider about it.
"""

from __future__ import annotations

import html
import json
import logging
import re
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from quart import Response

from ..errors import TachyonError, WalletAbsent, WalletLocked
from ..providers import Embed, SessionInfo

if TYPE_CHECKING:
    from .service import OnrampService

log = logging.getLogger("tachyond.onramp.page")


class Limiter(Protocol):
    """What the page needs of a rate limiter (``tachyond.http.clients.RateLimiter``)."""

    def allow(self, key: str) -> bool: ...

_ID_RE = re.compile(r"[A-Za-z0-9_]{1,255}")

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Buy {currency} ({session_id})</title>
<style nonce="{nonce}">
body {{ font-family: system-ui, sans-serif; max-width: 36rem; margin: 2rem auto; color: #1a1f36; }}
dl {{ display: grid; grid-template-columns: max-content 1fr; gap: .4rem 1rem; }}
dt {{ color: #697386; }} dd {{ margin: 0; word-break: break-all; }}
#onramp-element {{ min-height: 20rem; margin-top: 1.5rem; }}
</style>
</head>
<body>
<h1>Buy {currency}</h1>
<dl>
<dt>Session</dt><dd id="session-id">{session_id}</dd>
<dt>Status</dt><dd id="status">{status}</dd>
<dt>Network</dt><dd id="network">{network}</dd>
<dt>Amount</dt><dd id="amount">{amount}</dd>
</dl>
<div id="onramp-element">{fallback}</div>
<script nonce="{nonce}">window.ONRAMP_CONFIG = {config};</script>
{scripts}
<script nonce="{nonce}">{bootstrap}</script>
</body>
</html>
"""


def content_security_policy(embed: Embed, nonce: str) -> str:
    """A strict policy: nothing by default; scripts by nonce and from the provider's hosts only."""
    def srcs(*items: str) -> str:
        return " ".join(items) or "'none'"

    quoted = f"'nonce-{nonce}'"
    return "; ".join([
        "default-src 'none'",
        "script-src " + srcs(quoted, *embed.script_hosts),
        "style-src " + quoted,
        "frame-src " + srcs(*embed.frame_hosts),
        "connect-src " + srcs(*embed.connect_hosts),
        "img-src " + srcs(*embed.img_hosts),
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ])


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element (no "</script>", no HTML comment openers)."""
    return (json.dumps(value, separators=(",", ":"))
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def render_page(info: SessionInfo, embed: Embed) -> tuple[str, str]:
    """The page's HTML and its Content-Security-Policy."""
    nonce = secrets.token_urlsafe(18)
    scripts = "\n".join(f'<script nonce="{nonce}" src="{html.escape(url, quote=True)}"></script>'
                        for url in embed.scripts)
    text = _PAGE.format(
        nonce=nonce, session_id=html.escape(info.id), status=html.escape(info.status),
        currency=html.escape((info.currency or "crypto").upper()), network=html.escape(info.network or "–"),
        amount=html.escape(info.amount or "–"),
        fallback="Loading the payment widget… (it needs JavaScript)",
        config=_script_json(dict(embed.config)), scripts=scripts, bootstrap=embed.bootstrap_js)
    return text, content_security_policy(embed, nonce)


def _plain(text: str, status: int) -> Response:
    resp = Response(text + "\n", status=status, content_type="text/plain; charset=utf-8")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


async def page_response(limiter: Limiter | None, onramp: OnrampService | None, session_id: str,
                        client_ip: str) -> Response:
    """Answer one ``GET /onramp/{session_id}``: ``limiter`` is the HTTP rate limiter it shares with webhooks,
    ``onramp`` the onramp service (None: no page)."""
    if limiter is not None and not limiter.allow(client_ip):
        return _plain("rate limit exceeded; retry later", 429)
    if onramp is None or not onramp.providers or not _ID_RE.fullmatch(session_id):
        return _plain("not found", 404)
    try:
        found = await onramp.session_for_page(session_id)
    except (WalletLocked, WalletAbsent):
        return _plain("the wallet is locked: unlock it, then reload this page", 503)
    except TachyonError as exc:
        log.warning("onramp page for %s: the provider did not answer: %s", session_id, exc.message)
        return _plain("the payment provider did not answer; reload the page in a moment", 502)
    if found is None:
        return _plain("not found", 404)
    name, provider, info = found
    embed = provider.embed(info) if hasattr(provider, "embed") else None
    if embed is None:
        return _plain(f"onramp.{name} cannot be embedded: set onramp.{name}.publishable_key_env or "
                      "publishable_key_file", 404)
    text, csp = render_page(info, embed)
    resp = Response(text, status=200, content_type="text/html; charset=utf-8")
    resp.headers["Content-Security-Policy"] = csp
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["X-Frame-Options"] = "DENY"
    return resp


def register_onramp_page(app: Any, limiter: Limiter | None, onramp: OnrampService | None,
                         client_key: Callable[[Any], str]) -> None:
    """Add ``GET /onramp/<session_id>`` to the daemon's Quart app, rate-limited by ``limiter`` (the one webhooks
    use) and served by ``onramp``. ``client_key(scope)`` names the client for the rate limit (the peer, or
    behind a trusted proxy the forwarded address: tachyond.http decides)."""
    from quart import request

    @app.route("/onramp/<session_id>", methods=["GET"])
    async def onramp_page(session_id: str) -> Response:
        return await page_response(limiter, onramp, session_id, client_key(request.scope))
