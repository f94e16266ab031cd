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
one form that both GE and we render identically, on SQLite and PostgreSQL. A check that needs
the batch twice (credit: earlier orders of the same batch) aliases it again (``b2``, ...).

The SQL is text shared by both dialects: no ``:name`` (SQLAlchemy binds), no braces besides
``{batch}`` (GE runs ``str.format``), and no ``%`` in PostgreSQL's text (psycopg); SQLite's
``printf`` formats are the one place a ``%`` appears. Config values that reach the SQL are
validated first (currency codes are three letters, numbers exact decimals, names from a closed
list), so the literals embedded below cannot inject anything.

Numbers shown in ``value`` are formatted in SQL the same way on both databases (money with two
decimals, prices with two to four, quantities without trailing zeros), so a quarantine row reads
the same whichever warehouse wrote it. Comparisons are made in whole units of the column's scale
(ROUND(x * 10^scale)), exact on PostgreSQL and on SQLite, where Numeric values are floats.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

SEVERITIES = ("error", "warn")
# A check whose failure is normal business (a big order is not wrong) only warns unless told.
DEFAULT_SEVERITY: dict[str, str] = {"stock_plausible": "warn"}

# Prices are Numeric(18, 4), quantities Numeric(18, 3), money Numeric(18, 2).
PRICE_SCALE = 4
QTY_SCALE = 3
PCT_SCALE = 4  # discount percentages and the factor of stock_plausible

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

# address_complete: item -> (failing condition, what the value says). ``o`` is the order, ``c``
# its resolved customer (LEFT JOIN: may be all NULL).
_KNOWN_REGIONS = (
    "SELECT LOWER(TRIM(w.region)) FROM warehouses w WHERE COALESCE(TRIM(w.region), '') <> '' "
    "UNION SELECT LOWER(TRIM(k.region)) FROM customers k WHERE COALESCE(TRIM(k.region), '') <> ''"
)
_BLANK = "COALESCE(TRIM({x}), '') = ''"
ADDRESS_FIELD_SQL: dict[str, tuple[str, str]] = {
    "ship_region": (_BLANK.format(x="o.ship_region"), "'no ship region'"),
    # a missing region is ship_region's failure; this one judges the region given
    "region_known": (
        f"NOT ({_BLANK.format(x='o.ship_region')}) "
        f"AND LOWER(TRIM(o.ship_region)) NOT IN ({_KNOWN_REGIONS})",
        "'unknown region ' || o.ship_region",
    ),
    "customer_code": (
        f"{_BLANK.format(x='o.customer_code')} AND {_BLANK.format(x='c.code')}",
        "'no customer code'",
    ),
    "customer_email": (
        f"{_BLANK.format(x='o.customer_email')} AND {_BLANK.format(x='c.email')}",
        "'no customer email'",
    ),
    "contact": (
        f"{_BLANK.format(x='o.customer_code')} AND {_BLANK.format(x='c.code')} AND "
        f"{_BLANK.format(x='o.customer_email')} AND {_BLANK.format(x='c.email')}",
        "'no customer code or email'",
    ),
}
DEFAULT_ADDRESS = ("ship_region", "region_known", "contact")

# credit_limit: what counts as the customer's open exposure (see docs/checks.md)
CREDIT_ITEMS = ("receivables", "invoices", "uninvoiced", "batch")
# orders the customer is committed to that are not invoiced yet (held and quarantined are not)
UNINVOICED_STATES = ("validated", "backordered", "allocated", "pushed")

DUPLICATE_KEYS = ("content", "external_ids")
ID_FIELDS = ("external_id", "order_no")

_CURRENCY = re.compile(r"[A-Z]{3}")
_B = "{batch}"  # GE's placeholder; kept out of the f-strings below so no brace needs doubling
_FROM_BATCH = f"FROM {_B} AS b JOIN orders o ON o.id = b.id"
_DUP_KEY = "{t}.customer_id, {t}.order_date, {t}.currency, {t}.total, {t}.lines_hash"


