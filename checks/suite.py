"""The check suite: declared in orderhub.yaml, validated here, one SQL query per check.

Deliberately free of Great Expectations (its import takes seconds): the CLI and the config
loader validate a suite without paying for it; only ``checks.gate`` imports GE, lazily.

Every check is one set-based query over the staged batch that returns one row per failing
order: ``order_id``, ``value`` (the offending value, as text) and ``reason`` (for humans).
The batch is referenced as ``{batch}`` - the placeholder GE's ``UnexpectedRowsExpectation``
substitutes - and the gate substitutes the very same batch query when it reads the failing keys
itself, so GE's verdict and the quarantined rows come from one definition.

Each query reads the batch as ``{batch} AS b JOIN orders o ON o.id = b.id``. Why: GE
substitutes ``{batch}`` as ``(subquery) AS subselect`` when a query has no JOIN but as a bare
``(subquery)`` when it has one; always joining, and always aliasing the batch ourselves, gives
one form that both GE and we render identically, on SQLite and PostgreSQL.

The SQL is text shared by both dialects: no ``%`` (psycopg), no ``:name`` (SQLAlchemy binds), no
braces besides ``{batch}`` (GE runs ``str.format``). Config values that reach the SQL are
validated first (currency codes are three letters, the tolerance an exact decimal), so the
literals embedded below cannot inject anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

SEVERITIES = ("error", "warn")

# Prices are Numeric(18, 4): comparing |difference| in whole 1/10000 units is exact on both
# dialects, even where SQLite stores the numbers as binary floats.
PRICE_SCALE = 4

REQUIRED_FIELD_SQL: dict[str, str] = {
    "customer": (
        "COALESCE(TRIM(o.customer_code), '') = '' AND COALESCE(TRIM(o.customer_email), '') = ''"
    ),
    "currency": "COALESCE(TRIM(o.currency), '') = ''",
    "ordered_at": "o.ordered_at IS NULL",
    "ship_region": "COALESCE(TRIM(o.ship_region), '') = ''",
    "lines": "NOT EXISTS (SELECT 1 FROM order_lines x WHERE x.order_id = o.id)",
    "order_no": "COALESCE(TRIM(o.order_no), '') = ''",
    "total": "o.total IS NULL",
}
DEFAULT_REQUIRED = ("customer", "currency", "ordered_at", "ship_region", "lines")

_CURRENCY = re.compile(r"[A-Z]{3}")
_B = "{batch}"  # GE's placeholder; kept out of the f-strings below so no brace needs doubling
_FROM_BATCH = f"FROM {_B} AS b JOIN orders o ON o.id = b.id"
_DUP_KEY = "{t}.customer_id, {t}.order_date, {t}.currency, {t}.total, {t}.lines_hash"


@dataclass(frozen=True)
class CheckSpec:
    """One declared check. Options that do not apply to a check keep their defaults."""

    id: str
    severity: str = "error"
    tolerance: Decimal = Decimal("0")  # price_matches_list
    allowed: tuple[str, ...] = ()  # currency_allowed
    fields: tuple[str, ...] = DEFAULT_REQUIRED  # required_fields

    @property
    def blocking(self) -> bool:
        """An ``error`` failure quarantines the order; a ``warn`` failure is only recorded."""
        return self.severity == "error"

    def sql(self, dialect: str) -> str:
        """The failing-orders query over ``{batch}``: columns order_id, value, reason."""
        return _SQL[self.id](self, dialect)

    def options(self) -> dict[str, Any]:
        """The check's options as JSON-safe values (for GE meta, artifacts, lineage)."""
        if self.id == "price_matches_list":
            return {"tolerance": str(self.tolerance)}
        if self.id == "currency_allowed":
            return {"allowed": list(self.allowed)}
        if self.id == "required_fields":
            return {"fields": list(self.fields)}
        return {}


def batch_query(max_id: int | None = None) -> str:
    """The staged batch: ids of captured orders, bounded by the highest id seen when the gate
    started so that orders landing mid-gate wait for the next gate instead of slipping in."""
    sql = "SELECT id FROM orders WHERE status = 'captured'"
    if max_id is not None:
        sql += f" AND id <= {int(max_id)}"
    return sql


def render(check_sql: str, batch_sql: str) -> str:
    """Substitute the batch exactly as GE does for a query with a JOIN: a parenthesised subquery
    (each check aliases it ``b``)."""
    return check_sql.format(batch=f"({batch_sql})")


# --- validation --------------------------------------------------------------------------------


