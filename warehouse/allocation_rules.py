"""Allocation rules: declared as data in orderhub.yaml, evaluated by pure functions (no I/O).

The ``allocation:`` section (docs/allocation.md has every key with examples)::

    allocation:
      rules:                 # tried in order for each line; the first that places it wins
        - {id: home_region, warehouse_in: customer_region, require_stock: true}
        - {id: any_stock, require_stock: true}
        - {id: split, split: true, max_warehouses: 2}
        - {id: partial, partial: true}
        - {id: backorder}
      priority:              # who gets scarce stock first (ties: oldest ordered_at, then id)
        - {by: customer_group, order: [vip, wholesale, retail]}
        - {by: ordered_at}
      owners: {...}          # warehouse/owners.py

What a rule does comes from its keys, never from its id, so a data engineer can rename, reorder
or drop rules without touching code:

- no stock key: a catch-all backorder (the whole line waits for stock);
- ``require_stock: true``: one warehouse that holds the whole line (most available first);
- ``split: true``: the whole line from up to ``max_warehouses`` (default 2) warehouses: the
  fewest that can, home-region warehouses first, then the most stock;
- ``partial: true``: what the warehouses hold (home region first, then the fullest); the rest
  goes back through the rules and, when no warehouse has any, waits (allocated + backordered rows);
- ``warehouse_in: customer_region`` (any stock rule): only warehouses in the order's ship_region
  (else the customer's region).

A line is decided in steps until it is filled or must wait (``decide``): what a partial rule
leaves goes back through the rules at once, so a later run with the same (or less) stock decides
nothing new; only stock that arrives changes a waiting line. Every step carries its inputs
(JSON-able): the quantity, the candidates and the stock seen, and why each earlier rule did not
fire.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from warehouse.owners import OwnerConfigError, OwnersConfig, parse_owners

SECTION_KEYS = ("rules", "priority", "owners")
ALLOWED_KEYS = ("id", "require_stock", "warehouse_in", "split", "partial", "max_warehouses")
WAREHOUSE_IN_VALUES = ("customer_region",)
PRIORITY_BY = ("customer_group", "source", "ship_region", "ordered_at")
DEFAULT_RULES: tuple[dict[str, Any], ...] = ({"id": "backorder"},)  # as flows/config.py
DEFAULT_SPLIT_WAREHOUSES = 2
_LAST = datetime.max.replace(tzinfo=UTC)
_ZERO = Decimal(0)


class RuleConfigError(ValueError):
    """A malformed ``allocation`` section; the message is one line naming ``allocation.<path>``."""


# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    id: str
    require_stock: bool = False
    warehouse_in: str | None = None
    split: bool = False
    partial: bool = False
    max_warehouses: int = 1
    # backorder | whole | split | partial: what the keys ask for (set once: read for every line)
    kind: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        kind = ("partial" if self.partial else "split" if self.split
                else "whole" if self.require_stock else "backorder")
        object.__setattr__(self, "kind", kind)


@dataclass(frozen=True)
class PriorityKey:
    by: str  # one of PRIORITY_BY
    order: tuple[str, ...] = ()  # listed values first, in this order; anything else after


@dataclass(frozen=True)
class AllocationConfig:
    rules: tuple[Rule, ...]
    priority: tuple[PriorityKey, ...] = ()
    owners: OwnersConfig | None = None  # None: no owner assignment

    @classmethod
    def from_config(cls, section: Any, where: str = "allocation") -> AllocationConfig:
        """Parse orderhub.yaml's ``allocation`` mapping (None or {} = backorder every line).

        A bare list is taken as the rules alone (what ``allocate()`` was always given)."""
        if isinstance(section, AllocationConfig):
            return section
        if section is None:
            section = {}
        if isinstance(section, Sequence) and not isinstance(section, str | bytes):
            section = {"rules": section}
        if not isinstance(section, Mapping):
            raise RuleConfigError(f"{where}: expected a mapping with {', '.join(SECTION_KEYS)}")
        unknown = sorted(set(section) - set(SECTION_KEYS))
        if unknown:
            raise RuleConfigError(
                f"{where}.{unknown[0]}: unknown key (allowed: {', '.join(SECTION_KEYS)})")
        rules = section.get("rules")
        try:
            owners = parse_owners(section.get("owners"), f"{where}.owners")
        except OwnerConfigError as exc:
            raise RuleConfigError(str(exc)) from None
        return cls(
            rules=tuple(validate_rules(DEFAULT_RULES if rules is None else rules, f"{where}.rules")),
            priority=tuple(validate_priority(section.get("priority"), f"{where}.priority")),
            owners=owners,
        )


def validate_rules(rules: Any, where: str = "allocation.rules") -> list[Rule]:
    """Parse and check a rules list; raise RuleConfigError naming the bad rule and key."""
    if not isinstance(rules, Sequence) or isinstance(rules, str | bytes) or not rules:
        raise RuleConfigError(f"{where}: expected a non-empty list of rules")
    parsed: list[Rule] = []
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
        rule = _parse_rule(raw, rid, at)
        for earlier in parsed:
            if _covers(earlier, rule):
                # a rule that can never be chosen is surely a config mistake
                what = "takes every line" if earlier.kind == "backorder" else (
                    "places every line this one could")
                raise RuleConfigError(f"{at}: unreachable, rule {earlier.id!r} before it {what}")
        parsed.append(rule)
    return parsed


def _flag(raw: Mapping[str, Any], key: str, at: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise RuleConfigError(f"{at}: '{key}' must be true or false")
    return value


def _parse_rule(raw: Mapping[str, Any], rid: str, at: str) -> Rule:
    require_stock = _flag(raw, "require_stock", at)
    split = _flag(raw, "split", at)
    partial = _flag(raw, "partial", at)
    if split and partial:
        raise RuleConfigError(f"{at}: 'split' and 'partial' exclude each other (a partial rule "
                              "already takes from as many warehouses as have stock)")
    if partial and require_stock:
        raise RuleConfigError(f"{at}: 'partial' places what there is: drop 'require_stock'")
    if split and raw.get("require_stock") is False:
        raise RuleConfigError(f"{at}: 'split' fills the whole line from stock: "
                              "drop 'require_stock: false'")
    max_wh = 1
    if "max_warehouses" in raw:
        if not split:
            raise RuleConfigError(f"{at}: 'max_warehouses' needs 'split: true'")
        max_wh = raw["max_warehouses"]
        if isinstance(max_wh, bool) or not isinstance(max_wh, int) or max_wh < 2:
            raise RuleConfigError(f"{at}: 'max_warehouses' must be a whole number >= 2")
    elif split:
        max_wh = DEFAULT_SPLIT_WAREHOUSES
    warehouse_in = raw.get("warehouse_in")
    if warehouse_in is not None:
        if warehouse_in not in WAREHOUSE_IN_VALUES:
            raise RuleConfigError(
                f"{at}: 'warehouse_in' must be one of {', '.join(WAREHOUSE_IN_VALUES)}, "
                f"got {warehouse_in!r}"
            )
        if not (require_stock or split or partial):
            raise RuleConfigError(
                f"{at}: 'warehouse_in' needs 'require_stock: true' (or split / partial)")
    return Rule(id=rid, require_stock=require_stock or split, warehouse_in=warehouse_in,
                split=split, partial=partial, max_warehouses=max_wh)


def _covers(earlier: Rule, later: Rule) -> bool:
    """True when ``earlier`` always fires whenever ``later`` could (so ``later`` never does)."""
    if earlier.kind == "backorder":
        return True
    if later.kind == "backorder":
        return False
    wider = earlier.warehouse_in is None or earlier.warehouse_in == later.warehouse_in
    if not wider:
        return False
    if earlier.kind == "partial":
        return True  # any stock in scope makes a partial fire; every stock rule needs some
    if earlier.kind == "split":  # the fewest warehouses: one, when one warehouse can
        return later.kind == "whole" or (
            later.kind == "split" and later.max_warehouses <= earlier.max_warehouses)
    return later.kind == "whole"


def validate_priority(priority: Any, where: str = "allocation.priority") -> list[PriorityKey]:
    """Parse ``priority`` (None = oldest first); raise RuleConfigError naming the entry."""
    if priority is None:
        return []
    if not isinstance(priority, Sequence) or isinstance(priority, str | bytes):
        raise RuleConfigError(f"{where}: expected a list like [{{by: customer_group, order: [...]}}, "
                              "{by: ordered_at}]")
    keys: list[PriorityKey] = []
    for i, raw in enumerate(priority):
        at = f"{where}[{i}]"
        if not isinstance(raw, Mapping):
            raise RuleConfigError(f"{at}: expected a mapping like {{by: ordered_at}}, got {raw!r}")
        unknown = sorted(set(raw) - {"by", "order"})
        if unknown:
            raise RuleConfigError(f"{at}: unknown key {unknown[0]!r} (allowed: by, order)")
        by = raw.get("by")
        if by not in PRIORITY_BY:
            raise RuleConfigError(f"{at}: 'by' must be one of {', '.join(PRIORITY_BY)}, got {by!r}")
        at = f"{at} ({by})"
        if any(k.by == by for k in keys):
            raise RuleConfigError(f"{at}: {by} is listed twice")
        order = raw.get("order")
        if by == "ordered_at":
            if order is not None:
                raise RuleConfigError(f"{at}: 'order' is not used with ordered_at (oldest first)")
            keys.append(PriorityKey(by))
            continue
        if (not isinstance(order, Sequence) or isinstance(order, str | bytes) or not order
                or not all(isinstance(v, str) for v in order)):
            raise RuleConfigError(f"{at}: 'order' must be a non-empty list of {by} values, "
                                  "first served first")
        if len(set(order)) != len(order):
            raise RuleConfigError(f"{at}: 'order' lists a value twice")
        keys.append(PriorityKey(by, tuple(order)))
    return keys


# --- one line ----------------------------------------------------------------------------------


# Per-line values are NamedTuples and slotted dataclasses, not frozen dataclasses: the planner
# makes several per line, and a frozen dataclass pays object.__setattr__ for every field.


class LineNeed(NamedTuple):
    """What one order line needs, plus the order facts the rules may look at."""

    sku: str
    qty: Decimal
    ship_region: str | None = None
    customer_region: str | None = None


class Pick(NamedTuple):
    warehouse: str | None  # None: this quantity waits for stock (a backordered row)
    qty: Decimal


@dataclass(slots=True)
class Decision:
    rule_id: str
    picks: tuple[Pick, ...]
    inputs: dict[str, Any] = field(default_factory=dict, compare=False)  # JSON-able: the why
    # derived once from picks (the planner reads them for every line; plain attributes are
    # cheaper than properties; functools.cached_property even takes a lock on 3.11)
    allocated: tuple[Pick, ...] = field(init=False, compare=False, repr=False)
    waiting: Decimal = field(init=False, compare=False, repr=False)
    backordered: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        picks = self.picks
        if len(picks) == 1:  # nearly every step: one warehouse, or all of it waits
            waits = picks[0].warehouse is None
            allocated, waiting = ((), picks[0].qty) if waits else (picks, _ZERO)
        else:
            allocated = tuple(p for p in picks if p.warehouse is not None)
            waiting = sum((p.qty for p in picks if p.warehouse is None), _ZERO)
        self.allocated, self.waiting, self.backordered = allocated, waiting, waiting > 0

    def label(self) -> str:
        """One line for people: ``split: WH-E 6 + WH-W 4``, ``partial: WH-W 1 + 2 waiting``."""
        parts = [f"{p.warehouse} {qty_text(p.qty)}" for p in self.allocated]
        if self.backordered:
            parts.append(f"{qty_text(self.waiting)} waiting")
        return f"{self.rule_id}: {' + '.join(parts)}"


_new = object.__new__


def _one(rule_id: str, pick: Pick, inputs: dict[str, Any]) -> Decision:
    """``Decision(rule_id, (pick,), inputs)`` for the commonest steps (one warehouse places the
    whole line, or all of it waits), its derived fields set directly: the generic ``__init__``
    and ``__post_init__`` cost as much as the rest of a line's decision."""
    d = _new(Decision)
    d.rule_id = rule_id
    d.picks = picks = (pick,)
    d.inputs = inputs
    if pick.warehouse is None:
        d.allocated, d.waiting, d.backordered = (), pick.qty, pick.qty > 0
    else:
        d.allocated, d.waiting, d.backordered = picks, _ZERO, False
    return d


