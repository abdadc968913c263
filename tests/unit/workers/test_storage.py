from __future__ import annotations

import io
import itertools

import pytest

from registry.batch_input import LineError, parse_line, reader_limit
from workers.storage import _CountingReader, split_lines

TEXT = b'{"a": 1}\n\nsecond line\r\nlast without ending'


def cut(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_split_lines_gives_each_line_with_its_range_whatever_the_pieces(size: int) -> None:
    lines = list(split_lines(cut(TEXT, size), start=100))
    assert lines == [
        (100, 109, b'{"a": 1}\n'),
        (109, 110, b"\n"),
        (110, 123, b"second line\r\n"),
        (123, 142, b"last without ending"),
    ]
    assert b"".join(line for _, _, line in lines) == TEXT


def test_split_lines_of_nothing_is_nothing() -> None:
    assert list(split_lines([])) == [] and list(split_lines([b"", b""])) == []


@pytest.mark.parametrize("size", [1, 4, 1000])
def test_a_line_over_the_limit_is_cut_but_its_range_is_whole(size: int) -> None:
    data = b"short\n" + b"x" * 50 + b"\n" + b"y" * 9 + b"\n" + b"tail"
    lines = list(split_lines(cut(data, size), max_line=10))
    assert lines == [
        (0, 6, b"short\n"),
        (6, 57, b"x" * 11),
        (57, 67, b"y" * 9 + b"\n"),  # 10 bytes with its ending: within the limit
        (67, 71, b"tail"),
    ]


def test_the_cut_line_is_reported_too_long_by_the_parser() -> None:
    cap = 20
    data = b'{"custom_id": "a"}\r\n' + b"z" * 100 + b"\n" + b" " * 21 + b"\r\n"
    found = [
        parse_line(line, number, [], [], set(), cap)
        for number, (_, _, line) in enumerate(split_lines(cut(data, 5), max_line=reader_limit(cap)), 1)
    ]
    assert isinstance(found[0], LineError) and found[0].code == "invalid_input"  # 18 bytes: not too long
    assert isinstance(found[1], LineError) and found[1].code == "line_too_long"
    assert isinstance(found[2], LineError) and found[2].code == "line_too_long"


def test_counting_reader_over_pieces_reads_what_is_asked() -> None:
    reader = _CountingReader(iter([b"abc", b"", b"defgh", b"i"]))
    assert [reader.read(2), reader.read(2), reader.read(10), reader.read(10), reader.read(10)] == [
        b"ab",
        b"c",
        b"defgh",
        b"i",
        b"",
    ]
    assert reader.count == 9


def test_counting_reader_over_a_file() -> None:
    reader = _CountingReader(io.BytesIO(b"0123456789"))
    assert b"".join(iter(lambda: reader.read(4), b"")) == b"0123456789" and reader.count == 10


def test_counting_reader_reads_all_with_a_negative_size() -> None:
    reader = _CountingReader(itertools.repeat(b"ab", 3))
    assert reader.read() + reader.read() + reader.read() + reader.read() == b"ababab"