@dataclass(frozen=True)
class CheckSpec:
    """One declared check. Options that do not apply to a check keep their defaults."""

    id: str
    severity: str = "error"
    # price_matches_list: the tolerance for currencies not named, and per currency
    tolerance: Decimal = Decimal("0")
    tolerance_by_currency: tuple[tuple[str, Decimal], ...] = ()
    allowed: tuple[str, ...] = ()  # currency_allowed
    fields: tuple[str, ...] = DEFAULT_REQUIRED  # required_fields
    address_fields: tuple[str, ...] = DEFAULT_ADDRESS  # address_complete (YAML key: fields)
    key: str = "content"  # not_duplicate: content | external_ids
    ids: tuple[str, ...] = ID_FIELDS  # not_duplicate with key external_ids
    include: tuple[str, ...] = CREDIT_ITEMS  # credit_limit
    factor: Decimal = Decimal("1")  # stock_plausible: qty > on hand x factor
    max_qty: Decimal | None = None  # stock_plausible: qty > max_qty

    @property
    def blocking(self) -> bool:
        """An ``error`` failure quarantines the order; a ``warn`` failure is only recorded."""
        return self.severity == "error"

    def sql(self, dialect: str) -> str:
        """The failing-orders query over ``{batch}``: columns order_id, value, reason."""
        return _SQL[self.id](self, dialect)

    def tolerance_for(self, currency: str | None) -> Decimal:
        return dict(self.tolerance_by_currency).get(currency or "", self.tolerance)

    def options(self) -> dict[str, Any]:
        """The check's options as JSON-safe values (for GE meta, artifacts, lineage)."""
        if self.id == "price_matches_list":
            if self.tolerance_by_currency:
                return {"tolerance": {**{c: str(t) for c, t in self.tolerance_by_currency},
                                      "default": str(self.tolerance)}}
            return {"tolerance": str(self.tolerance)}
        if self.id == "currency_allowed":
            return {"allowed": list(self.allowed)}
        if self.id == "required_fields":
            return {"fields": list(self.fields)}
        if self.id == "address_complete":
            return {"fields": list(self.address_fields)}
        if self.id == "not_duplicate":
            return {"key": self.key, **({"ids": list(self.ids)} if self.key == "external_ids"
                                        else {})}
        if self.id == "credit_limit":
            return {"include": list(self.include)}
        if self.id == "stock_plausible":
            return {"factor": str(self.factor),
                    **({"max_qty": str(self.max_qty)} if self.max_qty is not None else {})}
        return {}


@dataclass(frozen=True)
class GatePolicy:
    """orderhub.yaml ``gate:``: when a source's share of the batch is held instead of judged.

    ``hold_percent`` None: never hold (every order is judged on its own)."""

    hold_percent: Decimal | None = None
    min_batch: int = 50

    def holds(self, evaluated: int, failed: int) -> bool:
        """More than ``hold_percent`` % of at least ``min_batch`` orders failed (exact)."""
        if self.hold_percent is None or evaluated < self.min_batch or evaluated == 0:
            return False
        return failed * 100 > self.hold_percent * evaluated


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
        severity = item.get("severity", DEFAULT_SEVERITY.get(check_id, "error"))
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
                options.update(parse(item.get(key)))
            except ValueError as exc:
                raise ValueError(f"{where}: {key}: {exc}") from None
        if check_id == "not_duplicate" and options["key"] != "external_ids" and "ids" in item:
            raise ValueError(f"{where}: ids: only applies with key: external_ids")
        specs.append(CheckSpec(id=check_id, severity=severity, **options))
    return specs


def load_gate(raw: Mapping[str, Any] | None) -> GatePolicy:
    """Validate orderhub.yaml's ``gate:`` section, e.g.
    ``{hold_if_failed_over_percent: 20, min_batch: 50}``. Absent: never hold.

    Raises ``ValueError`` with one line naming the key, e.g.
    ``gate: min_batch: 0 must be a whole number of at least 1``.
    """
    if raw is None:
        return GatePolicy()
    if not isinstance(raw, Mapping):
        raise ValueError("gate: expected a mapping like {hold_if_failed_over_percent: 20, "
                         "min_batch: 50}")
    known = ("hold_if_failed_over_percent", "min_batch")
    for key in raw:
        if key not in known:
            raise ValueError(f"gate: {key}: unknown key (known: {', '.join(known)})")
    percent = raw.get("hold_if_failed_over_percent")
    if percent is not None:
        try:
            percent = _decimal(percent)
        except ValueError as exc:
            raise ValueError(f"gate: hold_if_failed_over_percent: {exc}") from None
        if percent > 100:
            raise ValueError(f"gate: hold_if_failed_over_percent: {raw[known[0]]!r} must be "
                             "a percentage from 0 to 100")
    min_batch = raw.get("min_batch", GatePolicy.min_batch)
    if isinstance(min_batch, bool) or not isinstance(min_batch, int) or min_batch < 1:
        raise ValueError(f"gate: min_batch: {min_batch!r} must be a whole number of at least 1")
    return GatePolicy(hold_percent=percent, min_batch=min_batch)


