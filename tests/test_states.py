"""The order state machine: one table, and a reason for every refusal."""

from __future__ import annotations

import pytest

from warehouse.states import (
    FINAL_STATES,
    OPEN_STATES,
    TRANSITIONS,
    OrderState,
    TransitionError,
    allowed_from,
    assert_transition,
    can_transition,
)

S = OrderState

# docs/internals.md, written out once more by hand: the table must say exactly this.
DOCUMENTED = {
    (S.CAPTURED, S.VALIDATED), (S.CAPTURED, S.QUARANTINED),
    (S.CAPTURED, S.HELD), (S.HELD, S.CAPTURED), (S.HELD, S.QUARANTINED),  # batch threshold
    (S.QUARANTINED, S.CAPTURED), (S.QUARANTINED, S.VALIDATED), (S.QUARANTINED, S.REJECTED),
    (S.VALIDATED, S.ALLOCATED), (S.VALIDATED, S.BACKORDERED),
    (S.BACKORDERED, S.ALLOCATED),
    (S.ALLOCATED, S.PUSHED),
    (S.PUSHED, S.INVOICED),
    (S.INVOICED, S.PAID),
    # rollback compensates pushes and invoices
    (S.PUSHED, S.ALLOCATED), (S.INVOICED, S.PUSHED), (S.INVOICED, S.ALLOCATED),
    (S.INVOICED, S.RETURNED), (S.PAID, S.RETURNED),  # returns after invoicing: credit notes
} | {(state, S.CANCELLED) for state in OPEN_STATES}


def test_table_is_exactly_the_documented_one() -> None:
    table = {(src, dst) for src, targets in TRANSITIONS.items() for dst in targets}
    assert table == DOCUMENTED
    assert set(TRANSITIONS) == set(OrderState)


@pytest.mark.parametrize("src", list(OrderState))
@pytest.mark.parametrize("dst", list(OrderState))
def test_every_pair_allowed_or_explained(src: OrderState, dst: OrderState) -> None:
    reason = can_transition(src, dst)
    if (src, dst) in DOCUMENTED:
        assert reason is None
        assert_transition(src, dst)
    else:
        assert isinstance(reason, str) and reason
        with pytest.raises(TransitionError, match=reason.split(" (")[0]):
            assert_transition(src, dst)


def test_final_states_go_nowhere() -> None:
    assert FINAL_STATES == {S.PAID, S.REJECTED, S.CANCELLED, S.RETURNED}
    for state in FINAL_STATES:
        # a paid order can still come back as a return (then a credit note); nothing else moves
        assert TRANSITIONS[state] == ({S.RETURNED} if state is S.PAID else frozenset())
        assert can_transition(state, S.CAPTURED) == f"{state} is final"


def test_reasons_read_well() -> None:
    assert can_transition("captured", "paid") == (
        "captured cannot become paid (allowed: cancelled, held, quarantined, validated)"
    )
    assert can_transition("validated", "validated") == "already validated"
    assert can_transition("bogus", "validated") == "unknown state 'bogus'"
    assert can_transition("captured", "bogus") == "unknown state 'bogus'"


def test_new_orders_start_captured() -> None:
    assert can_transition(None, "captured") is None
    assert can_transition(None, S.VALIDATED) == "a new order starts as captured, not validated"


def test_strings_and_enum_are_interchangeable() -> None:
    assert S("quarantined") is S.QUARANTINED and S.QUARANTINED == "quarantined"
    assert can_transition("quarantined", "captured") is None


def test_allowed_from() -> None:
    assert allowed_from("allocated") == {S.VALIDATED, S.BACKORDERED, S.PUSHED, S.INVOICED}
    assert allowed_from(S.CAPTURED) == {S.QUARANTINED, S.HELD}
    assert allowed_from("cancelled") == OPEN_STATES
