"""The ingest read-ahead: the connector reads the next batch in a thread while one lands."""

from __future__ import annotations

import threading
import time

import pytest

from flows.ingest import _read_ahead


def _source(n: int, seen: list[int], fail_at: int | None = None, closed: list[bool] | None = None):
    try:
        for i in range(n):
            if i == fail_at:
                raise ConnectionError(f"source down at batch {i}")
            seen.append(i)
            yield i
    finally:
        if closed is not None:
            closed.append(True)


def test_batches_come_in_order_and_at_most_one_ahead() -> None:
    seen: list[int] = []
    got = []
    with _read_ahead(_source(6, seen)) as batches:
        for b in batches:
            time.sleep(0.05)  # a slow landing: the reader may not run away
            # read so far: this batch, the one waiting in the hand-off, the one being made
            assert len(seen) <= b + 3
            got.append(b)
    assert got == list(range(6))


def test_a_source_error_is_raised_where_its_batch_would_come() -> None:
    seen: list[int] = []
    got = []
    with pytest.raises(ConnectionError, match="source down at batch 3"), \
            _read_ahead(_source(6, seen, fail_at=3)) as batches:
        for b in batches:
            got.append(b)
    assert got == [0, 1, 2]  # every batch before the error was handed over (and landed)


def test_leaving_early_stops_the_reader_and_closes_the_source() -> None:
    seen: list[int] = []
    closed: list[bool] = []
    before = threading.active_count()
    with pytest.raises(RuntimeError, match="landing failed"), \
            _read_ahead(_source(1000, seen, closed=closed)) as batches:
        for b in batches:
            if b == 2:
                raise RuntimeError("landing failed")
    assert threading.active_count() == before  # the reader thread is gone
    assert closed == [True]
    assert len(seen) <= 5  # it stopped about where landing stopped, not at the end
