"""An in-repo Stripe Crypto Onramp emulator (the tachyon-stripe-emulator command)."""

from .app import EmulatorConfig, main, serve_emulator

__all__ = ["EmulatorConfig", "serve_emulator", "main"]