def _decimal(raw: Any, places: int = PRICE_SCALE) -> Decimal:
    """A non-negative exact decimal with at most ``places`` decimals."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float, Decimal)):
        raise ValueError(f"{raw!r} is not a decimal number")
    try:
        # str() first: YAML's unquoted 0.01 arrives as a float; its repr is the literal typed.
        value = Decimal(str(raw).strip())
    except InvalidOperation:
        raise ValueError(f"{raw!r} is not a decimal number") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"{raw!r} must be a non-negative number")
    if value != value.quantize(Decimal(1).scaleb(-places)):
        raise ValueError(f"{raw!r} has more than {places} decimals")
    return value


def _tolerance(raw: Any) -> Decimal:
    if raw is None:
        return Decimal("0")
    try:
        return _decimal(raw)
    except ValueError as exc:
        if "decimals" in str(exc):
            raise ValueError(f"{exc} (prices have {PRICE_SCALE})") from None
        raise


def _tolerances(raw: Any) -> dict[str, Any]:
    """``tolerance: "0.01"`` or ``tolerance: {CNY: "0.05", USD: "0.01", default: "0.01"}``
    (a currency not named, and a mapping without ``default``, get 0: an exact match)."""
    if not isinstance(raw, Mapping):
        return {"tolerance": _tolerance(raw)}
    if not raw:
        raise ValueError("expected a decimal or a mapping like {CNY: \"0.05\", default: \"0.01\"}")
    by_currency: list[tuple[str, Decimal]] = []
    default = Decimal("0")
    for code, value in raw.items():
        if code == "default":
            default = _tolerance(value)
            continue
        if not isinstance(code, str) or not _CURRENCY.fullmatch(code):
            raise ValueError(f"{code!r} is not a three-letter upper-case ISO currency code "
                             "or 'default'")
        try:
            by_currency.append((code, _tolerance(value)))
        except ValueError as exc:
            raise ValueError(f"{code}: {exc}") from None
    return {"tolerance": default, "tolerance_by_currency": tuple(sorted(by_currency))}


def _allowed(raw: Any) -> tuple[str, ...]:
    if raw is None:
        raise ValueError("required: the list of allowed ISO currency codes, e.g. [CNY, USD]")
    if isinstance(raw, str) or not isinstance(raw, Sequence) or not raw:
        raise ValueError("expected a non-empty list of ISO currency codes, e.g. [CNY, USD]")
    for code in raw:
        if not isinstance(code, str) or not _CURRENCY.fullmatch(code):
            raise ValueError(f"{code!r} is not a three-letter upper-case ISO currency code")
    return tuple(dict.fromkeys(raw))


def _names(raw: Any, known: Sequence[str], default: tuple[str, ...], what: str) -> tuple[str, ...]:
    """A non-empty list drawn from ``known`` (duplicates dropped), or ``default`` when absent."""
    if raw is None:
        return default
    if isinstance(raw, str) or not isinstance(raw, Sequence) or not raw:
        raise ValueError(f"expected a non-empty list of: {', '.join(known)}")
    for name in raw:
        if name not in known:
            raise ValueError(f"{name!r} is not a known {what} ({', '.join(known)})")
    return tuple(dict.fromkeys(raw))


def _fields(raw: Any) -> tuple[str, ...]:
    return _names(raw, tuple(REQUIRED_FIELD_SQL), DEFAULT_REQUIRED, "field")


def _choice(raw: Any, known: Sequence[str], default: str) -> str:
    if raw is None:
        return default
    if raw not in known:
        raise ValueError(f"{raw!r} is not one of {', '.join(known)}")
    return str(raw)


def _positive(raw: Any, places: int) -> Decimal:
    value = _decimal(raw, places)
    if value == 0:
        raise ValueError(f"{raw!r} must be above 0")
    return value


def _max_qty(raw: Any) -> Decimal | None:
    return None if raw is None else _positive(raw, QTY_SCALE)


def _factor(raw: Any) -> Decimal:
    return Decimal("1") if raw is None else _positive(raw, PCT_SCALE)


def _as(name: str, parse: Callable[[Any], Any]) -> Callable[[Any], dict[str, Any]]:
    """A parser for one YAML key that sets the spec field ``name``."""
    return lambda raw: {name: parse(raw)}


# --- SQL helpers -------------------------------------------------------------------------------


def _agg(expr: str, dialect: str) -> str:
    """All offending line values of one order, joined with '; ' (one row per order)."""
    if dialect == "postgresql":
        return f"STRING_AGG({expr}, '; ' ORDER BY {expr})"
    if dialect == "sqlite":
        return f"GROUP_CONCAT({expr}, '; ')"
    return f"MIN({expr})"  # other dialects: the first offending value is still a useful hint


def _text(expr: str) -> str:
    return f"COALESCE(CAST({expr} AS TEXT), 'null')"


def _fixed(expr: str, places: int, dialect: str) -> str:
    """``expr`` as text with exactly ``places`` decimals, the same on both databases."""
    if dialect == "postgresql":
        return f"CAST(ROUND(CAST({expr} AS NUMERIC), {places}) AS TEXT)"
    if dialect == "sqlite":
        return f"PRINTF('%.{places}f', {expr})"
    return f"CAST({expr} AS TEXT)"


def _money(expr: str, dialect: str) -> str:
    return _fixed(expr, 2, dialect)


def _price(expr: str, dialect: str) -> str:
    """A price with two to four decimals: 10.00, 9.025, 9.4905."""
    t = _fixed(expr, PRICE_SCALE, dialect)
    return (f"CASE WHEN SUBSTR({t}, LENGTH({t}) - 1) = '00' THEN SUBSTR({t}, 1, LENGTH({t}) - 2) "
            f"WHEN SUBSTR({t}, LENGTH({t})) = '0' THEN SUBSTR({t}, 1, LENGTH({t}) - 1) "
            f"ELSE {t} END")


def _plain(expr: str, places: int, dialect: str) -> str:
    """A number without trailing zeros: 500, 2.5 (quantities, percentages)."""
    return f"RTRIM(RTRIM({_fixed(expr, places, dialect)}, '0'), '.')"


def _percent_sign(dialect: str) -> str:
    # Why not a literal: psycopg reads a % in the statement text as a parameter marker.
    return "CHR(37)" if dialect == "postgresql" else "CHAR(37)"


def _units(expr: str, scale: int) -> str:
    """``expr`` in whole 1/10^scale units: exact comparisons even over SQLite's floats."""
    return f"ROUND({expr} * {10**scale})"