def qty_text(q: Decimal) -> str:
    """Quantities without padding zeros ("2", "2.5"), never in exponent form."""
    return format(q.normalize(), "f")


def _target_region(line: LineNeed) -> tuple[str | None, str | None]:
    """The region home_region-style rules look in, and where it came from."""
    if line.ship_region:
        return line.ship_region, "ship_region"
    if line.customer_region:
        return line.customer_region, "customer_region"
    return None, None


# Each kind gets the candidates with stock, fullest first (then by code), never empty.
_Picks = tuple[list[Pick] | None, str]
_Usable = list[tuple[str, Decimal]]


def choose(
    line: LineNeed,
    stock: Mapping[str, Decimal],
    warehouse_regions: Mapping[str, str | None],
    rules: Sequence[Rule],
) -> Decision | None:
    """One step: the first rule that places (some of) the line, or None when no rule can.

    ``stock`` is warehouse -> available quantity for this line's sku (already net of what
    earlier lines took). A partial step may place less than the line (``decide`` goes on).
    """
    region, region_from = _target_region(line)
    codes = sorted(stock)
    return _choose(line.qty, region, region_from, stock, codes,
                   _in_region(codes, warehouse_regions, region), warehouse_regions, rules)


def _in_region(codes: Sequence[str], warehouse_regions: Mapping[str, str | None],
               region: str | None) -> list[str]:
    """The warehouses of ``codes`` in ``region`` (none when the region is unknown)."""
    if region is None:
        return []
    return [w for w in codes if warehouse_regions.get(w) == region]


