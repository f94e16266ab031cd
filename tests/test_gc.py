"""The collector helpers the hot paths and the stages use (connectors.base)."""

from __future__ import annotations

import gc
import weakref

import pytest

from connectors.base import frozen_heap, paused_gc


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


def test_paused_gc_restores_the_collector() -> None:
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), paused_gc():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_frozen_heap_nests_and_hands_everything_back() -> None:
    assert gc.get_freeze_count() == 0
    with frozen_heap():
        outer = gc.get_freeze_count()
        assert outer > 0  # the imports and everything alive now
        with frozen_heap():  # a stage inside the run: what the run made since is frozen too
            assert gc.get_freeze_count() >= outer
        assert gc.get_freeze_count() > 0  # the inner block does not unfreeze the run's
    assert gc.get_freeze_count() == 0


def test_frozen_heap_freezes_no_garbage_and_loses_nothing() -> None:
    dead = _Node()
    gone = weakref.ref(dead)
    del dead  # garbage in a cycle, not collected yet
    with frozen_heap():
        assert gone() is None  # collected before the freeze, not kept forever
        alive = _Node()
        kept = weakref.ref(alive)
        del alive  # a cycle made while frozen: collected as usual
        gc.collect()
        assert kept() is None
    assert gc.get_freeze_count() == 0


def test_frozen_heap_unfreezes_on_error() -> None:
    with pytest.raises(ValueError), frozen_heap():
        raise ValueError("a stage failed")
    assert gc.get_freeze_count() == 0