def _plain_decimal(value: Decimal) -> str:
    """A config decimal as people write it: 10, 1.5 (never 1E+1)."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


# --- SQL per check -----------------------------------------------------------------------------


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
    """Each line's unit price against the applicable price: the most specific active price
    rule for (sku, currency, customer group, order date) - group-specific beats general, then the
    latest valid_from, then the rule loaded last - less its discount; else the list price.

    With no price rule the applicable price is the list price: exactly the check as it was."""
    # Tolerance in 1/10000 units per order currency (codes validated: [A-Z]{3}).
    whens = " ".join(f"WHEN '{c}' THEN {int(t.scaleb(PRICE_SCALE))}"
                     for c, t in spec.tolerance_by_currency)
    tol_units = (f"CASE o.currency {whens} ELSE {int(spec.tolerance.scaleb(PRICE_SCALE))} END"
                 if whens else str(int(spec.tolerance.scaleb(PRICE_SCALE))))
    tol_whens = " ".join(f"WHEN '{c}' THEN '{t}'" for c, t in spec.tolerance_by_currency)
    tol_text = (f"CASE x.currency {tol_whens} ELSE '{spec.tolerance}' END"
                if tol_whens else f"'{spec.tolerance}'")
    # applicable = round4(base x (100 - discount) / 100), in whole 1/10000 units, computed from
    # integer units so SQLite's float arithmetic cannot move a boundary
    base = "COALESCE(r.price, p.price)"
    discount_units = _units("COALESCE(r.discount_pct, 0)", PCT_SCALE)
    applicable = (f"ROUND({_units(base, PRICE_SCALE)} * (1000000 - {discount_units}) "
                  "/ 1000000.0)")
    pct = _percent_sign(dialect)
    rule_text = (
        "'rule ' || x.rule_id || ', ' || COALESCE('group ' || x.customer_group, 'all customers') "
        "|| COALESCE(', from ' || CAST(x.valid_from AS TEXT), '') "
        "|| COALESCE(', to ' || CAST(x.valid_to AS TEXT), '') || ', ' "
        f"|| CASE WHEN x.rule_price IS NULL THEN 'list ' || {_price('x.list_price', dialect)} "
        f"ELSE 'price ' || {_price('x.rule_price', dialect)} END "
        "|| CASE WHEN COALESCE(x.discount_pct, 0) <> 0 THEN ' less ' || "
        f"{_plain('x.discount_pct', PCT_SCALE, dialect)} || {pct} ELSE '' END"
    )
    value = (
        f"'line ' || CAST(x.line_no AS TEXT) || ' ' || x.sku || ' ' || "
        f"{_price('x.unit_price', dialect)} || ' vs ' || "
        f"CASE WHEN x.rule_id IS NULL THEN 'list ' || {_price('x.list_price', dialect)} "
        f"ELSE {_price('x.applicable / 10000.0', dialect)} || ' (' || {rule_text} || ')' END"
    )
    columns = (
        "SELECT o.id AS order_id, o.currency, l.line_no, l.sku, l.unit_price, "
        "p.price AS list_price, r.external_id AS rule_id, r.customer_group, r.valid_from, "
        f"r.valid_to, r.price AS rule_price, r.discount_pct, {applicable} AS applicable, "
        f"{tol_units} AS tol_units"
    )
    joins = (
        f"{_FROM_BATCH} "
        "JOIN order_lines l ON l.order_id = o.id "
        "LEFT JOIN prices p ON p.sku = l.sku AND p.currency = o.currency "
    )
    # the price's presence is judged after the rule is chosen: the most specific one decides
    priced = "WHERE l.unit_price IS NOT NULL AND l.sku IS NOT NULL"
    rank = ("CASE WHEN {r}.customer_group IS NULL THEN 1 ELSE 0 END, "
            "CASE WHEN {r}.valid_from IS NULL THEN 1 ELSE 0 END, {r}.valid_from DESC, {r}.id DESC")
    if dialect == "postgresql":
        # One row per (line, active rule), ranked in place: a line without a rule keeps its one
        # row (r NULL). PostgreSQL hashes the joins and sorts once.
        lines = (
            f"{columns}, ROW_NUMBER() OVER (PARTITION BY l.id ORDER BY {rank.format(r='r')}) "
            f"AS rn {joins}"
            "LEFT JOIN customers c ON c.id = o.customer_id "
            "LEFT JOIN price_rules r ON r.sku = l.sku AND r.currency = o.currency "
            "AND (r.customer_group IS NULL OR r.customer_group = c.customer_group) "
            "AND (r.valid_from IS NULL OR r.valid_from <= o.order_date) "
            "AND (r.valid_to IS NULL OR o.order_date <= r.valid_to) "
            f"{priced}"
        )
        first = "x.rn = 1 AND "
    else:
        # SQLite: the line's rule is the first active one in that order, found by the (sku,
        # currency) index for each line - and only when there is a price rule at all (an
        # uncorrelated EXISTS, run once), so the usual batch without rules costs one price
        # lookup per line, and the customer (its group) is read only when there are rules.
        # Ranking (line, rule) rows with ROW_NUMBER() instead sorts every line of the batch
        # with all these columns (most of the check's time), and a ranked subquery joined
        # back is nest-looped (batch x batch). The same rule is chosen: same order, and the
        # rule's id breaks every tie.
        group = "(SELECT c.customer_group FROM customers c WHERE c.id = o.customer_id)"
        rule = (
            "SELECT r1.id FROM price_rules r1 WHERE r1.sku = l.sku AND r1.currency = o.currency "
            f"AND (r1.customer_group IS NULL OR r1.customer_group = {group}) "
            "AND (r1.valid_from IS NULL OR r1.valid_from <= o.order_date) "
            "AND (r1.valid_to IS NULL OR o.order_date <= r1.valid_to) "
            f"ORDER BY {rank.format(r='r1')} LIMIT 1"
        )
        lines = (
            f"{columns} {joins}"
            "LEFT JOIN price_rules r ON r.id = "
            f"CASE WHEN EXISTS (SELECT 1 FROM price_rules r0) THEN ({rule}) END "
            f"{priced}"
        )
        first = ""
    return (
        f"SELECT x.order_id, {_agg(value, dialect)} AS value, "
        "'unit price differs from the applicable price by more than ' || "
        f"MIN({tol_text} || ' ' || COALESCE(x.currency, '')) AS reason "
        f"FROM ({lines}) x "
        f"WHERE {first}x.applicable IS NOT NULL "
        f"AND ABS({_units('x.unit_price', PRICE_SCALE)} - x.applicable) > x.tol_units "
        "GROUP BY x.order_id"
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


def _address_complete(spec: CheckSpec, dialect: str) -> str:
    items = [ADDRESS_FIELD_SQL[f] for f in spec.address_fields]
    found = " || ".join(f"CASE WHEN {cond} THEN '; ' || {text} ELSE '' END"
                        for cond, text in items)
    return (
        "SELECT x.order_id, SUBSTR(x.found, 3) AS value, "
        "'address or customer contact incomplete' AS reason "
        f"FROM (SELECT o.id AS order_id, {found} AS found "
        f"{_FROM_BATCH} "
        "LEFT JOIN customers c ON c.id = o.customer_id) x "
        "WHERE x.found <> ''"
    )


def _stock_plausible(spec: CheckSpec, dialect: str) -> str:
    """A line asking for more than the sku's on-hand stock over all warehouses x factor, or
    more than max_qty. Lines qty_positive or sku_known fail are theirs, not this check's."""
    factor_units = int(spec.factor.scaleb(PCT_SCALE))
    qty = _units("l.qty", QTY_SCALE)
    on_hand = _units("COALESCE(s.on_hand, 0)", QTY_SCALE)
    over_stock = f"{qty} * {10**PCT_SCALE} > {on_hand} * {factor_units}"
    factor_text = "" if spec.factor == 1 else f" x {_plain_decimal(spec.factor)}"
    over_max, max_text = "0 = 1", "''"
    if spec.max_qty is not None:
        over_max = f"{qty} > {int(spec.max_qty.scaleb(QTY_SCALE))}"
        max_text = f"'max {_plain_decimal(spec.max_qty)}'"
    value = (
        f"'line ' || CAST(l.line_no AS TEXT) || ' ' || l.sku || ' qty ' || "
        f"{_plain('l.qty', QTY_SCALE, dialect)} || ' > ' || "
        f"CASE WHEN {over_max} THEN {max_text} ELSE 'on hand ' || "
        f"{_plain('COALESCE(s.on_hand, 0)', QTY_SCALE, dialect)} || '{factor_text}' END"
    )
    reason = f"quantity above the on-hand stock of all warehouses{factor_text}"
    if spec.max_qty is not None:
        reason += f" or above {_plain_decimal(spec.max_qty)}"
    return (
        f"SELECT o.id AS order_id, {_agg(value, dialect)} AS value, '{reason}' AS reason "
        f"{_FROM_BATCH} "
        "JOIN order_lines l ON l.order_id = o.id "
        "JOIN products pr ON pr.sku = l.sku "
        "LEFT JOIN (SELECT st.sku, SUM(st.on_hand) AS on_hand FROM stock st GROUP BY st.sku) s "
        "ON s.sku = l.sku "
        f"WHERE l.qty > 0 AND ({over_stock} OR {over_max}) "
        "GROUP BY o.id"
    )


