"""The Stripe Crypto Onramp provider plugin (and, in ``tachyon_stripe.emulator``, a local emulator of the API)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tachyond import hookimpl


def _factory(config: Mapping[str, Any]) -> Any:
    """Build the provider; stripe-python is imported only when a [onramp.stripe] table exists."""
    from .provider import make_provider

    return make_provider(config)


@hookimpl
def register_onramp_providers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Offer the ``stripe`` onramp provider."""
    register("stripe", _factory)


def _read_secret_ref(table: Mapping[str, Any], stem: str) -> str:
    """The secret a provider table refers to (``<stem>_file`` or ``<stem>_env``); first of a comma list."""
    import os
    from pathlib import Path

    if f"{stem}_file" in table:
        value = Path(table[f"{stem}_file"]).read_text().strip()
    else:
        value = os.environ.get(table.get(f"{stem}_env", ""), "")
    return value


async def _dev_emulator(daemon: Any) -> None:
    """Under ``tachyond --dev`` only: serve the Stripe emulator in the daemon's process at the provider's api_base.

    Webhooks go to the daemon's own webhook route, signed with the secret the provider verifies with.
    """
    from urllib.parse import urlsplit

    from .emulator import serve_emulator

    table = daemon.config.onramp.get("stripe")
    if not daemon.config.dev or table is None or not daemon.http_binds:
        return
    api = urlsplit(table["api_base"])
    if api.hostname not in ("127.0.0.1", "localhost", "::1"):
        return  # a dev config pointed at a real API: never emulate it
    secrets = _read_secret_ref(table, "webhook_secret")
    await serve_emulator({
        "listen": f"{api.hostname}:{api.port}",
        "webhook_url": daemon.http_binds[0].rstrip("/") + "/webhook/stripe",
        "webhook_secrets": secrets,
        "secret_keys": _read_secret_ref(table, "secret_key"),
        # A dev config that mounts the stand-in widget pays through the daemon's embedded page: like an
        # embedded-only integration, sessions then carry no hosted redirect_url.
        "hosted_checkout": "widget_base_url" not in table,
    })


@hookimpl
def register_background_tasks(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """The in-process emulator of ``tachyond --dev`` (a no-op in every other configuration)."""
    register("dev-emulator", _dev_emulator)
