"""Planning helpers: duplicate lines go to the chunk that holds them."""

from __future__ import annotations

from collections import deque

from registry.batch_input import plan_chunks
from tasks.batch_planning import take_duplicates


def test_duplicates_are_assigned_to_their_chunks() -> None:
    # (start byte, line number) of duplicate lines; chunks end at bytes 100, 200, 300.
    pending = deque([(30, 3), (99, 11), (100, 12), (190, 24), (250, 29)])
    assert take_duplicates(pending, 100) == [3, 11]
    assert take_duplicates(pending, 200) == [12, 24]
    assert take_duplicates(pending, 200) == []
    assert take_duplicates(pending, 300) == [29]
    assert not pending


def test_chunks_resume_at_the_index_given() -> None:
    spans = [(n, 10 * (n - 1), 10 * n) for n in range(1, 8)]
    resumed = list(plan_chunks(spans[4:], 2, first_index=2))
    assert [(c.index, c.first_line, c.line_count) for c in resumed] == [(2, 5, 2), (3, 7, 1)]
    whole = list(plan_chunks(spans, 2))
    assert whole[2:] == resumed, "a planner resuming after chunk 1 cuts what one run would"