def _choose(
    qty: Decimal,
    region: str | None,
    region_from: str | None,
    stock: Mapping[str, Decimal],
    codes: Sequence[str],
    home_codes: Sequence[str],
    warehouse_regions: Mapping[str, str | None],
    rules: Sequence[Rule],
) -> Decision | None:
    """``choose`` over precomputed views: ``codes`` are the sku's warehouses in code order (the
    keys of ``stock``), ``home_codes`` those of them in ``region``. This runs for every line:
    the common rule (one warehouse, the fullest) is one pass with no intermediate lists."""
    skipped: dict[str, str] | None = None  # rule id -> why it did not fire, in rule order
    fullest: _Usable | None = None
    sq = qty.__str__()
    for rule in rules:
        kind = rule.kind
        if kind == "backorder":
            inputs: dict[str, Any] = {"qty": sq, "available": {w: stock[w].__str__() for w in codes}}
            if skipped:
                inputs["skipped"] = skipped
            return _one(rule.id, Pick(None, qty), inputs)
        if rule.warehouse_in == "customer_region":
            inputs = {"qty": sq, "region": region, "region_from": region_from}
            scope = home_codes
        else:
            inputs = {"qty": sq} if kind == "whole" else {"qty": sq, "home": region}
            scope = codes
        if kind == "whole":
            # the common case, kept to one pass: the fullest (the lowest code on a tie)
            candidates: dict[str, str] = {}
            best_w: str | None = None
            best_q = _ZERO
            for w in scope:
                q = stock[w]
                candidates[w] = q.__str__()
                if q > best_q:
                    best_w, best_q = w, q
            inputs["candidates"] = candidates
            if best_w is not None:
                if best_q >= qty:
                    if skipped:
                        inputs["skipped"] = skipped
                    return _one(rule.id, Pick(best_w, qty), inputs)
                why = (f"no single warehouse holds {qty_text(qty)} "
                       f"(most: {qty_text(best_q)} at {best_w})")
            elif rule.warehouse_in and region is None:
                why = "no region known (no ship_region, no customer region)"
            else:
                why = "no stock in any candidate warehouse" if candidates else (
                    "no warehouse in scope")
            if skipped is None:
                skipped = {}
            skipped[rule.id] = why
            continue
        inputs["candidates"] = {w: stock[w].__str__() for w in scope}
        if scope is codes:
            if fullest is None:
                fullest = sorted(((w, stock[w]) for w in codes if stock[w] > _ZERO), key=_FULLEST)
            usable = fullest
        else:
            usable = sorted(((w, stock[w]) for w in scope if stock[w] > _ZERO), key=_FULLEST)
        if kind == "split":
            inputs["max_warehouses"] = rule.max_warehouses
        if usable:
            home = ({w for w, _ in usable if warehouse_regions.get(w) == region}
                    if region is not None else set())
            picks, why = _RULE_KINDS[kind](qty, usable, rule, home)
        elif rule.warehouse_in and region is None:
            picks, why = None, "no region known (no ship_region, no customer region)"
        else:
            picks = None
            why = "no stock in any candidate warehouse" if inputs["candidates"] else (
                "no warehouse in scope")
        if picks is None:
            if skipped is None:
                skipped = {}
            skipped[rule.id] = why
            continue
        if skipped:
            inputs["skipped"] = skipped
        return Decision(rule.id, tuple(picks), inputs)
    return None


