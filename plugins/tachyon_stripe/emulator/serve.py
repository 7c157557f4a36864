"""Serving the emulator: ``serve_emulator`` inside a trio nursery, and the ``tachyon-stripe-emulator``
command."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import trio

from .app import StripeEmulator
from .config import EmulatorConfig, _split


async def serve_emulator(config: EmulatorConfig | Mapping[str, Any], *, emulator: StripeEmulator | None = None,
                         shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
                         task_status: trio.TaskStatus[StripeEmulator] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the emulator until cancelled (or ``shutdown_trigger`` returns); reports the emulator once bound."""
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve

    if not isinstance(config, EmulatorConfig):
        config = EmulatorConfig.from_mapping(config)
    emu = emulator or StripeEmulator(config)
    hc = HypercornConfig()
    hc.bind = [config.listen]
    hc.accesslog = None
    hc.graceful_timeout = 2.0
    async with trio.open_nursery() as nursery:
        await nursery.start(emu.webhooks.run)

        async def serve_then_stop(*, task_status: trio.TaskStatus[list[str]]) -> None:
            await serve(emu, hc, shutdown_trigger=shutdown_trigger, task_status=task_status)
            nursery.cancel_scope.cancel()

        binds = await nursery.start(serve_then_stop)
        emu._bound(binds[0])
        task_status.started(emu)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tachyon-stripe-emulator", description=(
        "A Stripe Crypto Onramp emulator: Stripe's wire format, a hosted checkout page, signed webhooks."))
    parser.add_argument("--listen", default="127.0.0.1:12111", help="HOST:PORT to listen on (port 0: any)")
    parser.add_argument("--webhook-url", help="where to POST signed webhook events")
    parser.add_argument("--webhook-secret", help="whsec_… signing secret(s), comma-separated; "
                        "prefer env STRIPE_WEBHOOK_SECRET (command lines are visible to other users)")
    parser.add_argument("--secret-key", help="API key(s) to accept, comma-separated (default env STRIPE_SECRET_KEY; "
                        "unset: any sk_test_ key)")
    parser.add_argument("--public-url", help="base URL for redirect_url (default: the bound address)")
    parser.add_argument("--no-hosted-checkout", action="store_true",
                        help="sessions carry redirect_url null (pay through the embedded widget stand-in)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """``tachyon-stripe-emulator``: serve until SIGINT/SIGTERM."""
    args = _parse_args(argv)
    secrets = _split(args.webhook_secret or os.environ.get("STRIPE_WEBHOOK_SECRET", ""))
    keys = _split(args.secret_key or os.environ.get("STRIPE_SECRET_KEY", ""))
    if args.webhook_url and not secrets:
        print("tachyon-stripe-emulator: --webhook-url needs --webhook-secret or STRIPE_WEBHOOK_SECRET", file=sys.stderr)
        return 2
    config = EmulatorConfig(listen=args.listen, webhook_url=args.webhook_url, webhook_secrets=secrets,
                            secret_keys=keys, public_url=args.public_url,
                            hosted_checkout=not args.no_hosted_checkout)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    async def run() -> None:
        stop = trio.Event()
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                async def wait_signal() -> None:
                    async for _ in signals:
                        stop.set()
                        return

                nursery.start_soon(wait_signal)
                emu = await nursery.start(partial(serve_emulator, config, shutdown_trigger=stop.wait))
                print(f"tachyon-stripe-emulator: serving {emu.base_url} (webhooks -> {config.webhook_url or 'none'}, "
                      f"{len(secrets)} signing secret(s), "
                      f"{'configured keys' if keys else 'any sk_test_ key'})", flush=True)
                await stop.wait()
                nursery.cancel_scope.cancel()

    trio.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
