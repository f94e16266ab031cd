"""Owner assignment: the sales owner of an order, by territory, round-robin within the team.

Declared in orderhub.yaml::

    allocation:
      owners:
        territories: {east: team_east, north: team_north}   # ship region -> team
        teams:
          team_east: [alice, bob]                           # round-robin, in this order
          team_north: [carol]
        default_team: team_east                             # no region, or a region not listed

- The territory is the order's ship_region, else its customer's region (as home_region).
- Round-robin continues from a counter per team stored in the warehouse (``owner_counters``),
  not from Python memory: the team's n-th assignment ever goes to ``members[n % len(members)]``.
  Orders are taken in id order, so a run's assignments are deterministic.
- An order that has an owner keeps it; a rerun assigns nothing again and moves no counter.

The top half is pure (parse and assign: unit-tested without a database); the bottom half reads
and writes the counters and the orders set-based, inside the allocation's transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, select, update

from warehouse.engine import dialect_insert, in_values, update_rows
from warehouse.schema import orders, owner_counters

OWNER_KEYS = ("territories", "teams", "default_team")


class OwnerConfigError(ValueError):
    """A malformed ``allocation.owners`` mapping; the message names the key."""


@dataclass(frozen=True)
class OwnersConfig:
    territories: Mapping[str, str]  # region -> team
    teams: Mapping[str, tuple[str, ...]]  # team -> members, in round-robin order
    default_team: str | None = None


def parse_owners(raw: Any, where: str = "allocation.owners") -> OwnersConfig | None:
    """Parse and check ``owners`` (None: no owner assignment)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise OwnerConfigError(f"{where}: expected a mapping with {', '.join(OWNER_KEYS)}")
    unknown = sorted(set(raw) - set(OWNER_KEYS))
    if unknown:
        raise OwnerConfigError(f"{where}.{unknown[0]}: unknown key (allowed: {', '.join(OWNER_KEYS)})")
    teams_raw = raw.get("teams")
    if not isinstance(teams_raw, Mapping) or not teams_raw:
        raise OwnerConfigError(f"{where}.teams: expected a non-empty mapping of team -> [owners]")
    teams: dict[str, tuple[str, ...]] = {}
    for team, members in teams_raw.items():
        at = f"{where}.teams.{team}"
        if (not isinstance(members, Sequence) or isinstance(members, str | bytes) or not members
                or not all(isinstance(m, str) and m.strip() for m in members)):
            raise OwnerConfigError(f"{at}: expected a non-empty list of owner names")
        twice = sorted({m for m in members if members.count(m) > 1})
        if twice:
            raise OwnerConfigError(f"{at}: {twice[0]!r} is listed twice")
        teams[str(team)] = tuple(members)
    territories_raw = raw.get("territories") or {}
    if not isinstance(territories_raw, Mapping):
        raise OwnerConfigError(f"{where}.territories: expected a mapping of region -> team")
    territories: dict[str, str] = {}
    for region, team in territories_raw.items():
        if not isinstance(region, str):  # YAML reads a bare `no`/`on` as a boolean
            raise OwnerConfigError(f"{where}.territories: region {region!r} must be a string "
                                   "(quote it)")
        if team not in teams:
            raise OwnerConfigError(f"{where}.territories.{region}: team {team!r} is not declared "
                                   f"in {where}.teams")
        territories[region] = team
    default = raw.get("default_team")
    if default is not None and default not in teams:
        raise OwnerConfigError(f"{where}.default_team: team {default!r} is not declared in "
                               f"{where}.teams")
    if not territories and default is None:
        raise OwnerConfigError(f"{where}: declare territories, a default_team, or both")
    return OwnersConfig(territories, teams, default)


# one of each per placed order: a NamedTuple and a slotted dataclass, not frozen dataclasses
# (whose __init__ pays object.__setattr__ per field)
class OwnerNeed(NamedTuple):
    order_id: int
    ship_region: str | None
    customer_region: str | None


@dataclass(slots=True)
class OwnerDecision:
    order_id: int
    team: str
    owner: str
    rule: str  # territory | default_team
    inputs: dict[str, Any] = field(default_factory=dict, compare=False)