def _FULLEST(wq: tuple[str, Decimal]) -> tuple[Decimal, str]:  # noqa: N802 - a sort key
    return -wq[1], wq[0]




def _home_first(usable: _Usable, home: set[str]) -> _Usable:
    return sorted(usable, key=lambda wq: wq[0] not in home)  # stable: fullest first within


def _whole(qty: Decimal, usable: _Usable, rule: Rule, home: set[str]) -> _Picks:
    warehouse, most = usable[0]  # the fullest (keeps small warehouses for small lines)
    if most >= qty:
        return [Pick(warehouse, qty)], ""
    return None, f"no single warehouse holds {qty_text(qty)} (most: {qty_text(most)} at {warehouse})"


def _split(qty: Decimal, usable: _Usable, rule: Rule, home: set[str]) -> _Picks:
    """The fewest warehouses that fill the line; among sets that size, home region first, then
    the most stock. The fullest k warehouses are the best any k can do, which fixes k; a greedy
    pass in preference order then keeps each warehouse that still leaves the set completable."""
    total, size = Decimal(0), 0
    for n, (_, q) in enumerate(usable[: rule.max_warehouses], 1):
        total += q
        if total >= qty:
            size = n
            break
    if not size:
        return None, (f"the {min(rule.max_warehouses, len(usable))} fullest warehouses hold "
                      f"{qty_text(total)} of {qty_text(qty)}")
    chosen: _Usable = []
    for w, q in _home_first(usable, home):
        if len(chosen) == size:
            break
        trial = [*chosen, (w, q)]
        taken = {t for t, _ in trial}
        best_rest = [r for t, r in usable if t not in taken][: size - len(trial)]
        if sum((r for _, r in trial), Decimal(0)) + sum(best_rest, Decimal(0)) >= qty:
            chosen = trial
    picks, left = [], qty
    for w, q in chosen:  # home first, then most stock; with k minimal every one takes > 0
        take = min(q, left)
        picks.append(Pick(w, take))
        left -= take
    return picks, ""


