"""The object store boundary: MinIO in production, any S3 server locally, through the minio SDK.

minio and urllib3 errors are translated here into :class:`StorageError`. Large
objects (batch inputs and results) are streamed both ways with bounded memory:
uploads of unknown length go up as multipart uploads one part at a time, and
reads are consumed in pieces.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, BinaryIO
from urllib.parse import urlsplit

# S3's smallest part (except the last); the memory an upload of unknown length holds is about two parts.
MIN_PART_SIZE = 5 * 1024 * 1024
# Parts of a concatenation uploading while the next is read (a batch's finalize merging its parts).
CONCAT_PARALLEL_UPLOADS = 2
READ_SIZE = 256 * 1024
DELETE_BATCH = 1000
NOT_FOUND_CODES = ("NoSuchKey", "NotFound", "ResourceNotFound")
# S3 answers that say "try again" (AWS's own guidance): retried like an unreachable store.
TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"}


class StorageError(Exception):
    """The object store refused an operation."""


class StorageUnavailable(StorageError):
    """The object store cannot be reached."""


class ObjectNotFound(StorageError):
    """No object has this key."""


class ObjectStore:
    """One bucket of an S3-compatible store."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        region: str = "us-east-1",
        timeout: float = 5.0,
        read_timeout: float = 30.0,
        retries: int = 2,
    ) -> None:
        import urllib3
        from minio import Minio

        parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout, read=max(timeout, read_timeout)),
            retries=urllib3.Retry(total=retries, backoff_factor=0.2, status_forcelist=(502, 503, 504)),
            maxsize=16,
        )
        # An explicit region skips the bucket-location probe, which rclone answers oddly.
        self._client = Minio(
            parts.netloc,
            access_key=access_key,
            secret_key=secret_key,
            secure=parts.scheme == "https",
            region=region,
            http_client=http,
        )
        self.bucket = bucket
        self.endpoint = endpoint

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """Vendor errors raised in the block come out as our own."""
        from minio.error import InvalidResponseError, MinioException, S3Error
        from urllib3.exceptions import HTTPError

        try:
            yield
        except S3Error as exc:
            error = ObjectNotFound if exc.code in NOT_FOUND_CODES else StorageError
            if exc.code in TRANSIENT_CODES:
                error = StorageUnavailable
            raise error(f"{exc.code}: {exc.message}") from exc
        except InvalidResponseError as exc:
            # rclone answers a ranged GET of a missing key with an error body minio cannot parse.
            code = getattr(exc, "_code", None)
            if code == 404:
                raise ObjectNotFound("NoSuchKey: Object does not exist") from exc
            if isinstance(code, int) and code >= 500:  # the server's trouble: worth another try
                raise StorageUnavailable(str(exc)) from exc
            raise StorageError(str(exc)) from exc
        except (HTTPError, OSError) as exc:
            raise StorageUnavailable(f"{self.endpoint}: {exc}") from exc
        except MinioException as exc:
            raise StorageError(str(exc)) from exc

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._translated():
            return getattr(self._client, method)(*args, **kwargs)

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist."""
        if not self._call("bucket_exists", self.bucket):
            self._call("make_bucket", self.bucket)

    def ping(self) -> None:
        """Raise unless the store answers and the bucket exists."""
        if not self._call("bucket_exists", self.bucket):
            raise StorageError(f"bucket {self.bucket!r} does not exist")

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        import io

        self._call("put_object", self.bucket, key, io.BytesIO(data), len(data), content_type=content_type)

    def get_bytes(self, key: str) -> bytes:
        response = self._call("get_object", self.bucket, key)
        try:
            return bytes(response.read())
        finally:
            response.close()
            response.release_conn()

    def presigned_get(self, key: str, expires: int = 3600) -> str:
        return str(self._call("presigned_get_object", self.bucket, key, expires=timedelta(seconds=expires)))

    def put_stream(
        self,
        key: str,
        stream: BinaryIO | Iterable[bytes],
        content_type: str = "application/octet-stream",
        part_size: int = MIN_PART_SIZE,
        parallel: int = 1,
    ) -> int:
        """Upload an object of unknown length from a file-like object or an iterable of byte strings.

        A multipart upload, one part (``part_size``, at least 5 MiB) in memory at a time, or
        with ``parallel`` > 1 that many parts uploading in threads while the next is read (at
        most ``parallel + 1`` parts in memory); a failed upload is aborted. Returns the number
        of bytes written.
        """
        reader = _CountingReader(stream)
        self._call(
            "put_object",
            self.bucket,
            key,
            reader,
            -1,
            content_type=content_type,
            part_size=max(part_size, MIN_PART_SIZE),
            num_parallel_uploads=max(1, parallel),
        )
        return reader.count

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive) of an object."""
        if end <= start:
            return b""
        response = self._call("get_object", self.bucket, key, offset=start, length=end - start)
        try:
            with self._translated():
                return bytes(response.read())
        finally:
            response.close()
            response.release_conn()

    def iter_pieces(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes of an object from ``start`` to ``end`` (exclusive; None: its end), in pieces."""
        if end is not None and end <= start:
            return
        length = end - start if end is not None else None
        response = self._call("get_object", self.bucket, key, offset=start, length=length)
        try:
            with self._translated():
                yield from response.stream(READ_SIZE)
        finally:
            response.close()
            response.release_conn()

    def iter_lines(
        self, key: str, start: int = 0, end: int | None = None, max_line: int | None = None
    ) -> Iterator[bytes]:
        """The lines of an object between byte ``start`` and ``end``, each with its ``b"\\n"``.

        Memory stays bounded: a piece of the object at a time, and with
        ``max_line`` a line longer than ``max_line`` bytes (its ending included)
        is yielded cut to its first ``max_line + 1`` bytes, so the caller can
        tell it was too long, and the rest of it is skipped.
        """
        for _, _, line in split_lines(self.iter_pieces(key, start, end), start, max_line):
            yield line

    def iter_line_spans(
        self, key: str, start: int = 0, end: int | None = None, max_line: int | None = None
    ) -> Iterator[tuple[int, int, bytes]]:
        """Like :meth:`iter_lines`, with each line's byte range: ``(start, end, line)``, end exclusive."""
        return split_lines(self.iter_pieces(key, start, end), start, max_line)

    def stat(self, key: str) -> int:
        """The size of an object in bytes (ObjectNotFound if there is none)."""
        return int(self._call("stat_object", self.bucket, key).size)

    def delete(self, key: str) -> None:
        """Remove an object; removing one that does not exist is not an error."""
        self._call("remove_object", self.bucket, key)

    def keys_older_than(self, prefix: str, before: datetime) -> list[str]:
        """Keys under ``prefix`` of objects last written before ``before`` (timezone-aware)."""
        listing = self._call("list_objects", self.bucket, prefix=prefix, recursive=True)
        with self._translated():  # the listing is lazy
            return [
                item.object_name
                for item in listing
                if item.last_modified is not None and item.last_modified < before
            ]

    def delete_older_than(self, prefix: str, age: timedelta) -> int:
        """Remove the objects under ``prefix`` last written more than ``age`` ago; returns how many."""
        from datetime import UTC

        keys = self.keys_older_than(prefix, datetime.now(UTC) - age)
        for start in range(0, len(keys), DELETE_BATCH):
            self._remove_batch(keys[start : start + DELETE_BATCH])
        return len(keys)

    def _remove_batch(self, names: list[str]) -> None:
        """Delete up to DELETE_BATCH objects in one request."""
        from minio.deleteobjects import DeleteObject

        errors = self._call("remove_objects", self.bucket, [DeleteObject(name) for name in names])
        with self._translated():
            failed = [f"{error.name}: {error.code}" for error in errors]  # the call is lazy
        if failed:
            raise StorageError(f"could not delete {len(failed)} objects: {', '.join(failed[:5])}")

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with ``prefix``; returns how many were listed."""
        if not prefix:
            raise ValueError("refusing to delete a whole bucket: give a non-empty prefix")
        count = 0
        batch: list[str] = []
        listing = self._call("list_objects", self.bucket, prefix=prefix, recursive=True)
        with self._translated():
            for item in listing:
                batch.append(item.object_name)
                if len(batch) == DELETE_BATCH:
                    self._remove_batch(batch)
                    count, batch = count + len(batch), []
        if batch:
            self._remove_batch(batch)
            count += len(batch)
        return count

    def concat(
        self,
        dest_key: str,
        source_keys: Iterable[str],
        content_type: str = "application/octet-stream",
        part_size: int = MIN_PART_SIZE,
        read_ahead: int = 0,
    ) -> int:
        """Write the objects ``source_keys``, one after another, as the object ``dest_key``.

        Streamed through this process (no server-side compose, which rclone's S3
        server does not offer and which needs 5 MiB parts): the sources are read while
        CONCAT_PARALLEL_UPLOADS parts upload, so reading and writing overlap (a source piece
        and a few 5 MiB parts in memory: those uploading, the one read and its joined copy).
        With ``read_ahead``, that many sources are read whole, in threads, ahead of the one
        being written: for many small sources (a
        batch's chunk parts), whose reads are then no longer one round trip after another;
        memory then holds ``read_ahead + 1`` sources too. Returns the bytes written.
        """

        def pieces() -> Generator[bytes, None, None]:
            for key in source_keys:
                yield from self.iter_pieces(key)

        def read_ahead_pieces() -> Generator[bytes, None, None]:
            keys = iter(source_keys)
            with ThreadPoolExecutor(read_ahead, thread_name_prefix="concat-read") as pool:
                pending = deque(
                    pool.submit(self._read_whole, key) for key in itertools.islice(keys, read_ahead)
                )
                while pending:
                    data = pending.popleft().result()
                    following = next(keys, None)
                    if following is not None:
                        pending.append(pool.submit(self._read_whole, following))
                    yield data

        stream = read_ahead_pieces() if read_ahead > 0 else pieces()
        try:
            return self.put_stream(dest_key, stream, content_type, part_size, CONCAT_PARALLEL_UPLOADS)
        finally:
            stream.close()  # a failed upload leaves a source response open otherwise

    def _read_whole(self, key: str) -> bytes:
        return b"".join(self.iter_pieces(key))


def split_lines(
    pieces: Iterable[bytes], start: int = 0, max_line: int | None = None
) -> Iterator[tuple[int, int, bytes]]:
    """Cut a stream of byte pieces into lines: ``(start, end, line)`` with ``line`` ending in ``b"\\n"``.

    ``start`` is the offset of the first piece in the object. The last line may
    lack its ``b"\\n"``. With ``max_line``, a longer line is kept as its first
    ``max_line + 1`` bytes only (its range still covers all of it).
    """
    line = bytearray()  # the current line's kept bytes, when it spans pieces
    line_start = start
    length = 0  # bytes of the current line so far, kept or not
    limit = None if max_line is None else max_line + 1
    for piece in pieces:
        position, size = 0, len(piece)
        while position < size:
            newline = piece.find(b"\n", position)
            stop = size if newline == -1 else newline + 1
            if newline != -1 and not length and (limit is None or stop - position <= limit):
                # The common case: a whole line inside one piece, short enough.
                yield line_start, line_start + stop - position, piece[position:stop]
                line_start += stop - position
                position = stop
                continue
            keep = stop - position if limit is None else min(stop - position, limit - len(line))
            if keep > 0:
                line += piece[position : position + keep]
            length += stop - position
            position = stop
            if newline != -1:
                yield line_start, line_start + length, bytes(line)
                line_start, length = line_start + length, 0
                line.clear()
    if length:
        yield line_start, line_start + length, bytes(line)


class _CountingReader:
    """A ``read(size)`` view of a file-like object or of an iterable of byte strings, counting bytes."""

    def __init__(self, source: BinaryIO | Iterable[bytes]) -> None:
        self.count = 0
        self._read: Callable[[int], bytes] | None = getattr(source, "read", None)
        self._pieces: Iterator[bytes] = iter(()) if self._read else iter(source)
        self._rest = memoryview(b"")

    def read(self, size: int = -1) -> bytes:
        data = self._read(size) if self._read is not None else self._from_pieces(size)
        self.count += len(data)
        return data

    def _from_pieces(self, size: int) -> bytes:
        while not self._rest:
            piece = next(self._pieces, None)
            if piece is None:
                return b""
            self._rest = memoryview(piece)
        taken = self._rest if size < 0 else self._rest[:size]
        self._rest = self._rest[len(taken) :]
        return bytes(taken)
