"""Tokens and exact conversion between decimal strings at the edges and integer minor units inside."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, Rounded

from .errors import AmountError

_DECIMAL_RE = re.compile(r"^[0-9]+(\.[0-9]+)?$")
MAX_DECIMAL_CHARS = 64

# Arithmetic on amounts never rounds: the default context keeps 28 significant digits and would silently
# round "1.0000000000000000000000000000001"; this one is wide enough for any accepted input and raises
# instead of rounding.
EXACT = Context(prec=200, traps=[Inexact, Rounded, InvalidOperation, Overflow])


@dataclass(frozen=True)
class Token:
    symbol: str
    decimals: int
    networks: tuple[str, ...] = field(default=())

    def to_minor(self, value: object, *, allow_zero: bool = False) -> int:
        return to_minor(value, self.decimals, self.symbol, allow_zero=allow_zero)

    def fmt(self, amount_minor: int) -> str:
        return fmt_minor(amount_minor, self.decimals)


def parse_decimal(value: object, what: str = "amount") -> Decimal:
    """Parse a plain decimal string (``"12.5"``); floats, exponents and signs are refused."""
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise AmountError(f"{what} must be a decimal string such as \"12.5\", got {type(value).__name__}")
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise AmountError(f"{what} must be finite")
        return value
    text = str(value).strip()
    if len(text) > MAX_DECIMAL_CHARS:
        raise AmountError(f"{what} has more than {MAX_DECIMAL_CHARS} characters")
    if not _DECIMAL_RE.match(text):
        raise AmountError(f"{what} {value!r} is not a plain non-negative decimal such as \"12.5\"")
    try:
        return Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only valid decimals
        raise AmountError(f"{what} {value!r} is not a decimal") from exc


def to_minor(value: object, decimals: int, symbol: str, *, allow_zero: bool = False, what: str = "amount") -> int:
    """Convert ``"12.5"`` to integer minor units exactly, or raise naming why it cannot be exact."""
    dec = parse_decimal(value, what)
    if dec < 0:
        raise AmountError(f"{what} {value} is negative")
    scaled = dec.scaleb(decimals, context=EXACT)
    if scaled != scaled.to_integral_value():
        raise AmountError(f"{value} is finer than {symbol}'s {decimals} decimals")
    minor = int(scaled)
    if minor == 0 and not allow_zero:
        raise AmountError(f"{what} must be greater than zero")
    return minor


def fmt_minor(amount_minor: int, decimals: int) -> str:
    """Format minor units as a decimal string: trailing zeros dropped, at least two places kept.

    ``1250000`` at 6 decimals is ``"1.25"``, ``500000000`` is ``"500.00"``, ``12345`` at 8 is ``"0.00012345"``.
    """
    sign = "-" if amount_minor < 0 else ""
    n = abs(int(amount_minor))
    if decimals == 0:
        return f"{sign}{n}"
    whole, frac = divmod(n, 10**decimals)
    digits = f"{frac:0{decimals}d}".rstrip("0")
    digits = digits.ljust(min(2, decimals), "0")
    return f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}"