def _partial(qty: Decimal, usable: _Usable, rule: Rule, home: set[str]) -> _Picks:
    """What the warehouses hold, home region first, then the fullest, up to the line."""
    picks, left = [], qty
    for w, q in _home_first(usable, home):
        take = min(q, left)
        picks.append(Pick(w, take))
        left -= take
        if not left:
            break
    return picks, ""


_RULE_KINDS = {"whole": _whole, "split": _split, "partial": _partial}

Steps = tuple[Decision, ...]


def decide(
    line: LineNeed,
    stock: Mapping[str, Decimal],
    warehouse_regions: Mapping[str, str | None],
    rules: Sequence[Rule],
) -> Steps | None:
    """The line's steps until it is filled or must wait; None when no rule places any of it.

    What a partial step leaves goes back through the rules (from the top) with the stock that
    is left: the result is a fixpoint, so a later run without new stock decides nothing new
    (every rule is monotone: with less stock it never fires where it did not). Each step takes
    stock, so this ends within one step per warehouse, plus one.
    """
    region, region_from = _target_region(line)
    codes = sorted(stock)
    return _decide(line.qty, region, region_from, stock, codes,
                   _in_region(codes, warehouse_regions, region), warehouse_regions, rules)


def _decide(
    need: Decimal,
    region: str | None,
    region_from: str | None,
    stock: Mapping[str, Decimal],
    codes: Sequence[str],
    home_codes: Sequence[str],
    warehouse_regions: Mapping[str, str | None],
    rules: Sequence[Rule],
) -> Steps | None:
    """``decide`` over the precomputed views of ``_choose``."""
    d = _choose(need, region, region_from, stock, codes, home_codes, warehouse_regions, rules)
    if d is None:
        return None
    allocated = d.allocated
    if not allocated or (len(allocated) == 1 and allocated[0].qty >= need):
        return (d,)  # nearly every line: one step
    return _more_steps(d, need, region, region_from, stock, codes, home_codes, warehouse_regions,
                       rules)


