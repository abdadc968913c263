"""Planning helpers: duplicate lines go to the chunk that holds them."""

from __future__ import annotations

from registry.batch_input import ChunkSpec
from tasks.batch_planning import duplicates_by_chunk


def test_duplicates_are_assigned_to_their_chunks() -> None:
    chunks = [ChunkSpec(0, 0, 100, 1, 10), ChunkSpec(1, 100, 200, 12, 10), ChunkSpec(2, 200, 300, 25, 5)]
    assert duplicates_by_chunk(chunks, [3, 11, 12, 24, 29]) == {0: [3, 11], 1: [12, 24], 2: [29]}
    assert duplicates_by_chunk(chunks, []) == {}
