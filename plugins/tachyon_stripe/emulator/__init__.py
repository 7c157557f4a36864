"""An in-repo Stripe Crypto Onramp emulator (the tachyon-stripe-emulator command)."""

from .config import EmulatorConfig
from .serve import main, serve_emulator

__all__ = ["EmulatorConfig", "serve_emulator", "main"]
