"""Money: a Decimal amount with an ISO 4217 currency. Pure, no I/O.

Rules (DESIGN.md invariant 5):
- floats are refused everywhere: a float has already lost the cents we are asked to keep;
- amounts keep their full precision while we compute; rounding happens only at the edges
  (``quantize``, ``to_minor``) and uses the currency's own number of decimals;
- adding or comparing amounts of different currencies is an error, never a silent mix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

__all__ = [
    "CurrencyMismatch",
    "Money",
    "MoneyError",
    "decimals",
    "from_minor",
    "parse_money",
    "quantize",
    "to_minor",
]

# ISO 4217 minor units that differ from the usual 2. Anything not listed has 2 decimals.
_DECIMALS: dict[str, int] = {
    **dict.fromkeys("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split(), 0),
    **dict.fromkeys("BHD IQD JOD KWD LYD OMR TND".split(), 3),
    **dict.fromkeys("CLF UYW".split(), 4),
}
_CURRENCY = re.compile(r"[A-Z]{3}")
# Optional sign, digits with either no grouping or strict thousands grouping, optional fraction
# or exponent. "1,234.50" is read; "1.234,50" (ambiguous) is refused rather than guessed.
_NUMBER = re.compile(r"[+-]?(\d+|\d{1,3}(,\d{3})+)(\.\d*)?([eE][+-]?\d+)?|[+-]?\.\d+")
ROUNDING = ROUND_HALF_UP  # commercial rounding, as invoices print it


class MoneyError(ValueError):
    """A value that cannot be money: a float, NaN, a malformed number or currency."""


class CurrencyMismatch(MoneyError):
    """Two amounts of different currencies were combined."""


def _currency(code: Any) -> str:
    if not isinstance(code, str) or not _CURRENCY.fullmatch(code.strip().upper()):
        raise MoneyError(f"currency: expected a 3-letter ISO code, got {code!r}")
    return code.strip().upper()


def decimals(currency: str) -> int:
    """The currency's number of minor-unit decimals (JPY 0, USD 2, KWD 3)."""
    if isinstance(currency, str):
        return _decimals(currency)  # asked once per line on hot paths: remembered
    return _DECIMALS.get(_currency(currency), 2)


@lru_cache(maxsize=1024)
def _decimals(currency: str) -> int:
    return _DECIMALS.get(_currency(currency), 2)


def _exponent(currency: str) -> Decimal:
    return _scale(decimals(currency))


@lru_cache(maxsize=32)
def _scale(places: int) -> Decimal:
    return Decimal(1).scaleb(-places)


def parse_money(value: str | int | Decimal) -> Decimal:
    """str/int/Decimal -> finite Decimal, unrounded. Refuses float, bool, NaN, Infinity, ""."""
    if isinstance(value, bool) or isinstance(value, float):
        raise MoneyError(f"amount: {type(value).__name__} {value!r} refused (use Decimal or str)")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, str):
        text = value.strip()
        if not _NUMBER.fullmatch(text):
            raise MoneyError(f"amount: not a number: {value!r}")
        try:
            result = Decimal(text.replace(",", ""))
        except InvalidOperation:  # pragma: no cover - the pattern already vouched for it
            raise MoneyError(f"amount: not a number: {value!r}") from None
    else:
        raise MoneyError(f"amount: expected str, int or Decimal, got {type(value).__name__}")
    if not result.is_finite():
        raise MoneyError(f"amount: not a finite number: {value!r}")
    return result


def quantize(amount: str | int | Decimal, currency: str) -> Decimal:
    """Round to the currency's decimals (half up): the edge where rounding is allowed."""
    return parse_money(amount).quantize(_exponent(currency), rounding=ROUNDING)


def to_minor(amount: str | int | Decimal, currency: str) -> int:
    """Decimal amount -> integer minor units (12.34 USD -> 1234; 1234 JPY -> 1234)."""
    return int(quantize(amount, currency).scaleb(decimals(currency)))


def from_minor(minor: int, currency: str) -> Decimal:
    """Integer minor units -> Decimal amount with the currency's decimals (1234 USD -> 12.34)."""
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise MoneyError(f"minor units: expected int, got {type(minor).__name__} {minor!r}")
    return Decimal(minor).scaleb(-decimals(currency)).quantize(_exponent(currency))


@dataclass(frozen=True, slots=True)
class Money:
    """An exact amount in one currency. Arithmetic keeps full precision; round with quantize()."""

    amount: Decimal
    currency: str

    def __post_init__(self) -> None:
        # frozen: assign the normalised values through object.__setattr__
        object.__setattr__(self, "amount", parse_money(self.amount))
        object.__setattr__(self, "currency", _currency(self.currency))

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def of(cls, amount: str | int | Decimal, currency: str) -> Money:
        return cls(parse_money(amount), currency)

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(Decimal(0), currency)

    @classmethod
    def from_minor(cls, minor: int, currency: str) -> Money:
        return cls(from_minor(minor, currency), currency)

    # -- edges --------------------------------------------------------------------------------

    def quantize(self) -> Money:
        return Money(quantize(self.amount, self.currency), self.currency)

    def to_minor(self) -> int:
        return to_minor(self.amount, self.currency)

    # -- arithmetic ---------------------------------------------------------------------------

    def _same(self, other: Money) -> Money:
        if not isinstance(other, Money):
            raise TypeError(f"cannot combine Money with {type(other).__name__}")
        if other.currency != self.currency:
            raise CurrencyMismatch(f"cannot combine {self.currency} with {other.currency}")
        return other

    def __add__(self, other: Money) -> Money:
        return Money(self.amount + self._same(other).amount, self.currency)

    def __radd__(self, other: Any) -> Money:
        if isinstance(other, int) and not isinstance(other, bool) and other == 0:
            return self  # lets sum() start from its default 0
        return NotImplemented

    def __sub__(self, other: Money) -> Money:
        return Money(self.amount - self._same(other).amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def __abs__(self) -> Money:
        return Money(abs(self.amount), self.currency)

    def __mul__(self, factor: int | Decimal) -> Money:
        # Money * Money is meaningless; Money * float would smuggle a float in.
        if isinstance(factor, bool) or not isinstance(factor, int | Decimal):
            raise TypeError(f"Money can be multiplied by int or Decimal, not {factor!r}")
        return Money(self.amount * factor, self.currency)

    __rmul__ = __mul__

    # -- comparison (same currency only) --------------------------------------------------------

    def __lt__(self, other: Money) -> bool:
        return self.amount < self._same(other).amount

    def __le__(self, other: Money) -> bool:
        return self.amount <= self._same(other).amount

    def __gt__(self, other: Money) -> bool:
        return self.amount > self._same(other).amount

    def __ge__(self, other: Money) -> bool:
        return self.amount >= self._same(other).amount

    def __bool__(self) -> bool:
        return bool(self.amount)

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"
