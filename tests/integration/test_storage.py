"""The object store boundary's streaming operations against the real S3 server (rclone), memory measured."""

from __future__ import annotations

import hashlib
import socket
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from workers.storage import (
    CONCAT_PARALLEL_UPLOADS,
    MIN_PART_SIZE,
    ObjectNotFound,
    ObjectStore,
    StorageError,
    StorageUnavailable,
)

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
BIG = 8 * MIN_PART_SIZE  # 40 MiB


@pytest.fixture(scope="module")
def store(s3_endpoint: str) -> ObjectStore:
    store = ObjectStore(s3_endpoint, "test-access", "test-secret", f"storage-{uuid.uuid4().hex[:8]}")
    store.ensure_bucket()
    return store


def numbered_lines(size: int) -> Iterator[bytes]:
    """``size`` bytes of JSON lines numbered from 1, in 64 KiB pieces, generated as they are read."""
    number, produced, piece = 0, 0, bytearray()
    while produced < size:
        while len(piece) < 64 * 1024:
            number += 1
            piece += b'{"custom_id":"req-%09d","inputs":[]}\n' % number
        chunk = bytes(piece[: size - produced])
        piece.clear()
        produced += len(chunk)
        yield chunk


LINE = len(b'{"custom_id":"req-000000001","inputs":[]}\n')


def peak_memory(work: Callable[[], Any]) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = work()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def digest(pieces: Iterator[bytes]) -> str:
    sha = hashlib.sha256()
    for piece in pieces:
        sha.update(piece)
    return sha.hexdigest()


@pytest.fixture(scope="module")
def big_object(store: ObjectStore) -> str:
    key = f"big-{uuid.uuid4().hex[:6]}.jsonl"
    written, peak = peak_memory(lambda: store.put_stream(key, numbered_lines(BIG), "application/jsonl"))
    assert written == BIG == store.stat(key)
    # One part read, one being sent and a copy: about three parts, however big the object.
    assert peak < 4 * MIN_PART_SIZE and peak < BIG / 2, f"peak {peak / MiB:.1f} MiB"
    return key


def test_put_stream_writes_a_large_object_in_bounded_memory(store: ObjectStore, big_object: str) -> None:
    assert digest(store.iter_pieces(big_object)) == digest(numbered_lines(BIG))


def test_put_stream_takes_a_file_and_small_objects_too(store: ObjectStore, tmp_path: Any) -> None:
    path = tmp_path / "small.jsonl"
    path.write_bytes(b"one\ntwo\n")
    with path.open("rb") as stream:
        assert store.put_stream("small-from-file", stream) == 8
    assert store.get_bytes("small-from-file") == b"one\ntwo\n"
    assert store.put_stream("empty", iter([])) == 0
    assert store.stat("empty") == 0 and store.get_bytes("empty") == b""


def test_get_range_reads_bytes_start_to_end(store: ObjectStore, big_object: str) -> None:
    line = 123_457
    start = (line - 1) * LINE
    assert (
        store.get_range(big_object, start, start + LINE) == b'{"custom_id":"req-%09d","inputs":[]}\n' % line
    )
    assert store.get_range(big_object, 0, 5) == b'{"cus'
    assert store.get_range(big_object, 10, 10) == b""


def test_get_range_at_the_end_of_the_object(store: ObjectStore) -> None:
    store.put_bytes("ten", b"0123456789")
    assert store.get_range("ten", 7, 10) == b"789"
    assert store.get_range("ten", 0, 10) == b"0123456789"