def _more_steps(
    d: Decision | None,
    need: Decimal,
    region: str | None,
    region_from: str | None,
    stock: Mapping[str, Decimal],
    codes: Sequence[str],
    home_codes: Sequence[str],
    warehouse_regions: Mapping[str, str | None],
    rules: Sequence[Rule],
) -> Steps:
    """The steps from a first one (``d``) that placed only part of ``need``."""
    left = stock  # copied only when a partial step goes on
    steps: list[Decision] = []
    while True:
        if d is None:
            # no catch-all for the rest: it waits under the step that left it
            last = steps[-1]
            steps[-1] = Decision(last.rule_id, (*last.picks, Pick(None, need)), last.inputs)
            return tuple(steps)
        steps.append(d)
        placed = sum((p.qty for p in d.allocated), Decimal(0))
        if not d.allocated or placed >= need:
            return tuple(steps)
        left = dict(left)
        for p in d.allocated:
            left[p.warehouse] -= p.qty  # type: ignore[index]
        need -= placed
        d = _choose(need, region, region_from, left, codes, home_codes, warehouse_regions, rules)


def steps_label(steps: Steps | None) -> str:
    """``partial: WH-W 2; backorder: 1 waiting``; "not placed" for None."""
    return "; ".join(d.label() for d in steps) if steps else "not placed"


# --- orders in priority order --------------------------------------------------------------------


@dataclass(slots=True)
class LineIn:
    line_id: int
    line_no: int
    sku: str | None
    qty: Decimal | None
    waiting: Decimal | None  # what this run must place (None: the line is fully allocated)


@dataclass(slots=True)
class OrderIn:
    """One order as the rules see it: plain values, no database."""

    order_id: int
    status: str
    lines: tuple[LineIn, ...]
    ordered_at: datetime | None = None
    ship_region: str | None = None
    customer_region: str | None = None
    customer_group: str | None = None
    source: str | None = None
    order_no: str | None = None
    owner: str | None = None
    team: str | None = None


@dataclass(slots=True)
class OrderPlan:
    order: OrderIn
    outcome: str  # allocated | backordered | unallocated (no rule placed a line) | skipped
    decisions: tuple[tuple[LineIn, Steps], ...] = ()  # this run's steps per line it decided


def _at(value: datetime | None) -> datetime:
    return value if value is not None else _LAST  # no date: served last


def priority_key(order: OrderIn, priority: Sequence[PriorityKey]) -> tuple[Any, ...]:
    """Sort key: the declared keys in turn, then oldest ordered_at, then lowest id."""
    parts: list[Any] = []
    for key in priority:
        if key.by == "ordered_at":
            parts.append(_at(order.ordered_at))
        else:
            value = getattr(order, key.by)
            parts.append(key.order.index(value) if value in key.order else len(key.order))
    return (*parts, _at(order.ordered_at), order.order_id)


def priority_inputs(order: OrderIn, priority: Sequence[PriorityKey]) -> dict[str, Any]:
    """The values the declared priority looked at (recorded with each decision)."""
    out: dict[str, Any] = {}
    for key in priority:
        value = getattr(order, key.by)
        out[key.by] = value.isoformat() if isinstance(value, datetime) else value
    return out


class Warehouses:
    """Per sku, its stock's warehouses in code order, and those of them in a region: what
    every line's rules scan, worked out once per sku (and region), not per line. It depends
    only on which warehouses hold the sku and their regions, so a caller deciding several
    batches against the same stock rows (allocation's chunks) keeps one for all of them."""

    __slots__ = ("by_sku",)

    def __init__(self) -> None:
        # sku -> (its warehouses in code order, region -> those of them in the region)
        self.by_sku: dict[str, tuple[list[str], dict[str | None, list[str]]]] = {}