def _team(need: OwnerNeed, config: OwnersConfig) -> tuple[str, str, dict[str, Any]] | None:
    """The order's team, the rule that chose it and its inputs (None: no team applies)."""
    if need.ship_region:
        region, region_from = need.ship_region, "ship_region"
    else:
        region = need.customer_region
        region_from = "customer_region" if region else None
    inputs: dict[str, Any] = {"region": region, "region_from": region_from}
    team = config.territories.get(region) if region else None
    if team is not None:
        return team, "territory", inputs
    if config.default_team is None:
        return None
    inputs["why"] = (f"no territory for region {region!r}" if region
                     else "no region known (no ship_region, no customer region)")
    return config.default_team, "default_team", inputs


def teams_needed(needs: Iterable[OwnerNeed], config: OwnersConfig) -> set[str]:
    """The teams these orders will be assigned in (whose counters to lock): ``_team``'s team,
    without building its inputs."""
    territories, default = config.territories, config.default_team
    teams = set()
    for need in needs:
        region = need.ship_region or need.customer_region
        team = territories.get(region) if region else None
        if team is None:
            team = default
        if team is not None:
            teams.add(team)
    return teams


def assign_owners(
    needs: Iterable[OwnerNeed], config: OwnersConfig, counters: Mapping[str, int]
) -> tuple[list[OwnerDecision], dict[str, int]]:
    """Owners for orders that have none, in order id order; and the counters after them.

    ``counters`` is team -> assignments made so far (missing: 0). An order with no territory
    and no default team gets no owner (and is not returned)."""
    counts = dict(counters)
    out: list[OwnerDecision] = []
    for need in sorted(needs, key=lambda n: n.order_id):
        found = _team(need, config)
        if found is None:
            continue
        team, rule, inputs = found
        members = config.teams[team]
        turn = counts.get(team, 0)
        counts[team] = turn + 1
        inputs |= {"team": team, "members": list(members), "turn": turn}
        out.append(OwnerDecision(need.order_id, team, members[turn % len(members)], rule, inputs))
    return out, counts


# --- set-based, inside the caller's transaction -------------------------------------------------


def read_counters(conn: Connection, teams: Iterable[str] | None = None) -> dict[str, int]:
    """team -> assignments so far (no lock: for a dry run)."""
    q = select(owner_counters.c.team, owner_counters.c.assigned)
    if teams is not None:
        q = q.where(owner_counters.c.team.in_(sorted(set(teams))))
    return {team: int(n) for team, n in conn.execute(q)}


def lock_counters(conn: Connection, teams: Iterable[str], run_id: str) -> dict[str, int]:
    """The teams' counters, locked until commit (PostgreSQL), created at 0 when missing.

    Creating first, then SELECT ... FOR UPDATE in team order: two allocators assigning in the
    same team take turns instead of both starting from the same counter."""
    wanted = sorted(set(teams))
    if not wanted:
        return {}
    conn.execute(dialect_insert(conn, owner_counters)
                 .values([{"team": t, "assigned": 0, "run_id": run_id} for t in wanted])
                 .on_conflict_do_nothing(index_elements=[owner_counters.c.team]))
    q = (select(owner_counters.c.team, owner_counters.c.assigned)
         .where(in_values(owner_counters.c.team, wanted, conn.dialect.name))
         .order_by(owner_counters.c.team).with_for_update())
    return {team: int(n) for team, n in conn.execute(q)}


def write_owners(conn: Connection, decisions: Sequence[OwnerDecision], before: Mapping[str, int],
                 after: Mapping[str, int], run_id: str) -> int:
    """Set the orders' owners (only where none is set yet) and move the counters that moved."""
    if not decisions:
        return 0
    done = update_rows(conn, orders, "id", ("owner", "team", "owner_rule", "owner_inputs", "run_id"),
                       [(d.order_id, d.owner, d.team, d.rule, d.inputs, run_id)
                        for d in decisions], only_where_null="owner")
    moved = [{"b_team": t, "b_n": n} for t, n in sorted(after.items()) if before.get(t, 0) != n]
    if moved:
        conn.execute(update(owner_counters).where(owner_counters.c.team == bindparam("b_team"))
                     .values(assigned=bindparam("b_n"), run_id=run_id), moved)
    return done
