"""The Stripe Crypto Onramp provider plugin (and, in ``tachyon_stripe.emulator``, a local emulator of the API)."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from tachyond import hookimpl


def _factory(config: Mapping[str, Any]) -> Any:
    """Build the provider; stripe-python is imported only when a [onramp.stripe] table exists."""
    from .provider import make_provider

    return make_provider(config)


@hookimpl
def register_onramp_providers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Offer the ``stripe`` onramp provider."""
    register("stripe", _factory)
