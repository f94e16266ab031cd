"""Tax per invoice line: which rate applies, and the line's net, tax and gross. Pure, no I/O.

Rules (orderhub.yaml ``invoicing.tax``), first match wins:

1. ``by_sku_prefix`` — the longest prefix of the line's SKU that is listed;
2. ``by_currency`` — the order's currency;
3. ``default``.

Rates are fractions (``"0.13"`` is 13 %). Each line is rounded on its own, half up, to the
currency's decimals (``warehouse.money``), and the invoice totals are the sums of the rounded
lines, so ``net + tax == gross`` holds on every line and on the invoice:

- ``prices_include_tax: false`` — ``net = round(qty * unit_price)``, ``tax = round(net * rate)``,
  ``gross = net + tax``;
- ``prices_include_tax: true`` — ``gross = round(qty * unit_price)``,
  ``net = round(gross / (1 + rate))``, ``tax = gross - net`` (the customer pays the price shown).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cached_property, lru_cache
from typing import Any, NamedTuple

from warehouse.money import ROUNDING, decimals

__all__ = ["LineTax", "TaxConfigError", "TaxRules", "line_tax", "round_money", "tax_lines",
           "totals"]

ZERO = Decimal(0)
# warehouse MONEY columns are Numeric(18, 2): a 3-decimal currency is rounded to what they hold,
# here, once, rather than silently by the database
MAX_PLACES = 2


class TaxConfigError(ValueError):
    """A bad ``invoicing.tax`` entry; str() is one line naming the key."""


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Half up to the currency's decimals (at most MAX_PLACES): the one rounding edge."""
    return amount.quantize(money_step(currency), rounding=ROUNDING)


@lru_cache(maxsize=256)
def money_step(currency: str) -> Decimal:
    """The quantum ``round_money`` rounds to (0.01 for USD, 1 for JPY): found once per currency."""
    return _step(min(decimals(currency), MAX_PLACES))


@lru_cache(maxsize=16)
def _step(places: int) -> Decimal:
    return Decimal(1).scaleb(-places)


def parse_rate(value: Any, where: str) -> Decimal:
    """A rate as a fraction in [0, 1): "0.13", 0, Decimal. Floats are refused (write "0.13")."""
    if isinstance(value, bool) or isinstance(value, float):
        raise TaxConfigError(f"{where}: {value!r} must be a quoted decimal such as \"0.13\"")
    try:
        rate = Decimal(str(value).strip())
    except InvalidOperation:
        raise TaxConfigError(f"{where}: {value!r} is not a decimal rate") from None
    if not rate.is_finite() or rate < 0 or rate >= 1:
        # 13 instead of 0.13 is the likely slip: a rate of 100 % or more is refused
        raise TaxConfigError(f"{where}: {value!r} is not a rate in [0, 1) (13 % is \"0.13\")")
    return rate