def plan_orders(
    work: Iterable[OrderIn],
    stock: Mapping[str, Mapping[str, Decimal]],
    warehouse_regions: Mapping[str, str | None],
    config: AllocationConfig,
    warehouses: Warehouses | None = None,
    consume: bool = False,
) -> list[OrderPlan]:
    """Decide every order, in priority order, each taking the stock earlier orders left.

    ``stock`` is sku -> warehouse -> available. An order is all-or-nothing: when no rule can
    place one of its lines it is ``unallocated`` and takes nothing. Lines whose ``waiting`` is
    None are already allocated and left alone. ``warehouses``: the views of earlier calls over
    the same stock rows (see ``Warehouses``). ``consume``: take what the placed orders reserve
    from ``stock`` itself (its inner dicts are changed), instead of from a copy.
    """
    available: Mapping[str, dict[str, Decimal]] = (
        stock if consume else {sku: dict(by_wh) for sku, by_wh in stock.items()})  # type: ignore[assignment]
    rules = config.rules
    # with a catch-all rule every line is placed or waits: no order is left unallocated, so
    # nothing an order took need be given back
    can_fail = not any(rule.kind == "backorder" for rule in rules)
    no_stock: dict[str, Decimal] = {}
    views = (warehouses if warehouses is not None else Warehouses()).by_sku
    plans: list[OrderPlan] = []
    for order in sorted(work, key=lambda o: priority_key(o, config.priority)):
        lines = order.lines
        usable = bool(lines)
        for ln in lines:
            if ln.sku is None or ln.qty is None or ln.qty <= 0:
                usable = False
                break
        if not usable:
            plans.append(OrderPlan(order, "skipped"))  # checks should never let this through
            continue
        prio = priority_inputs(order, config.priority) if config.priority else None
        region, region_from = _order_region(order)
        # each placed quantity is taken from ``available`` at once (a later line of the same
        # sku sees what is left); ``undo`` keeps the values replaced, for an order that turns
        # out unallocated (all-or-nothing)
        undo: list[tuple[dict[str, Decimal], str, Decimal]] | None = [] if can_fail else None
        decided: list[tuple[LineIn, Steps]] = []
        waits = False
        for ln in lines:
            waiting = ln.waiting
            if waiting is None or waiting <= 0:
                continue
            sku = ln.sku
            assert sku is not None  # checked above; for the type checker
            left = available.get(sku, no_stock)
            view = views.get(sku)
            if view is None:
                view = views[sku] = (sorted(left), {})
            codes, homes = view
            home = homes.get(region)
            if home is None:
                home = homes[region] = _in_region(codes, warehouse_regions, region)
            d = _choose(waiting, region, region_from, left, codes, home, warehouse_regions, rules)
            if d is None:
                break
            allocated = d.allocated
            if not allocated or (len(allocated) == 1 and allocated[0].qty >= waiting):
                steps: Steps = (d,)  # nearly every line: one step (as _decide)
            else:
                steps = _more_steps(d, waiting, region, region_from, left, codes, home,
                                    warehouse_regions, rules)
            for d in steps:
                if prio:
                    d.inputs["priority"] = prio  # a fresh dict per decision: safe to extend
                if d.backordered:
                    waits = True
                for p in d.allocated:
                    w = p.warehouse
                    assert w is not None
                    if undo is not None:
                        undo.append((left, w, left[w]))
                    left[w] -= p.qty
            decided.append((ln, steps))
        else:
            plans.append(OrderPlan(order, "backordered" if waits else "allocated", tuple(decided)))
            continue
        if undo:
            for by_wh, w, q in reversed(undo):
                by_wh[w] = q  # the very values it had (not re-added: the same Decimal)
        plans.append(OrderPlan(order, "unallocated"))
    return plans


def _order_region(order: OrderIn) -> tuple[str | None, str | None]:
    """As ``_target_region``, for an order."""
    if order.ship_region:
        return order.ship_region, "ship_region"
    if order.customer_region:
        return order.customer_region, "customer_region"
    return None, None