def load_suite(items: Sequence[Mapping[str, Any]] | None) -> list[CheckSpec]:
    """Validate the ``checks:`` list of orderhub.yaml into specs.

    Raises ``ValueError`` with one line naming the check and the key, e.g.
    ``checks[1] price_matches_list: tolerance: 'abc' is not a decimal number``.
    """
    if items is None:
        return []
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise ValueError("checks: expected a list of {id, severity, ...}")
    specs: list[CheckSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"checks[{i}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}: expected a mapping like {{id: ..., severity: ...}}")
        check_id = item.get("id")
        if not isinstance(check_id, str) or not check_id:
            raise ValueError(f"{where}: id: missing")
        where = f"{where} {check_id}"
        if check_id not in _OPTIONS:
            raise ValueError(f"{where}: id: unknown check (known: {', '.join(sorted(_OPTIONS))})")
        if check_id in seen:
            raise ValueError(f"{where}: id: declared twice")
        seen.add(check_id)
        severity = item.get("severity", "error")
        if severity not in SEVERITIES:
            raise ValueError(
                f"{where}: severity: {severity!r} is not one of {', '.join(SEVERITIES)}"
            )
        allowed_keys = {"id", "severity", *_OPTIONS[check_id]}
        for key in item:
            if key not in allowed_keys:
                raise ValueError(f"{where}: {key}: not an option of this check")
        options: dict[str, Any] = {}
        for key, parse in _OPTIONS[check_id].items():
            try:
                options[key] = parse(item.get(key))
            except ValueError as exc:
                raise ValueError(f"{where}: {key}: {exc}") from None
        specs.append(CheckSpec(id=check_id, severity=severity, **options))
    return specs


def _tolerance(raw: Any) -> Decimal:
    if raw is None:
        return Decimal("0")
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float, Decimal)):
        raise ValueError(f"{raw!r} is not a decimal number")
    try:
        # str() first: YAML's unquoted 0.01 arrives as a float; its repr is the literal typed.
        value = Decimal(str(raw).strip())
    except InvalidOperation:
        raise ValueError(f"{raw!r} is not a decimal number") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"{raw!r} must be a non-negative number")
    if value != value.quantize(Decimal(1).scaleb(-PRICE_SCALE)):
        raise ValueError(f"{raw!r} has more than {PRICE_SCALE} decimals (prices have {PRICE_SCALE})")
    return value


def _allowed(raw: Any) -> tuple[str, ...]:
    if raw is None:
        raise ValueError("required: the list of allowed ISO currency codes, e.g. [CNY, USD]")
    if isinstance(raw, str) or not isinstance(raw, Sequence) or not raw:
        raise ValueError("expected a non-empty list of ISO currency codes, e.g. [CNY, USD]")
    for code in raw:
        if not isinstance(code, str) or not _CURRENCY.fullmatch(code):
            raise ValueError(f"{code!r} is not a three-letter upper-case ISO currency code")
    return tuple(dict.fromkeys(raw))


