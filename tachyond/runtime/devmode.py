"""``tachyond --dev``: the embedded development default. Everything local, nothing reaches the internet."""

from __future__ import annotations

import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import trio

from ..config import Config, from_mapping

log = logging.getLogger("tachyond.dev")

DEV_HTTP = "127.0.0.1:8787"
DEV_EMULATOR = ("127.0.0.1", 12111)
DEV_PASSWORD_FILE = "dev-wallet-password"
BANNER = "*" * 78


def _secret_file(dir_: Path, name: str, make: Any) -> Path:
    """A dev secret kept in a 0600 file under the dev dir, made once."""
    path = dir_ / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(make())
    return path


def dev_document(dir_: Path) -> dict[str, Any]:
    """The embedded default as a config document (the same validation as a TOML file)."""
    dir_.mkdir(parents=True, exist_ok=True)
    key_file = _secret_file(dir_, "stripe-secret-key", lambda: "sk_test_dev_" + secrets.token_hex(12))
    whsec_file = _secret_file(dir_, "stripe-webhook-secret", lambda: "whsec_dev" + secrets.token_hex(16))
    pk_file = _secret_file(dir_, "stripe-publishable-key", lambda: "pk_test_dev_" + secrets.token_hex(12))
    emulator = f"http://{DEV_EMULATOR[0]}:{DEV_EMULATOR[1]}"
    return {
        "daemon": {
            "data_dir": str(dir_),
            "socket": str(dir_ / "rpc.sock"),
            "socket_mode": "0600",
            "log_level": os.environ.get("TACHYON_LOG_LEVEL", "info"),
            "log_format": "text",
        },
        "wallet": {"password_file": str(dir_ / DEV_PASSWORD_FILE), "unlock_timeout_s": 0},
        "http": {"listen": [DEV_HTTP], "max_body_bytes": 65536, "rate_limit_per_s": 50},
        "tokens": [
            {
                "symbol": "USDC",
                "decimals": 6,
                "networks": ["ethereum", "solana", "polygon", "avalanche", "base", "stellar"],
            },
            {"symbol": "ZEC", "decimals": 8},
            {"symbol": "BASE", "decimals": 8},
        ],
        "markets": [
            {
                "symbol": "ZEC/USDC",
                "engine": "sqlite",
                "tick": "0.01",
                "lot": "0.0001",
                "min_notional": "1",
                "maker_fee_bps": 10,
                "taker_fee_bps": 20,
                "protection_bps": 500,
            },
            {
                "symbol": "BASE/USDC",
                "engine": "sqlite",
                "tick": "0.0001",
                "lot": "0.01",
                "min_notional": "1",
                "maker_fee_bps": 10,
                "taker_fee_bps": 20,
                "protection_bps": 500,
            },
        ],
        "onramp": {
            "stripe": {
                "secret_key_file": str(key_file),
                "webhook_secret_file": str(whsec_file),
                "publishable_key_file": str(pk_file),
                # The emulator serves a stand-in of Stripe's embedded widget: the daemon's own page
                # (GET /onramp/{id}) mounts it offline, as it mounts Stripe's in production.
                "api_base": emulator,
                "widget_base_url": emulator,
                "tolerance_s": 300,
                "default_network": "ethereum",
                "default_currency": "usdc",
                "reconcile_interval_s": 60,
                "reconcile_lookback_h": 72,
            }
        },
    }


def dev_config(dir_: Path) -> Config:
    return from_mapping(dev_document(dir_), source=f"--dev ({dir_})", dev=True)


def print_banner(daemon: Any) -> None:
    """The loud development-only banner on stderr; the one line to paste, once, on stdout."""
    sock = daemon.config.daemon.socket.resolve()
    lines = [
        BANNER,
        "tachyond --dev: DEVELOPMENT MODE. NOT FOR REAL MONEY.",
        f"data under {daemon.config.daemon.data_dir.resolve()}; the wallet password is in {DEV_PASSWORD_FILE} there.",
        "Stripe is the local emulator; nothing here reaches the internet.",
        "In another terminal, paste the export line printed on standard output:",
        BANNER,
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)
    print(f"export TACHYON_SOCKET={sock}", flush=True)


# What the maker rests on the books so USDC bought through the emulator can trade at once:
# (market, client_order_id, price, qty). Deposits and orders are idempotent, so restarts add nothing.
DEV_MAKER = "maker"
DEV_DEPOSITS = (("ZEC", "100", "dev-seed-zec"), ("BASE", "50000", "dev-seed-base"))
DEV_ASKS = (
    ("ZEC/USDC", "dev-ask-zec-1", "30.00", "2"),
    ("ZEC/USDC", "dev-ask-zec-2", "30.50", "5"),
    ("ZEC/USDC", "dev-ask-zec-3", "31.25", "10"),
    ("BASE/USDC", "dev-ask-base-1", "1.0000", "1000"),
    ("BASE/USDC", "dev-ask-base-2", "1.0100", "5000"),
)


async def call(daemon: Any, method: str, params: dict[str, Any]) -> Any:
    """Call a method through the daemon's own dispatcher (the public API); raise on an error answer."""
    answer = await daemon.dispatcher.handle_request({"jsonrpc": "2.0", "method": method, "params": params, "id": "dev"})
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']['message']}")
    return answer["result"]


async def seed(daemon: Any, password: str) -> None:
    """Create and unlock the dev wallet on first start; fund the maker and rest its asks."""
    if daemon.wallet.state == "absent":
        await call(daemon, "wallet.create", {"password": password})
        await daemon.on_unlocked()
        log.info("created the development wallet")
    accounts = {a["name"] for a in await call(daemon, "accounts.list", {})}
    if DEV_MAKER not in accounts:
        await call(daemon, "accounts.create", {"name": DEV_MAKER})
    tokens = {t["symbol"] for t in await call(daemon, "tokens.list", {})}
    for token, amount, ref in DEV_DEPOSITS:
        if token in tokens:
            await call(
                daemon, "ledger.deposit", {"account": DEV_MAKER, "token": token, "amount": amount, "reference": ref}
            )
    markets = {m.symbol for m in daemon.config.markets}
    for market, coid, price, qty in DEV_ASKS:
        if market in markets:
            await call(
                daemon,
                "dex.place_order",
                {
                    "account": DEV_MAKER,
                    "market": market,
                    "side": "sell",
                    "type": "limit",
                    "price": price,
                    "qty": qty,
                    "client_order_id": coid,
                },
            )


async def run_dev(daemon: Any) -> None:
    """Run the daemon on the embedded default: wallet created and unlocked, maker seeded, emulator up."""
    dir_ = daemon.config.daemon.data_dir
    pw_file = _secret_file(dir_, DEV_PASSWORD_FILE, lambda: "dev-" + secrets.token_hex(8))
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        print_banner(daemon)
        try:
            await seed(daemon, pw_file.read_text().strip())
            log.info(
                "development wallet ready: the maker's asks rest on %s",
                ", ".join(m.symbol for m in daemon.config.markets),
            )
        except Exception:
            if daemon.shutdown.is_set():
                log.info("seeding the development wallet was interrupted by the stop; the next start finishes it")
            else:
                log.exception("seeding the development wallet failed; the daemon runs on without the maker's orders")
        await daemon.shutdown.wait()
