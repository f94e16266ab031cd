"""Money: Decimal + ISO currency, no floats, rounding only at the edges."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warehouse.money import (
    CurrencyMismatch,
    Money,
    MoneyError,
    decimals,
    from_minor,
    parse_money,
    quantize,
    to_minor,
)

CURRENCIES = ["USD", "CNY", "EUR", "JPY", "KRW", "KWD", "BHD"]
amounts = st.decimals(min_value=-(10**12), max_value=10**12, allow_nan=False, places=6)
currencies = st.sampled_from(CURRENCIES)


@pytest.mark.parametrize(("currency", "places"), [("USD", 2), ("cny", 2), ("JPY", 0),
                                                  ("KWD", 3), ("BHD", 3), ("XYZ", 2)])
def test_currency_decimals(currency: str, places: int) -> None:
    assert decimals(currency) == places


@pytest.mark.parametrize("bad", ["US", "usd1", "", None, 840])
def test_bad_currency_is_refused(bad: object) -> None:
    with pytest.raises(MoneyError, match="currency"):
        decimals(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12.34", Decimal("12.34")),
        (" -0.5 ", Decimal("-0.5")),
        ("1,234,567.89", Decimal("1234567.89")),
        ("1e3", Decimal("1000")),
        (".5", Decimal("0.5")),
        (7, Decimal(7)),
        (Decimal("0.10"), Decimal("0.10")),
    ],
)
def test_parse_money(text: str | int | Decimal, expected: Decimal) -> None:
    value = parse_money(text)
    assert value == expected and isinstance(value, Decimal)


@pytest.mark.parametrize("bad", [0.1, 1.0, True, "N/A", "", "1.234,50", "12,34", "NaN", "inf",
                                 Decimal("NaN"), Decimal("Infinity"), None, [1]])
def test_parse_money_refuses(bad: object) -> None:
    with pytest.raises(MoneyError):
        parse_money(bad)  # type: ignore[arg-type]


def test_parse_keeps_precision_no_rounding_inside() -> None:
    assert parse_money("0.125") == Decimal("0.125")
    total = Money.of("0.005", "USD") + Money.of("0.005", "USD")
    assert total.amount == Decimal("0.010")  # not 0.00 + 0.00 (rounded too early)
    assert total.quantize().amount == Decimal("0.01")


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [("12.34", "USD", 1234), ("1234", "JPY", 1234), ("1.234", "KWD", 1234), ("0.005", "USD", 1),
     ("-0.005", "USD", -1), ("2.5", "JPY", 3), ("0.0049", "USD", 0)],
)
def test_to_minor_rounds_half_up_at_the_edge(amount: str, currency: str, minor: int) -> None:
    assert to_minor(Decimal(amount), currency) == minor


def test_from_minor() -> None:
    assert from_minor(1234, "USD") == Decimal("12.34")
    assert str(from_minor(5, "USD")) == "0.05"
    assert from_minor(1234, "JPY") == Decimal(1234)
    assert str(from_minor(1234, "KWD")) == "1.234"
    for bad in (12.0, True, "12"):
        with pytest.raises(MoneyError):
            from_minor(bad, "USD")  # type: ignore[arg-type]


def test_quantize() -> None:
    assert str(quantize(Decimal("1.005"), "USD")) == "1.01"
    assert str(quantize(Decimal("1"), "USD")) == "1.00"
    assert str(quantize(Decimal("1.5"), "JPY")) == "2"
    assert str(quantize("2.0005", "BHD")) == "2.001"


def test_money_value_object() -> None:
    a = Money.of("10.10", "usd")
    assert a.currency == "USD" and a.amount == Decimal("10.10")
    assert a + Money(Decimal("0.90"), "USD") == Money.of("11", "USD")
    assert a - Money.of("0.10", "USD") == Money.of("10", "USD")
    assert -a == Money.of("-10.10", "USD") and abs(-a) == a
    assert a * 3 == Money.of("30.30", "USD") == 3 * a
    assert sum([a, a, a]) == Money.of("30.30", "USD")
    assert Money.zero("JPY").quantize().amount == Decimal(0) and not Money.zero("JPY")
    assert Money.from_minor(1999, "USD").amount == Decimal("19.99")
    assert Money.of("19.99", "USD").to_minor() == 1999
    assert Money.of("1", "USD") < Money.of("2", "USD") <= Money.of("2", "USD")
    assert str(Money.of("1.50", "EUR")) == "1.50 EUR"
    assert hash(Money.of("1.0", "USD")) == hash(Money.of("1.00", "USD"))


def test_money_refuses_float_and_mixing() -> None:
    with pytest.raises(MoneyError):
        Money(0.1, "USD")  # type: ignore[arg-type]
    with pytest.raises(MoneyError):
        Money.of("1", "US")
    with pytest.raises(CurrencyMismatch):
        Money.of("1", "USD") + Money.of("1", "EUR")
    with pytest.raises(CurrencyMismatch):
        _ = Money.of("1", "USD") < Money.of("1", "EUR")
    with pytest.raises(TypeError):
        Money.of("1", "USD") * 1.5  # type: ignore[operator]
    with pytest.raises(TypeError):
        Money.of("1", "USD") * Money.of("1", "USD")  # type: ignore[operator]
    with pytest.raises(TypeError):
        Money.of("1", "USD") + 1  # type: ignore[operator]


@given(st.integers(min_value=-(10**15), max_value=10**15), currencies)
def test_minor_round_trip(minor: int, currency: str) -> None:
    assert to_minor(from_minor(minor, currency), currency) == minor


@given(amounts, currencies)
def test_quantize_is_idempotent_and_close(amount: Decimal, currency: str) -> None:
    q = quantize(amount, currency)
    assert quantize(q, currency) == q
    assert abs(q - amount) <= Decimal(1).scaleb(-decimals(currency)) / 2
    assert -q.as_tuple().exponent == decimals(currency)  # type: ignore[operator]


@given(amounts, amounts, amounts, currencies)
def test_addition_is_exact(a: Decimal, b: Decimal, c: Decimal, currency: str) -> None:
    x, y, z = Money(a, currency), Money(b, currency), Money(c, currency)
    assert x + y == y + x
    assert (x + y) + z == x + (y + z)
    assert x + y - y == x
