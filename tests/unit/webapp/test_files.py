"""The streamed multipart form: the file comes out piece by piece, fields are kept, limits hold."""

from __future__ import annotations

import io

import pytest
from werkzeug.exceptions import RequestEntityTooLarge

from tasks.pipeline import PipelineError
from webapp.files import StreamedForm


class Trickle(io.RawIOBase):
    """A body that arrives a few bytes at a time (boundaries fall anywhere)."""

    def __init__(self, data: bytes, size: int) -> None:
        self.data, self.size = data, size

    def read(self, n: int = -1) -> bytes:
        piece, self.data = self.data[: self.size], self.data[self.size :]
        return piece


def body(*parts: tuple[str, str | None, bytes]) -> bytes:
    out = b""
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--B\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    return out + b"--B--\r\n"


@pytest.mark.parametrize("size", [1, 2, 3, 7, 4096])
def test_the_file_comes_out_whole_whatever_the_pieces(size: int) -> None:
    content = b"".join(b'{"custom_id": "%d"}\r\n' % i for i in range(500))
    data = body(("purpose", None, b"batch_input"), ("file", "in.jsonl", content), ("after", None, b"x"))
    form = StreamedForm(Trickle(data, size), b"B", max_file=len(content))  # type: ignore[arg-type]
    filename, pieces = form.file("file")
    assert filename == "in.jsonl" and b"".join(pieces) == content
    form.rest()
    assert form.fields == {"purpose": "batch_input", "after": "x"}


def test_a_file_over_the_limit_stops_the_upload() -> None:
    form = StreamedForm(io.BytesIO(body(("file", "f", b"x" * 101))), b"B", max_file=100)
    _, pieces = form.file("file")
    with pytest.raises(RequestEntityTooLarge):
        b"".join(pieces)


def test_no_file_field_names_the_field() -> None:
    form = StreamedForm(io.BytesIO(body(("other", "f", b"x"))), b"B", max_file=100)
    with pytest.raises(PipelineError) as error:
        form.file("file")
    assert error.value.problems[0].pointer == "/file"
