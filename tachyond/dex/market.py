"""One market's exact arithmetic: decimal strings <-> ticks and lots, notional, fees and order holds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, Inexact, Rounded

from ..amounts import EXACT, Token, fmt_minor, parse_decimal
from ..config import MarketConfig
from ..errors import AmountError, OrderRejected

BPS = 10_000


def fee_minor(notional_minor: int, bps: int) -> int:
    """bps of a notional, rounded UP to the quote token's minor unit."""
    return -(-notional_minor * bps // BPS)


@dataclass(frozen=True)
class Market:
    """A configured market in integer units: prices in ticks, quantities in lots, money in quote minor units."""

    symbol: str
    base: str
    quote: str
    engine: str
    base_token: Token
    quote_token: Token
    tick: Decimal
    lot: Decimal
    tick_minor: int          # quote minor units per tick (a price is per one whole base unit)
    lot_minor: int           # base minor units per lot
    unit_minor: int          # quote minor units of one tick x one lot: notional = ticks * lots * unit
    min_notional_minor: int
    maker_fee_bps: int
    taker_fee_bps: int
    protection_bps: int

    @classmethod
    def from_config(cls, cfg: MarketConfig, tokens: Mapping[str, Token]) -> Market:
        bt, qt = tokens[cfg.base], tokens[cfg.quote]
        return cls(symbol=cfg.symbol, base=cfg.base, quote=cfg.quote, engine=cfg.engine, base_token=bt,
                   quote_token=qt, tick=cfg.tick, lot=cfg.lot, tick_minor=int(cfg.tick.scaleb(qt.decimals)),
                   lot_minor=int(cfg.lot.scaleb(bt.decimals)),
                   unit_minor=int((cfg.tick * cfg.lot).scaleb(qt.decimals)),
                   min_notional_minor=int(cfg.min_notional.scaleb(qt.decimals)),
                   maker_fee_bps=cfg.maker_fee_bps, taker_fee_bps=cfg.taker_fee_bps,
                   protection_bps=cfg.protection_bps)

    # ----- the edges -----
    def _steps(self, value: object, what: str, step: Decimal, step_name: str) -> int:
        try:
            dec = parse_decimal(value, what)
        except AmountError as exc:
            raise OrderRejected(exc.message) from None
        try:
            steps = EXACT.divide(dec, step)
        except (Inexact, Rounded):  # an endless quotient is no whole number of steps
            steps = Decimal("0.5")
        if steps != steps.to_integral_value():
            raise OrderRejected(f"{what} {value} is off the {step_name} {step} of {self.symbol}")
        if steps <= 0:
            raise OrderRejected(f"{what} must be greater than zero")
        return int(steps)

    def price_ticks(self, price: object) -> int:
        """A decimal price string as whole ticks; OrderRejected naming the tick when it is not whole."""
        return self._steps(price, "price", self.tick, "tick")

    def qty_lots(self, qty: object) -> int:
        """A decimal quantity string as whole lots; OrderRejected naming the lot when it is not whole."""
        return self._steps(qty, "qty", self.lot, "lot")

    def price_minor(self, price_ticks: int) -> int:
        return price_ticks * self.tick_minor

    def qty_minor(self, qty_lots: int) -> int:
        return qty_lots * self.lot_minor

    def fmt_price(self, price_ticks: int) -> str:
        return fmt_minor(price_ticks * self.tick_minor, self.quote_token.decimals)

    def fmt_qty(self, qty_lots: int) -> str:
        return fmt_minor(qty_lots * self.lot_minor, self.base_token.decimals)

    def fmt_quote(self, amount_minor: int) -> str:
        return fmt_minor(amount_minor, self.quote_token.decimals)

    # ----- money -----
    def notional_minor(self, price_ticks: int, qty_lots: int) -> int:
        return price_ticks * qty_lots * self.unit_minor

    def check_min_notional(self, price_ticks: int, qty_lots: int) -> None:
        notional = self.notional_minor(price_ticks, qty_lots)
        if notional < self.min_notional_minor:
            raise OrderRejected(f"notional {self.fmt_quote(notional)} {self.quote} is under the min_notional "
                                f"{self.fmt_quote(self.min_notional_minor)} {self.quote} of {self.symbol}")

    def reserve_fee_bps(self, post_only: bool) -> int:
        """The highest fee rate an order can pay: a post-only order is always the maker."""
        return self.maker_fee_bps if post_only else max(self.taker_fee_bps, self.maker_fee_bps)

    def bid_hold_per_lot_minor(self, price_ticks: int, post_only: bool) -> int:
        """What a bid locks per lot: one lot at its limit plus the fee on one lot, rounded up.

        Fees are rounded up per fill, so the largest fee an order of n lots can pay is n times the rounded
        fee of one lot (n fills of one lot each); the hold is linear in lots, so each fill releases exactly
        its share and nothing is ever short.
        """
        lot_notional = self.notional_minor(price_ticks, 1)
        return lot_notional + fee_minor(lot_notional, self.reserve_fee_bps(post_only))

    def hold(self, side: str, price_ticks: int, qty_lots: int, post_only: bool) -> tuple[str, int]:
        """(token, amount_minor) an order locks: quote for a bid, base for an ask."""
        if side == "buy":
            return self.quote, qty_lots * self.bid_hold_per_lot_minor(price_ticks, post_only)
        return self.base, self.qty_minor(qty_lots)

    def protection_ticks(self, side: str, best_ticks: int) -> int:
        """The market order's limit: best opposite price -/+ protection_bps, rounded to a tick inside the band."""
        if side == "buy":
            return best_ticks * (BPS + self.protection_bps) // BPS
        return max(1, -(-best_ticks * (BPS - self.protection_bps) // BPS))

    def describe(self) -> dict:
        return {"symbol": self.symbol, "base": self.base, "quote": self.quote, "engine": self.engine,
                "tick": self.fmt_price(1), "lot": self.fmt_qty(1),
                "min_notional": self.fmt_quote(self.min_notional_minor), "tick_minor": self.tick_minor,
                "lot_minor": self.lot_minor, "min_notional_minor": self.min_notional_minor,
                "maker_fee_bps": self.maker_fee_bps,
                "taker_fee_bps": self.taker_fee_bps, "protection_bps": self.protection_bps}
