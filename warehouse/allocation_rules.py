"""Allocation rules: declared as data in orderhub.yaml, evaluated by a pure function (no I/O).

A rule is a small mapping, tried in order; the first rule that can fill the *whole* line wins:

    - {id: home_region, warehouse_in: customer_region, require_stock: true}
    - {id: any_stock, require_stock: true}
    - {id: backorder}

Keys:
- ``id`` (required): the name recorded on the allocation row (``allocations.rule_id``).
- ``require_stock`` (bool, default false): pick a warehouse whose available stock covers the line
  (most available first, then warehouse code). A rule without it is a catch-all backorder: the
  line is recorded with no warehouse, to be re-allocated when stock arrives.
- ``warehouse_in`` (needs ``require_stock``): restrict the candidate warehouses.
  ``customer_region`` = warehouses in the order's ship_region, else the customer's own region.

The behaviour comes from the keys, not the id, so a data engineer can rename or reorder rules
without touching code; ``validate_rules`` turns a wrong key into an error naming the rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

ALLOWED_KEYS = ("id", "require_stock", "warehouse_in")
WAREHOUSE_IN_VALUES = ("customer_region",)


class RuleConfigError(ValueError):
    """A malformed ``allocation.rules`` list; the message names the rule and the key."""


@dataclass(frozen=True)
class Rule:
    id: str
    require_stock: bool = False
    warehouse_in: str | None = None


@dataclass(frozen=True)
class LineNeed:
    """What one order line needs, plus the order facts the rules may look at."""

    sku: str
    qty: Decimal
    ship_region: str | None = None
    customer_region: str | None = None


@dataclass(frozen=True)
class Decision:
    rule_id: str
    warehouse: str | None  # None: backordered
    qty: Decimal
    inputs: dict[str, Any] = field(default_factory=dict)  # JSON-able: why this rule, this warehouse

    @property
    def backordered(self) -> bool:
        return self.warehouse is None


def validate_rules(rules: Any, where: str = "allocation.rules") -> list[Rule]:
    """Parse and check a rules list; raise RuleConfigError naming the bad rule and key."""
    if not isinstance(rules, Sequence) or isinstance(rules, str | bytes) or not rules:
        raise RuleConfigError(f"{where}: expected a non-empty list of rules")
    parsed: list[Rule] = []
    catch_all: str | None = None
    for i, raw in enumerate(rules):
        at = f"{where}[{i}]"
        if not isinstance(raw, Mapping):
            raise RuleConfigError(f"{at}: expected a mapping like {{id: ..., ...}}, got {raw!r}")
        rid = raw.get("id")
        if not isinstance(rid, str) or not rid.strip():
            raise RuleConfigError(f"{at}: 'id' is required and must be a non-empty string")
        at = f"{at} ({rid})"
        unknown = sorted(set(raw) - set(ALLOWED_KEYS))
        if unknown:
            raise RuleConfigError(
                f"{at}: unknown key {unknown[0]!r} (allowed: {', '.join(ALLOWED_KEYS)})"
            )
        if any(r.id == rid for r in parsed):
            raise RuleConfigError(f"{at}: duplicate rule id {rid!r}")
        require_stock = raw.get("require_stock", False)
        if not isinstance(require_stock, bool):
            raise RuleConfigError(f"{at}: 'require_stock' must be true or false")
        warehouse_in = raw.get("warehouse_in")
        if warehouse_in is not None:
            if warehouse_in not in WAREHOUSE_IN_VALUES:
                raise RuleConfigError(
                    f"{at}: 'warehouse_in' must be one of {', '.join(WAREHOUSE_IN_VALUES)}, "
                    f"got {warehouse_in!r}"
                )
            if not require_stock:
                raise RuleConfigError(f"{at}: 'warehouse_in' needs 'require_stock: true'")
        if catch_all is not None:
            # a rule after a catch-all backorder would never be chosen: surely a config mistake
            raise RuleConfigError(
                f"{at}: unreachable, rule {catch_all!r} before it takes every line"
            )
        if not require_stock:
            catch_all = rid
        parsed.append(Rule(id=rid, require_stock=require_stock, warehouse_in=warehouse_in))
    return parsed


def _target_region(line: LineNeed) -> tuple[str | None, str | None]:
    """The region home_region-style rules look in, and where it came from."""
    if line.ship_region:
        return line.ship_region, "ship_region"
    if line.customer_region:
        return line.customer_region, "customer_region"
    return None, None


def choose(
    line: LineNeed,
    stock: Mapping[str, Decimal],
    warehouse_regions: Mapping[str, str | None],
    rules: Sequence[Rule],
) -> Decision | None:
    """The first rule that can fill the whole line, or None when no rule can.

    ``stock`` is warehouse -> available quantity for this line's sku (already net of what
    earlier lines took). The caller subtracts the decision's qty before the next line.
    """
    skipped: list[str] = []
    for rule in rules:
        inputs: dict[str, Any] = {"qty": str(line.qty)}
        if not rule.require_stock:
            inputs["available"] = {w: str(q) for w, q in sorted(stock.items())}
            if skipped:
                inputs["skipped"] = skipped
            return Decision(rule.id, None, line.qty, inputs)
        candidates = dict(stock)
        if rule.warehouse_in == "customer_region":
            region, region_from = _target_region(line)
            inputs["region"] = region
            inputs["region_from"] = region_from
            candidates = {
                w: q
                for w, q in candidates.items()
                if region is not None and warehouse_regions.get(w) == region
            }
        inputs["candidates"] = {w: str(q) for w, q in sorted(candidates.items())}
        fitting = [(w, q) for w, q in candidates.items() if q >= line.qty]
        if fitting:
            # most available first (keeps small warehouses for small lines), then code: stable
            warehouse, _ = min(fitting, key=lambda wq: (-wq[1], wq[0]))
            if skipped:
                inputs["skipped"] = skipped
            return Decision(rule.id, warehouse, line.qty, inputs)
        skipped.append(rule.id)
    return None