def test_iter_lines_streams_every_line_in_bounded_memory(store: ObjectStore, big_object: str) -> None:
    def count() -> tuple[int, int, bytes]:
        lines, position, last = 0, 0, b""
        for start, end, line in store.iter_line_spans(big_object):
            assert start == position and end - start == len(line)
            lines, position, last = lines + 1, end, line
        return lines, position, last

    (lines, position, last), peak = peak_memory(count)
    assert position == BIG and lines == -(-BIG // LINE)
    assert last == (b'{"custom_id":"req-%09d","inputs":[]}\n' % lines)[: BIG - (lines - 1) * LINE]
    assert peak < 2 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_iter_lines_of_a_byte_range_gives_whole_lines(store: ObjectStore, big_object: str) -> None:
    start, end = 1000 * LINE, 1003 * LINE
    assert list(store.iter_lines(big_object, start, end)) == [
        b'{"custom_id":"req-%09d","inputs":[]}\n' % n for n in (1001, 1002, 1003)
    ]
    assert list(store.iter_lines(big_object, 5, 5)) == []


def test_iter_lines_cuts_lines_over_the_limit(store: ObjectStore) -> None:
    store.put_bytes("long-lines", b"ok\n" + b"x" * 100_000 + b"\nend")
    assert list(store.iter_lines("long-lines", max_line=10)) == [b"ok\n", b"x" * 11, b"end"]


def test_concat_streams_sources_into_one_object(store: ObjectStore, big_object: str) -> None:
    store.put_bytes("part-a", b"a1\na2\n")
    store.put_bytes("part-empty", b"")
    sources = [big_object, "part-a", "part-empty", big_object]
    written, peak = peak_memory(lambda: store.concat("joined", sources, "application/jsonl"))
    assert written == 2 * BIG + 6 == store.stat("joined")
    # Parts uploading while the next is read: a few parts in memory, whatever the sizes (80 MiB
    # here): the parts uploading, the part being read and its joined copy, the transport's buffers.
    assert peak < (CONCAT_PARALLEL_UPLOADS + 4) * MIN_PART_SIZE, f"peak {peak / MiB:.1f} MiB"

    def expected() -> Iterator[bytes]:
        yield from numbered_lines(BIG)
        yield b"a1\na2\n"
        yield from numbered_lines(BIG)

    assert digest(store.iter_pieces("joined")) == digest(expected())
    assert store.get_range("joined", BIG, BIG + 6) == b"a1\na2\n"


def test_concat_of_small_parts_and_of_none(store: ObjectStore) -> None:
    for index in range(3):
        store.put_bytes(f"parts/{index}", b"line %d\n" % index)
    assert store.concat("three", [f"parts/{index}" for index in range(3)]) == 21
    assert store.get_bytes("three") == b"line 0\nline 1\nline 2\n"
    assert store.concat("nothing", []) == 0 and store.get_bytes("nothing") == b""


def test_concat_with_a_missing_source_fails_and_writes_nothing(store: ObjectStore) -> None:
    store.put_bytes("present", b"x\n")
    with pytest.raises(ObjectNotFound):
        store.concat("broken", ["present", "absent"])
    with pytest.raises(ObjectNotFound):
        store.stat("broken")


def test_missing_objects_are_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.stat("no-such-key")
    with pytest.raises(ObjectNotFound):
        store.get_range("no-such-key", 0, 10)
    with pytest.raises(ObjectNotFound):
        list(store.iter_lines("no-such-key"))


def test_delete_and_delete_prefix(store: ObjectStore) -> None:
    prefix = f"tenants/t-{uuid.uuid4().hex[:6]}/"
    for index in range(1005):  # more than one DeleteObjects request
        store.put_bytes(f"{prefix}batches/b/parts/{index:08d}", b"1")
    store.put_bytes(f"{prefix}files/f", b"1")
    store.put_bytes(f"{prefix[:-1]}-other/files/f", b"1")  # shares the text, not the folder
    assert store.delete_prefix(f"{prefix}batches/") == 1005
    assert store.delete_prefix(f"{prefix}batches/") == 0
    assert store.stat(f"{prefix}files/f") == 1
    store.delete(f"{prefix}files/f")
    store.delete(f"{prefix}files/f")  # deleting twice is fine
    with pytest.raises(ObjectNotFound):
        store.stat(f"{prefix}files/f")
    assert store.stat(f"{prefix[:-1]}-other/files/f") == 1
    with pytest.raises(ValueError):
        store.delete_prefix("")


def test_an_unreachable_store_is_unavailable() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = ObjectStore(f"http://127.0.0.1:{port}", "a", "b", "bucket", timeout=0.5)
    with pytest.raises(StorageUnavailable):
        store.stat("x")
    with pytest.raises(StorageError):
        store.put_stream("x", iter([b"data"]))


def test_concat_reading_sources_ahead_writes_the_same_object(store: ObjectStore) -> None:
    keys = [f"ahead/{index}" for index in range(25)]
    for index, key in enumerate(keys):
        store.put_bytes(key, b"line %d\\n" % index * (index % 4))
    expected = b"".join(b"line %d\\n" % index * (index % 4) for index in range(25))
    for read_ahead in (1, 4, 40):
        assert store.concat(f"ahead-joined-{read_ahead}", keys, read_ahead=read_ahead) == len(expected)
        assert store.get_bytes(f"ahead-joined-{read_ahead}") == expected
    with pytest.raises(ObjectNotFound):
        store.concat("ahead-broken", [*keys[:3], "ahead/absent", *keys[3:]], read_ahead=4)
    with pytest.raises(ObjectNotFound):
        store.stat("ahead-broken")