def _credit_limit(spec: CheckSpec, dialect: str) -> str:
    """The customer's open exposure plus this order's total against customers.credit_limit.

    Exposure, in the limit's currency (customers.currency; the order's when not set); each
    item counted once (docs/checks.md):
    - receivables: open ERP/CRM items (open_amount, else amount) by customer code, except those
      mirroring one of our invoices (same invoice_no, or same order_ref and customer code);
    - invoices: our invoices' outstanding from reconciliation (the invoiced amount until a
      reconcile has run);
    - uninvoiced: the customer's validated / backordered / allocated / pushed orders without an
      invoice (and without an ERP receivable quoting their order number);
    - batch: the customer's earlier orders (by ordered_at, id) of this very batch.
    Skipped: no customer, no limit, no total, or the order in another currency than the limit.

    One pass, no join on an aggregate: the batch's orders and every exposure item of their
    customers are one stream (kind 0 = a batch order, 1..3 = the items), summed per
    (customer, currency) by window functions - a running sum for the earlier batch orders.
    Why: SQLite nest-loops joins onto aggregate or window subqueries when it decides not to
    index them, which at 50 k orders took minutes; windows sort once on either database.
    """
    inc = set(spec.include)
    in_batch = f"IN (SELECT o3.customer_id FROM {_B} AS b3 JOIN orders o3 ON o3.id = b3.id)"
    items = [
        "SELECT o.customer_id, o.currency, 0 AS kind, o.id AS order_id, o.total AS amount, "
        "CASE WHEN o.ordered_at IS NULL THEN 1 ELSE 0 END AS undated, o.ordered_at "
        f"{_FROM_BATCH} WHERE o.customer_id IS NOT NULL AND o.total IS NOT NULL"
    ]
    parts: list[tuple[str, str]] = []  # (window column, label)
    if "receivables" in inc:
        # uncorrelated IN lists (an index built once), not a lookup per row
        mirror = (" AND NOT EXISTS (SELECT 1 FROM invoices i3 WHERE i3.invoice_no = r.invoice_no)"
                  " AND NOT (r.order_ref IS NOT NULL AND (r.order_ref, r.customer_code) IN "
                  "(SELECT i5.order_ref, i5.customer_code FROM invoices i5 "
                  "WHERE i5.order_ref IS NOT NULL AND i5.customer_code IS NOT NULL))"
                  if "invoices" in inc else "")
        # filtered by the receivable's own code: "c3.id IN (...)" next to "c3.code = ..." made
        # SQLite walk the whole IN list for every receivable
        codes = (f"SELECT c5.code FROM {_B} AS b5 JOIN orders o5 ON o5.id = b5.id "
                 "JOIN customers c5 ON c5.id = o5.customer_id")
        items.append(
            "SELECT c3.id, r.currency, 1, NULL, COALESCE(r.open_amount, r.amount), 0, NULL "
            "FROM receivables r JOIN customers c3 ON c3.code = r.customer_code "
            f"WHERE r.customer_code IN ({codes}) AND COALESCE(r.open_amount, r.amount) > 0"
            f"{mirror}")
        parts.append(("p1", "ERP receivables"))
    if "invoices" in inc:
        items.append(
            "SELECT io.customer_id, i.currency, 2, NULL, COALESCE(rc.outstanding, i.amount), 0, "
            "NULL FROM invoices i JOIN orders io ON io.id = i.order_id "
            "LEFT JOIN reconciliation rc ON rc.invoice_id = i.id "
            f"WHERE io.customer_id {in_batch}")
        parts.append(("p2", "our invoices"))
    if "uninvoiced" in inc:
        states = ", ".join(f"'{st}'" for st in UNINVOICED_STATES)
        quoted = (" AND NOT (u.order_no IS NOT NULL AND (u.order_no, u.customer_id) IN "
                  "(SELECT r4.order_ref, c4.id FROM receivables r4 JOIN customers c4 "
                  "ON c4.code = r4.customer_code WHERE r4.order_ref IS NOT NULL))"
                  if "receivables" in inc else "")
        items.append(
            "SELECT u.customer_id, u.currency, 3, NULL, u.total, 0, NULL FROM orders u "
            f"WHERE u.status IN ({states}) AND u.total IS NOT NULL "
            f"AND u.customer_id {in_batch} "
            f"AND NOT EXISTS (SELECT 1 FROM invoices i4 WHERE i4.order_id = u.id){quoted}")
        parts.append(("p3", "uninvoiced orders"))
    if "batch" in inc:
        parts.append(("p0", "earlier orders in this batch"))
    sums = "".join(
        f", SUM(CASE WHEN t.kind = {k} THEN t.amount ELSE 0 END) OVER p AS p{k}"
        for k in (1, 2, 3)
    )
    windows = (
        "SELECT t.customer_id, t.currency, t.kind, t.order_id, t.amount" + sums + ", "
        # kind 0 sorts first: the rows before a batch order are its earlier batch orders
        "SUM(CASE WHEN t.kind = 0 THEN t.amount ELSE 0 END) OVER (PARTITION BY t.customer_id, "
        "t.currency ORDER BY t.kind, t.undated, t.ordered_at, t.order_id "
        "ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS p0 "
        f"FROM ({' UNION ALL '.join(items)}) t "
        "WINDOW p AS (PARTITION BY t.customer_id, t.currency)"
    )
    columns = "".join(f", COALESCE(y.{col}, 0) AS {col}" for col, _ in parts)
    inner = (
        "SELECT y.order_id, y.amount AS total, y.currency, c.credit_limit" + columns + " "
        f"FROM ({windows}) y JOIN customers c ON c.id = y.customer_id "
        "WHERE y.kind = 0 AND c.credit_limit IS NOT NULL "
        "AND y.currency = COALESCE(NULLIF(TRIM(c.currency), ''), y.currency)"
    )
    open_total = " + ".join(f"x.{col}" for col, _ in parts) or "0"
    breakdown = " || ' + ' || ".join(
        f"'{label} ' || {_money(f'x.{col}', dialect)}" for col, label in parts
    ) or "'nothing open'"
    return (
        "SELECT x.order_id, "
        f"'open ' || {_money(f'({open_total})', dialect)} || ' + order ' || "
        f"{_money('x.total', dialect)} || ' > limit ' || {_money('x.credit_limit', dialect)} "
        "|| ' ' || x.currency AS value, "
        f"'credit limit exceeded; open = ' || {breakdown} AS reason "
        f"FROM ({inner}) x "
        f"WHERE {_units(f'({open_total})', 2)} + {_units('x.total', 2)} "
        f"> {_units('x.credit_limit', 2)}"
    )


