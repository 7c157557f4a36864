"""The onramp service: the providers, the onramp.* operations (sessions, quotes, claims, reversals), and the
inbox (``inbox.py``) and the reconciler (``reconcile.py``) it runs.

create session -> user pays -> webhook (verified, deduped, sealed into the inbox, 200) -> the worker retrieves the
session from the provider (the truth) -> a pending topup -> ``onramp.claim`` credits it in one ledger entry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import trio

from ..amounts import Token, fmt_minor
from ..config import Config, ConfigError
from ..errors import (
    AmountError,
    InvalidParams,
    OnrampError,
    PluginError,
    ProviderNotConfigured,
    RegionNotAllowed,
    TachyonError,
)
from ..ledger.journal import check_user_account
from ..ledger.service import Ledger
from ..plugins import Plugins
from ..providers import QuoteRequest, SessionInfo, SessionRequest
from ..runtime.metrics import Metrics
from ..wallet.wallet import Wallet
from . import store
from .inbox import Inbox
from .reconcile import Reconciler

log = logging.getLogger("tachyond.onramp")

MAX_REASON_CHARS = 500


# name -> (plugin, factory(table) -> provider) and network -> (plugin, validate(address) -> address): the daemon's
# tables of what the plugins registered.
ProviderFactories = Mapping[str, tuple[str, Callable[[dict], Any]]]
AddressValidators = Mapping[str, tuple[str, Callable[[str], str]]]


class OnrampService:
    """Owns the providers, the webhook inbox, the confirmation worker, the reconciler and the onramp.* methods.

    It is given what it uses: ``config`` is a getter (a reload replaces the daemon's config), ``http_binds`` too
    (the HTTP listeners are bound after the services are built).
    """

    def __init__(self, wallet: Wallet, ledger: Ledger, config: Callable[[], Config], metrics: Metrics,
                 plugins: Plugins, provider_factories: ProviderFactories, address_validators: AddressValidators,
                 http_binds: Callable[[], Sequence[str]]):
        self.wallet = wallet
        self.ledger = ledger
        self.config = config
        self.metrics = metrics
        self.plugins = plugins
        self.provider_factories = provider_factories
        self.address_validators = address_validators
        self.http_binds = http_binds
        cfg = config()
        self.tokens: dict[str, Token] = {t.symbol.lower(): t for t in cfg.tokens}   # restart-only: read once
        self.providers: dict[str, Any] = {}
        for name, section in cfg.onramp.items():
            plugin, factory = provider_factories[name]
            try:
                self.providers[name] = factory(dict(section))
            except ConfigError:
                raise
            except Exception as exc:
                raise ConfigError(f"onramp.{name}", f"plugin {plugin!r} failed to build the provider: "
                                  f"{type(exc).__name__}: {exc}") from None
        self.wallet.add_schema("onramp", store.SCHEMA)
        for table in ("onramp_sessions", "onramp_pending", "onramp_outcomes"):
            self.wallet.add_rekey(table, sealed=("value",), lookups=("session_hash",))
        self.wallet.add_rekey("onramp_inbox", to_wallet=("sealed",))
        # Both share this provider table itself, not a copy: a provider a reload swaps in is the one they use.
        self.inbox = Inbox(self.wallet, self.providers, self.tokens, self.metrics)
        self.reconciler = Reconciler(self.wallet, self.providers, self.metrics, self.inbox.enqueue)
        self._cancel: trio.CancelScope | None = None
        self._running = False
        self._retired: list[Any] = []           # providers replaced by a reload, closed at aclose

    # ----- the daemon's hooks ----------------------------------------------------------------

    def prepare_config(self, new_cfg: Config, changed: list[str]) -> Callable[[], None] | None:
        """Reload: build a new provider for each [onramp.<name>] whose keys or secrets changed (a bad secret
        refuses the reload here, before anything is applied); the returned apply swaps them in. Webhooks
        in flight finish on the provider they started with; the old one is closed when the service stops."""
        names = sorted({k.split(".")[1] for k in changed if k.startswith("onramp.")})
        built: dict[str, Any] = {}
        for name in names:
            plugin, factory = self.provider_factories[name]
            try:
                built[name] = factory(dict(new_cfg.onramp[name]))
            except ConfigError:
                raise
            except Exception as exc:
                raise ConfigError(f"onramp.{name}", f"plugin {plugin!r} failed to build the provider: "
                                  f"{type(exc).__name__}: {exc}") from None
        if not built:
            return None

        def apply() -> None:
            for name, provider in built.items():
                old = self.providers.get(name)
                self.providers[name] = provider
                if old is not None:
                    self._retired.append(old)
            self.reconciler.reconfigured()
        return apply

    def has_provider(self, name: str) -> bool:
        return name in self.providers

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run the inbox worker and one reconciler timer per provider until cancelled."""
        with trio.CancelScope() as self._cancel:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.inbox.run)
                for name in self.providers:
                    nursery.start_soon(self.reconciler.run_timer, name)
                self._running = True
                task_status.started()
        self._running = False

    async def on_unlocked(self) -> None:
        """The wallet was unlocked: wake the worker to open and process what the inbox holds."""
        self.inbox.wake()

    async def aclose(self) -> None:
        """Stop the worker and timers, then close the providers (their HTTP pools)."""
        if self._cancel is not None:
            self._cancel.cancel()
        for name, provider in [*self.providers.items(), *(("retired", p) for p in self._retired)]:
            try:
                await provider.aclose()
            except Exception:
                log.exception("onramp provider %s failed to close", name)

    def refresh_gauges(self) -> None:
        self.metrics.topups_pending.set(self.inbox.pending_count)

    async def health(self) -> dict[str, str]:
        if self.providers and not self._running:
            return {"onramp": "the onramp inbox worker is not running"}
        return {}

    async def receive_webhook(self, provider_name: str, body: bytes, headers: Mapping[str, str],
                              client_ip: str) -> tuple[int, dict]:
        """Verify, dedupe and durably record one webhook (``Inbox.receive_webhook``); the HTTP route calls it."""
        return await self.inbox.receive_webhook(provider_name, body, headers, client_ip)

    # ----- RPC operations ---------------------------------------------------------------------

    async def reconcile(self, lookback_h: float | None = None) -> dict:
        """List recent sessions of every provider; queue tagged, complete ones no event brought in
        (``Reconciler.reconcile``)."""
        self.require_providers()
        return await self.reconciler.reconcile(lookback_h)

    def require_providers(self) -> None:
        if not self.providers:
            raise ProviderNotConfigured("no onramp provider is configured: add an [onramp.<name>] table")

    def provider(self, name: str | None) -> tuple[str, Any]:
        self.require_providers()
        if name is None:
            if len(self.providers) == 1:
                return next(iter(self.providers.items()))
            raise InvalidParams(f"several onramp providers are configured ({', '.join(sorted(self.providers))}): "
                                "name one with 'provider'", data={"param": "provider"})
        if name not in self.providers:
            raise ProviderNotConfigured(f"onramp provider {name!r} is not configured "
                                        f"(configured: {', '.join(sorted(self.providers))})")
        return name, self.providers[name]

    def validate_address(self, network: str, address: str) -> str:
        entry = self.address_validators.get(network)
        if entry is None:
            known = ", ".join(sorted(self.address_validators)) or "none"
            raise InvalidParams(f"unknown network {network!r} (networks with an address validator: {known})",
                                data={"param": "network"})
        plugin, validate = entry
        try:
            return validate(address)
        except TachyonError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin {plugin!r}: address validator for {network} failed: "
                              f"{type(exc).__name__}") from None

    async def create_session(self, provider_name: str | None, account: str, address: str, network: str | None,
                             currency: str | None, amount: str, customer_ip: str | None = None) -> dict:
        """Check everything locally, then create a session tagged with this wallet and remember its account."""
        _ = self.wallet.keys  # WalletAbsent / WalletLocked before anything else
        name, provider = self.provider(provider_name)
        network = network or getattr(provider, "default_network", None)
        currency = (currency or getattr(provider, "default_currency", None) or "").lower()
        if not network:
            raise InvalidParams("network is required (the provider has no default_network)", data={"param": "network"})
        token = self.tokens.get(currency)
        if token is None:
            raise InvalidParams(f"currency {currency!r} is not a configured token "
                                f"(tokens: {', '.join(sorted(t.symbol for t in self.tokens.values()))})",
                                data={"param": "currency"})
        address = self.validate_address(network, address)
        if token.networks and network not in token.networks:
            raise InvalidParams(f"{token.symbol} is not configured on network {network!r} "
                                f"(networks: {', '.join(token.networks)})", data={"param": "network"})
        allowed = getattr(provider, "allowed", None)
        if allowed is not None and currency not in [c.lower() for c in allowed.get(network, ())]:
            raise RegionNotAllowed(f"{currency} on {network} is not allowed by onramp.{name}.allowed")
        amount_minor = token.to_minor(amount)
        check_user_account(account)
        await self.ledger.balances(account)  # UnknownAccount before a session exists for it
        if customer_ip is not None:
            customer_ip = parse_customer_ip(customer_ip)
        try:
            info = await provider.create_session(SessionRequest(
                destination_address=address, network=network, currency=currency,
                amount=fmt_minor(amount_minor, token.decimals),
                wallet_tag=self.wallet.public_id,  # type: ignore[arg-type]  # self.wallet.keys above: it exists
                customer_ip=customer_ip))
        except TachyonError as exc:
            self.metrics.provider_api_errors.labels(name).inc()
            log.warning("onramp %s refused a session: %s", name, exc.message)
            raise
        await self.wallet.write(store.remember_session_op, name, info.id, account,
                                {"address": address, "network": network, "currency": currency})
        url, kind = info.url, "hosted"
        if not url:
            url, kind = self.embedded_url(name, provider, info.id), "embedded"
            if url is None:
                kind = "none"
                log.warning("onramp %s gave session %s no hosted page and the embedded page needs "
                            "onramp.%s.publishable_key_* and an [http] listener", name, info.id, name)
        return {"id": info.id, "url": url, "url_kind": kind, "client_secret": info.client_secret,
                "status": info.status, "provider": name}

    def embedded_url(self, name: str, provider: Any, session_id: str) -> str | None:
        """The daemon's own page for a session (GET /onramp/{id}), when the provider can be embedded."""
        if not getattr(provider, "publishable_key", None) or not hasattr(provider, "embed"):
            return None
        binds = self.http_binds()
        if not binds:
            return None
        return f"{binds[0].rstrip('/')}/onramp/{session_id}"

    async def session_for_page(self, session_id: str) -> tuple[str, Any, SessionInfo] | None:
        """A session this wallet created, fresh from its provider, for the embedded page; None for any other id."""
        if not isinstance(session_id, str) or not session_id or len(session_id) > 255:
            return None
        asked = await self.wallet.read(store.session_sync, session_id)
        if asked is None or asked.get("provider") not in self.providers:
            return None
        provider = self.providers[asked["provider"]]
        info = await provider.retrieve_session(session_id)
        return asked["provider"], provider, info

    async def parked(self, provider_name: str | None = None) -> list[dict]:
        """Sessions the provider confirmed that were not credited, each with its reason (newest last)."""
        self.require_providers()
        if provider_name is not None:
            self.provider(provider_name)
        rows = await self.wallet.read(store.parked_sync)
        return [{"session_id": r["session_id"], "provider": r["provider"], "status": r.get("status"),
                 "reason": r["reason"], "account": r.get("account"), "at": r["at"]}
                for r in rows if provider_name is None or r["provider"] == provider_name]

    async def quote(self, provider_name: str | None, currency: str | None, network: str | None, amount: str,
                    amount_is: str | None) -> dict:
        """The provider's price for buying ``amount`` of ``currency`` on ``network`` (or for ``amount`` fiat)."""
        name, provider = self.provider(provider_name)
        if not hasattr(provider, "quote"):
            raise OnrampError(f"onramp provider {name!r} does not give quotes")
        network = network or getattr(provider, "default_network", None)
        currency = (currency or getattr(provider, "default_currency", None) or "").lower()
        if not network or not currency:
            raise InvalidParams("network and currency are required (the provider has no default)",
                                data={"param": "network" if not network else "currency"})
        amount_is = amount_is or "destination"
        if amount_is not in ("destination", "source"):
            raise InvalidParams("amount_is must be destination or source", data={"param": "amount_is"})
        try:
            value = Decimal(amount) if isinstance(amount, str) else None
        except InvalidOperation:
            value = None
        if value is None or not value.is_finite() or value <= 0:
            raise AmountError(f"amount must be a positive decimal string, got {amount!r}")
        token = self.tokens.get(currency)
        if amount_is == "destination" and token is not None:
            amount = fmt_minor(token.to_minor(amount), token.decimals)
        elif amount_is == "source" and value != value.quantize(Decimal("0.01")):
            raise AmountError(f"a fiat amount has at most 2 decimal places, got {amount!r}")
        try:
            q = await provider.quote(QuoteRequest(network=network, currency=currency, amount=amount,
                                                  amount_is=amount_is))
        except TachyonError:
            self.metrics.provider_api_errors.labels(name).inc()
            raise
        return {"provider": name, "network": q.network, "currency": q.currency,
                "destination_amount": q.destination_amount, "source_amount": q.source_amount,
                "source_currency": q.source_currency, "source_total_amount": q.source_total_amount,
                "fees": {"network": q.network_fee, "transaction": q.transaction_fee}, "fetched_at": q.fetched_at}

    async def pending(self, provider_name: str | None = None) -> list[dict]:
        self.require_providers()
        if provider_name is not None:
            self.provider(provider_name)
        rows = await self.wallet.read(store.pending_sync)
        self.inbox.pending_count = len(rows)
        out = []
        for row in rows:
            if provider_name is not None and row["provider"] != provider_name:
                continue
            token = self.tokens[row["token"].lower()]
            out.append({"session_id": row["session_id"], "provider": row["provider"], "account": row["account"],
                        "token": row["token"], "amount": fmt_minor(row["amount_minor"], token.decimals),
                        "amount_minor": row["amount_minor"], "network": row["network"],
                        "received_at": row["received_at"]})
        return out

    async def claim(self, session_id: str, account: str | None = None) -> dict:
        self.require_providers()
        _ = self.wallet.keys
        if account is not None:
            check_user_account(account)
        result = await self.wallet.write(store.claim_op, session_id, account)
        self.inbox.pending_count = max(0, self.inbox.pending_count - 1)
        provider = result.pop("provider")
        self.metrics.topups_claimed.labels(provider).inc()
        # Ids only at info (journald keeps what it is given); who got how much is for debug, when asked.
        log.info("onramp topup %s claimed: entry %s", session_id, result["entry_id"])
        log.debug("onramp topup %s claimed: %s %s to %s", session_id, result["amount"], result["token"],
                  result["account"])
        self.plugins.notify("topup_credited", topup=dict(result))
        return result

    async def reverse(self, session_id: str, reason: str) -> dict:
        self.require_providers()
        _ = self.wallet.keys
        if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON_CHARS:
            raise InvalidParams(f"reason must be a non-empty string of at most {MAX_REASON_CHARS} characters",
                                data={"param": "reason"})
        result = await self.wallet.write(store.reverse_op, session_id, reason.strip())
        log.warning("onramp topup %s reversed: entry %s (claim entry %s)", session_id, result["id"],
                    result["reversal"]["claim_entry_id"])
        log.debug("onramp topup %s reversed (%s): %s %s from %s, shortfall %s", session_id, reason,
                  result["reversal"]["amount"], result["reversal"]["token"], result["reversal"]["account"],
                  result["reversal"]["shortfall"])
        return result


def parse_customer_ip(value: Any) -> str:
    """An IPv4 or IPv6 address as text, or InvalidParams naming customer_ip_address."""
    import ipaddress

    try:
        return str(ipaddress.ip_address(value.strip() if isinstance(value, str) else ""))
    except ValueError:
        raise InvalidParams(f"customer_ip_address must be an IPv4 or IPv6 address, got {value!r}",
                            data={"param": "customer_ip_address"}) from None


def parse_lookback_h(value: Any) -> float | None:
    if value is None:
        return None
    try:
        hours = float(Decimal(str(value)))
    except (InvalidOperation, ValueError):
        hours = -1.0
    if not 0 < hours <= 24 * 90:
        raise InvalidParams(
            "lookback_h must be a number of hours above 0 and at most 2160", data={"param": "lookback_h"}
        )
    return hours