@dataclass(frozen=True)
class TaxRules:
    """The declared rates. The zero value (no ``tax`` section) taxes nothing."""

    default: Decimal = ZERO
    by_currency: Mapping[str, Decimal] = field(default_factory=dict)
    by_sku_prefix: Mapping[str, Decimal] = field(default_factory=dict)
    prices_include_tax: bool = False

    @classmethod
    def from_config(cls, raw: Any, where: str = "invoicing.tax") -> TaxRules:
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise TaxConfigError(f"{where}: expected a mapping of default, by_currency, "
                                 "by_sku_prefix, prices_include_tax")
        known = {"default", "by_currency", "by_sku_prefix", "prices_include_tax"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise TaxConfigError(f"{where}.{unknown[0]}: unknown key (known: "
                                 f"{', '.join(sorted(known))})")
        include = raw.get("prices_include_tax", False)
        if not isinstance(include, bool):
            raise TaxConfigError(f"{where}.prices_include_tax: expected true or false")
        return cls(
            default=parse_rate(raw.get("default", "0"), f"{where}.default"),
            by_currency=_rates(raw.get("by_currency"), f"{where}.by_currency", currency=True),
            by_sku_prefix=_rates(raw.get("by_sku_prefix"), f"{where}.by_sku_prefix"),
            prices_include_tax=include,
        )

    def rate_for(self, sku: str | None, currency: str) -> tuple[Decimal, str]:
        """The rate of one line and the rule that chose it (stored with the line: the why)."""
        return self.rates_in(currency)(sku)

    def rates_in(self, currency: str) -> Callable[[str | None], tuple[Decimal, str]]:
        """``rate_for`` of one currency, as a function of the SKU: what is the same for every
        line of an order (the currency's rate, no prefix rules at all) is decided once."""
        fallback = ((self.by_currency[currency], f"by_currency {currency}")
                    if currency in self.by_currency else (self.default, "default"))
        prefixes = self._prefixes
        if not prefixes:
            return lambda sku: fallback

        def rate(sku: str | None) -> tuple[Decimal, str]:
            if sku:
                for prefix, found in prefixes:
                    if sku.startswith(prefix):
                        return found
            return fallback

        return rate

    @cached_property
    def _prefixes(self) -> tuple[tuple[str, tuple[Decimal, str]], ...]:
        # longest prefix first, so "SKU-99" beats "SKU-9" whatever the file's order
        return tuple((p, (self.by_sku_prefix[p], f"by_sku_prefix {p}"))
                     for p in sorted(self.by_sku_prefix, key=len, reverse=True))


def _rates(raw: Any, where: str, currency: bool = False) -> dict[str, Decimal]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise TaxConfigError(f"{where}: expected a mapping of {'currency' if currency else 'prefix'}"
                             " -> rate")
    out: dict[str, Decimal] = {}
    for key, value in raw.items():
        name = str(key)
        if currency:
            if len(name) != 3 or not name.isalpha() or not name.isupper():
                raise TaxConfigError(f"{where}.{name}: not a 3-letter ISO currency code")
        elif not name:
            raise TaxConfigError(f"{where}: an empty SKU prefix would match every line")
        out[name] = parse_rate(value, f"{where}.{name}")
    return out


class LineTax(NamedTuple):
    """One invoice line's amounts (rounded) and the rule behind its rate."""

    net: Decimal
    rate: Decimal
    tax: Decimal
    gross: Decimal
    rule: str


def line_tax(rules: TaxRules, sku: str | None, currency: str, qty: Decimal,
             unit_price: Decimal) -> LineTax:
    """Net, tax and gross of one line (see the module docstring for the two price modes)."""
    return tax_lines(rules, currency, ((sku, qty, unit_price),))[0]


def tax_lines(rules: TaxRules, currency: str,
              lines: Iterable[tuple[str | None, Decimal, Decimal]]) -> list[LineTax]:
    """``line_tax`` of each (sku, qty, unit_price) line of one order (one currency): the rate
    lookup and the rounding step are settled once for the order, not once per line."""
    step = money_step(currency)
    rate_for = rules.rates_in(currency)
    out: list[LineTax] = []
    add = out.append
    new = tuple.__new__  # LineTax(...) without the Python-level __new__: one per order line
    if rules.prices_include_tax:
        for sku, qty, unit_price in lines:
            rate, rule = rate_for(sku)
            gross = (qty * unit_price).quantize(step, rounding=ROUNDING)
            net = (gross / (1 + rate)).quantize(step, rounding=ROUNDING)
            add(new(LineTax, (net, rate, gross - net, gross, rule)))
        return out
    for sku, qty, unit_price in lines:
        rate, rule = rate_for(sku)
        net = (qty * unit_price).quantize(step, rounding=ROUNDING)
        tax = (net * rate).quantize(step, rounding=ROUNDING)
        add(new(LineTax, (net, rate, tax, net + tax, rule)))
    return out


def totals(lines: Iterable[LineTax]) -> tuple[Decimal, Decimal, Decimal]:
    """(net, tax, gross) of an invoice: sums of its rounded lines, so net + tax == gross."""
    net = tax = ZERO
    for line in lines:
        net += line.net
        tax += line.tax
    return net, tax, net + tax