def _not_duplicate(spec: CheckSpec, dialect: str) -> str:
    if spec.key == "external_ids":
        return _duplicate_by_ids(spec, dialect)
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


def _duplicate_by_ids(spec: CheckSpec, dialect: str) -> str:
    """Orders of *another* source carrying one of this order's ids (``ids``: external_id and/or
    order_no, compared across both columns: a marketplace order number may be one channel's
    external id and another's order number). The original is the first-ranked order (gated
    first, then by ordered_at, then id) of another source with that id; a batch order ranked
    after its original is the duplicate.

    Set-based in O(n log n) on both databases: candidate ids are those IN the batch's ids (an
    ephemeral index on SQLite), then per id the candidates are ranked once (pos) and two
    originals are known: the first-ranked order, and the first-ranked order of a source other
    than the first's. An order's original is the first unless it is of the first's source.
    Why no self-join: the ids are expressions (TRIM), which SQLite cannot index on the fly, so
    a join would scan every order for every batch order."""
    batch_xids = " UNION ".join(
        f"SELECT TRIM(o.{f}) {_FROM_BATCH} WHERE COALESCE(TRIM(o.{f}), '') <> ''"
        for f in spec.ids
    )
    # Orders held as duplicates (quarantine open or rejected) are never originals; a captured
    # order is judged whatever its old quarantine rows say.
    candidates = " UNION ".join(
        "SELECT e.id AS order_id, e.source, "
        "CASE WHEN e.status = 'captured' THEN 1 ELSE 0 END AS pending, "
        "CASE WHEN e.ordered_at IS NULL THEN 1 ELSE 0 END AS undated, e.ordered_at, "
        f"TRIM(e.{f}) AS xid FROM orders e "
        f"WHERE TRIM(e.{f}) IN ({batch_xids}) AND e.status <> 'rejected' "
        "AND (e.status = 'captured' OR NOT EXISTS (SELECT 1 FROM quarantine q "
        "WHERE q.order_id = e.id AND q.check_id = 'not_duplicate' "
        "AND q.status IN ('open', 'rejected')))"
        for f in spec.ids
    )
    ranked = (
        "SELECT a.order_id, a.source, a.xid, ROW_NUMBER() OVER w AS pos, "
        "FIRST_VALUE(a.order_id) OVER w AS first_id, FIRST_VALUE(a.source) OVER w AS first_source "
        f"FROM ({candidates}) a "
        "WINDOW w AS (PARTITION BY a.xid ORDER BY a.pending, a.undated, a.ordered_at, a.order_id)"
    )
    other = "c.source <> c.first_source"
    originals = (
        "SELECT c.order_id, c.xid, c.pos, "
        f"CASE WHEN {other} THEN c.first_id ELSE FIRST_VALUE(CASE WHEN {other} "
        "THEN c.order_id END) OVER v END AS orig_id, "
        f"CASE WHEN {other} THEN 1 ELSE FIRST_VALUE(CASE WHEN {other} THEN c.pos END) OVER v "
        "END AS orig_pos "
        f"FROM ({ranked}) c "
        f"WINDOW v AS (PARTITION BY c.xid ORDER BY CASE WHEN {other} THEN 0 ELSE 1 END, c.pos)"
    )
    # one row per batch order: with two ids pointing at two originals, the one captured first
    return (
        "SELECT g.order_id, f.source || ' ' || COALESCE(f.order_no, f.external_id) AS value, "
        "'external id ' || g.xid || ' also on an earlier order from another source' AS reason "
        "FROM (SELECT h.order_id, h.xid, h.orig_id, "
        "ROW_NUMBER() OVER (PARTITION BY h.order_id ORDER BY h.orig_id, h.xid) AS rn "
        f"FROM ({originals}) h WHERE h.orig_id IS NOT NULL AND h.orig_pos < h.pos) g "
        f"JOIN {_B} AS b ON b.id = g.order_id "
        "JOIN orders f ON f.id = g.orig_id "
        "WHERE g.rn = 1"
    )