def _fields(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return DEFAULT_REQUIRED
    if isinstance(raw, str) or not isinstance(raw, Sequence) or not raw:
        raise ValueError(f"expected a non-empty list of: {', '.join(REQUIRED_FIELD_SQL)}")
    for name in raw:
        if name not in REQUIRED_FIELD_SQL:
            raise ValueError(f"{name!r} is not a known field ({', '.join(REQUIRED_FIELD_SQL)})")
    return tuple(dict.fromkeys(raw))


# --- SQL per check -----------------------------------------------------------------------------


def _agg(expr: str, dialect: str) -> str:
    """All offending line values of one order, joined with '; ' (one row per order)."""
    if dialect == "postgresql":
        return f"STRING_AGG({expr}, '; ' ORDER BY {expr})"
    if dialect == "sqlite":
        return f"GROUP_CONCAT({expr}, '; ')"
    return f"MIN({expr})"  # other dialects: the first offending value is still a useful hint


def _text(expr: str) -> str:
    return f"COALESCE(CAST({expr} AS TEXT), 'null')"


def _customer_known(spec: CheckSpec, dialect: str) -> str:
    # A missing customer (no code and no email) is required_fields' failure, not this one's:
    # each defect fails exactly one check.
    has_code = "COALESCE(TRIM(o.customer_code), '') <> ''"
    has_email = "COALESCE(TRIM(o.customer_email), '') <> ''"
    return (
        "SELECT o.id AS order_id, "
        f"CASE WHEN {has_code} THEN 'code ' || o.customer_code "
        "ELSE 'email ' || o.customer_email END AS value, "
        f"CASE WHEN {has_code} THEN 'no customer with this code' "
        "ELSE 'no customer with this email' END AS reason "
        f"{_FROM_BATCH} "
        f"WHERE o.customer_id IS NULL AND ({has_code} OR {has_email})"
    )


def _price_matches_list(spec: CheckSpec, dialect: str) -> str:
    units = int(spec.tolerance.scaleb(PRICE_SCALE))
    value = (
        f"'line ' || CAST(l.line_no AS TEXT) || ' ' || l.sku || ' ' || {_text('l.unit_price')}"
        " || ' vs list ' || CAST(p.price AS TEXT)"
    )
    return (
        f"SELECT o.id AS order_id, {_agg(value, dialect)} AS value, "
        f"'unit price differs from the list price by more than {spec.tolerance}' AS reason "
        f"{_FROM_BATCH} "
        "JOIN order_lines l ON l.order_id = o.id "
        "JOIN prices p ON p.sku = l.sku AND p.currency = o.currency "
        f"WHERE ROUND(ABS(l.unit_price - p.price) * {10**PRICE_SCALE}) > {units} "
        "GROUP BY o.id"
    )


def _qty_positive(spec: CheckSpec, dialect: str) -> str:
    value = f"'line ' || CAST(l.line_no AS TEXT) || ' qty ' || {_text('l.qty')}"
    return (
        f"SELECT o.id AS order_id, {_agg(value, dialect)} AS value, "
        "'quantity missing or not positive' AS reason "
        f"{_FROM_BATCH} "
        "JOIN order_lines l ON l.order_id = o.id "
        "WHERE l.qty IS NULL OR l.qty <= 0 "
        "GROUP BY o.id"
    )


def _sku_known(spec: CheckSpec, dialect: str) -> str:
    value = "'line ' || CAST(l.line_no AS TEXT) || ' ' || COALESCE(l.sku, 'no sku')"
    return (
        f"SELECT o.id AS order_id, {_agg(value, dialect)} AS value, "
        "'SKU not in the product master' AS reason "
        f"{_FROM_BATCH} "
        "JOIN order_lines l ON l.order_id = o.id "
        "LEFT JOIN products p ON p.sku = l.sku "
        "WHERE p.sku IS NULL "
        "GROUP BY o.id"
    )


def _currency_allowed(spec: CheckSpec, dialect: str) -> str:
    codes = ", ".join(f"'{c}'" for c in spec.allowed)  # validated: [A-Z]{3} only
    # A missing currency is required_fields' failure; this one judges the currency given.
    return (
        "SELECT o.id AS order_id, o.currency AS value, "
        f"'currency not allowed (allowed {', '.join(spec.allowed)})' AS reason "
        f"{_FROM_BATCH} "
        f"WHERE COALESCE(TRIM(o.currency), '') <> '' AND o.currency NOT IN ({codes})"
    )


def _required_fields(spec: CheckSpec, dialect: str) -> str:
    missing = " || ".join(
        f"CASE WHEN {REQUIRED_FIELD_SQL[f]} THEN ', {f}' ELSE '' END" for f in spec.fields
    )
    any_missing = " OR ".join(f"({REQUIRED_FIELD_SQL[f]})" for f in spec.fields)
    return (
        f"SELECT o.id AS order_id, SUBSTR({missing}, 3) AS value, "
        "'required field missing' AS reason "
        f"{_FROM_BATCH} "
        f"WHERE {any_missing}"
    )


def _not_duplicate(spec: CheckSpec, dialect: str) -> str:
    # The later copy is the duplicate. Per duplicate key, orders are ranked: already gated first
    # (any state but captured - so a copy arriving after its twin was validated can never pass
    # too), then by ordered_at, then id; every batch order that is not first is a duplicate of
    # the first. Rejected orders and orders held as duplicates are not originals, so a third
    # copy points at the first, not at the second.
    # Why a window over "key IN (the batch's keys)" rather than a self-join: SQLite estimates a
    # status-index lookup at ~10 rows and may then nest-loop a self-join over the whole table
    # (100 k x 100 k); an IN (subquery) always becomes an ephemeral index, so the plan is one
    # scan of orders whatever the statistics. PostgreSQL hashes either form.
    key_e, key_o = _DUP_KEY.format(t="e"), _DUP_KEY.format(t="o")
    return (
        "SELECT d.order_id, f.source || ' ' || COALESCE(f.order_no, f.external_id) AS value, "
        "'same customer, date, currency, total and lines as an earlier order' AS reason "
        "FROM (SELECT e.id AS order_id, FIRST_VALUE(e.id) OVER ("
        f"PARTITION BY {key_e} "
        "ORDER BY CASE WHEN e.status = 'captured' THEN 1 ELSE 0 END, e.ordered_at, e.id"
        ") AS first_id "
        "FROM orders e "
        f"WHERE ({key_e}) IN (SELECT {key_o} {_FROM_BATCH}) "
        "AND e.status <> 'rejected' "
        "AND NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.order_id = e.id "
        "AND q.check_id = 'not_duplicate' AND q.status IN ('open', 'rejected'))"
        ") AS d "
        f"JOIN {_B} AS b ON b.id = d.order_id "
        "JOIN orders f ON f.id = d.first_id "
        "WHERE d.first_id <> d.order_id"
    )


_SQL: dict[str, Callable[[CheckSpec, str], str]] = {
    "customer_known": _customer_known,
    "price_matches_list": _price_matches_list,
    "qty_positive": _qty_positive,
    "sku_known": _sku_known,
    "currency_allowed": _currency_allowed,
    "required_fields": _required_fields,
    "not_duplicate": _not_duplicate,
}

# check id -> its options and their parsers (the keys a check accepts besides id and severity)
_OPTIONS: dict[str, dict[str, Callable[[Any], Any]]] = {
    "customer_known": {},
    "price_matches_list": {"tolerance": _tolerance},
    "qty_positive": {},
    "sku_known": {},
    "currency_allowed": {"allowed": _allowed},
    "required_fields": {"fields": _fields},
    "not_duplicate": {},
}

CHECK_IDS = tuple(_SQL)
