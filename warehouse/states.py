"""The order state machine: one closed list of states and one transition table. Pure, no I/O.

Every guard answers *why* a transition is refused (a sentence for ops and error messages) or
None when it is allowed; ``warehouse.orders.transition`` applies it set-based and writes the
``order_events`` audit row.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

__all__ = [
    "FINAL_STATES",
    "OPEN_STATES",
    "TRANSITIONS",
    "OrderState",
    "TransitionError",
    "INITIAL_STATE",
    "allowed_from",
    "assert_transition",
    "can_transition",
]


class OrderState(StrEnum):
    CAPTURED = "captured"
    QUARANTINED = "quarantined"
    HELD = "held"  # the gate held its source's whole share of a batch (too many failures)
    VALIDATED = "validated"
    BACKORDERED = "backordered"
    ALLOCATED = "allocated"
    PUSHED = "pushed"
    INVOICED = "invoiced"
    PAID = "paid"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    RETURNED = "returned"  # goods came back after invoicing: a credit note reverses the invoice


S = OrderState

FINAL_STATES: frozenset[OrderState] = frozenset({S.PAID, S.REJECTED, S.CANCELLED, S.RETURNED})
OPEN_STATES: frozenset[OrderState] = frozenset(OrderState) - FINAL_STATES

# The one table (docs/internals.md). "Any open state -> cancelled" is added below, not repeated.
_FORWARD: dict[OrderState, frozenset[OrderState]] = {
    S.CAPTURED: frozenset({S.VALIDATED, S.QUARANTINED, S.HELD}),
    S.HELD: frozenset({S.CAPTURED, S.QUARANTINED}),  # release for a re-gate | quarantine
    S.QUARANTINED: frozenset({S.CAPTURED, S.VALIDATED, S.REJECTED}),  # release | override | reject
    S.VALIDATED: frozenset({S.ALLOCATED, S.BACKORDERED}),
    S.BACKORDERED: frozenset({S.ALLOCATED}),
    S.ALLOCATED: frozenset({S.PUSHED}),
    S.PUSHED: frozenset({S.INVOICED, S.ALLOCATED}),  # invoice | rollback compensated its pushes
    # paid | rollback: only the invoice was compensated (-> pushed), or the pushes too (-> allocated)
    S.INVOICED: frozenset({S.PAID, S.PUSHED, S.ALLOCATED, S.RETURNED}),
}
# The only ways out of a final state: a paid order's goods may still come back (a return).
_REVERSALS: dict[OrderState, frozenset[OrderState]] = {S.PAID: frozenset({S.RETURNED})}
TRANSITIONS: Mapping[OrderState, frozenset[OrderState]] = {
    state: _FORWARD.get(state, frozenset()) | ({S.CANCELLED} if state in OPEN_STATES else set())
    | _REVERSALS.get(state, frozenset())
    for state in OrderState
}
INITIAL_STATE = S.CAPTURED  # the only state an order enters from nothing (None)


class TransitionError(ValueError):
    """A refused state transition; the message says which and why."""


def _state(value: OrderState | str | None) -> OrderState | None:
    if value is None or isinstance(value, OrderState):
        return value
    return OrderState(value)  # ValueError for an unknown name


def can_transition(from_state: OrderState | str | None, to_state: OrderState | str) -> str | None:
    """None when ``from_state -> to_state`` is allowed, else the reason it is refused.

    ``from_state=None`` means a new order: it may only enter ``captured``.
    """
    try:
        src = _state(from_state)
    except ValueError:
        return f"unknown state {from_state!r}"
    try:
        dst = _state(to_state)
    except ValueError:
        return f"unknown state {to_state!r}"
    if dst is None:
        return "the target state is missing"
    if src is None:
        return None if dst is INITIAL_STATE else f"a new order starts as {INITIAL_STATE}, not {dst}"
    if src is dst:
        return f"already {dst}"
    if src in FINAL_STATES and dst not in TRANSITIONS[src]:
        return f"{src} is final"
    if dst not in TRANSITIONS[src]:
        allowed = ", ".join(sorted(TRANSITIONS[src]))
        return f"{src} cannot become {dst} (allowed: {allowed})"
    return None


def assert_transition(from_state: OrderState | str | None, to_state: OrderState | str) -> None:
    """Raise TransitionError when the transition is refused."""
    reason = can_transition(from_state, to_state)
    if reason is not None:
        raise TransitionError(f"{from_state} -> {to_state}: {reason}")


def allowed_from(to_state: OrderState | str) -> frozenset[OrderState]:
    """Every state that may move to ``to_state`` (what a set-based UPDATE filters on)."""
    dst = OrderState(to_state)
    return frozenset(src for src, targets in TRANSITIONS.items() if dst in targets)