_SQL: dict[str, Callable[[CheckSpec, str], str]] = {
    "customer_known": _customer_known,
    "price_matches_list": _price_matches_list,
    "qty_positive": _qty_positive,
    "sku_known": _sku_known,
    "currency_allowed": _currency_allowed,
    "required_fields": _required_fields,
    "not_duplicate": _not_duplicate,
    "credit_limit": _credit_limit,
    "stock_plausible": _stock_plausible,
    "address_complete": _address_complete,
}

# check id -> its YAML options and their parsers; each parser returns the spec fields it sets
_OPTIONS: dict[str, dict[str, Callable[[Any], dict[str, Any]]]] = {
    "customer_known": {},
    "price_matches_list": {"tolerance": _tolerances},
    "qty_positive": {},
    "sku_known": {},
    "currency_allowed": {"allowed": _as("allowed", _allowed)},
    "required_fields": {"fields": _as("fields", _fields)},
    "not_duplicate": {
        "key": _as("key", lambda raw: _choice(raw, DUPLICATE_KEYS, "content")),
        "ids": _as("ids", lambda raw: _names(raw, ID_FIELDS, ID_FIELDS, "id field")),
    },
    "credit_limit": {
        "include": _as("include", lambda raw: _names(raw, CREDIT_ITEMS, CREDIT_ITEMS, "item")),
    },
    "stock_plausible": {
        "factor": _as("factor", _factor),
        "max_qty": _as("max_qty", _max_qty),
    },
    "address_complete": {
        "fields": _as("address_fields",
                      lambda raw: _names(raw, tuple(ADDRESS_FIELD_SQL), DEFAULT_ADDRESS, "field")),
    },
}

CHECK_IDS = tuple(_SQL)
