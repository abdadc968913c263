"""The inferq Python SDK: models, sync inference with numpy, files, batches and their results.

Needs only ``requests`` and ``numpy`` (never Flask or Celery), so any script can use it::

    from inferq.client import Client

    client = Client("http://127.0.0.1:8080", api_key)
    labels = client.infer("digits", {"input": rows})["label"]
    file = client.files.upload("requests.jsonl", progress=lambda sent, total: ...)
    batch = client.batches.wait(client.batches.create("digits", file["id"])["id"])
    for line in client.results(batch["id"]):
        ...

Every method raises :class:`ApiError` (or one of its subclasses) when the API answers
with a problem (RFC 9457 ``application/problem+json``) or cannot be reached. Answers
429 and 503 are retried after their ``Retry-After`` (a bounded number of times, within
a bounded total time); a connection that fails is retried for idempotent requests only.
"""

from __future__ import annotations

import email.utils
import json
import math
import mimetypes
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal, NotRequired, TypedDict, cast
from urllib.parse import quote, urljoin

import numpy as np
import requests

from inferq.tensors import from_numpy, to_numpy

__all__ = [
    "ApiError",
    "ApiUnreachable",
    "BadRequest",
    "Batch",
    "BatchNotFinished",
    "Client",
    "ClientError",
    "Conflict",
    "FileObject",
    "Forbidden",
    "InferenceFailed",
    "NotFound",
    "RateLimited",
    "ServerError",
    "ServiceUnavailable",
    "Unauthorized",
    "WaitTimeout",
]

DEFAULT_TIMEOUT = 30.0
UPLOAD_CHUNK = 1024 * 1024  # bytes read from the file and sent at a time
DOWNLOAD_CHUNK = 256 * 1024
FINAL_STATUSES = ("completed", "failed", "cancelled")
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
RETRY_STATUSES = frozenset({429, 503})
# The sync API waits at most this long per request (INFERQ_SYNC_TIMEOUT_MAX is 60 by default);
# longer waits poll the task.
SERVER_WAIT_MAX = 10.0

# numpy dtype -> Open Inference Protocol datatype.
_DATATYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}


# --- what the API returns ----------------------------------------------------------------


class RequestCounts(TypedDict):
    total: int
    completed: int
    failed: int


class Batch(TypedDict):
    """A batch as the API shows it (``GET /v1/batches/{id}``)."""

    id: str
    object: str
    model: str
    version: str
    status: str
    input_file_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    request_counts: RequestCounts
    progress: int
    created_at: str
    started_at: str | None
    finalizing_at: str | None
    completed_at: str | None
    failed_at: NotRequired[str | None]
    cancelled_at: str | None
    metadata: dict[str, str]
    errors: NotRequired[list[dict[str, str]]]


class FileObject(TypedDict):
    """A file as the API shows it (``GET /v1/files/{id}``)."""

    id: str
    object: str
    purpose: str
    filename: str
    bytes: int
    line_count: NotRequired[int | None]
    created_at: str


class Page(TypedDict):
    """One cursor page of a list (``?after=<last_id>`` gives the next one while ``has_more``)."""

    object: str
    data: list[Any]
    first_id: str | None
    last_id: str | None
    has_more: bool
    total: int
    limit: int


# progress(bytes sent or received so far, total bytes or None when unknown)
ByteProgress = Callable[[int, "int | None"], None]
Inputs = Mapping[str, Any] | Sequence[Any]


# --- errors --------------------------------------------------------------------------------


class ClientError(Exception):
    """Anything the SDK raises on purpose."""


class ApiError(ClientError):
    """The API answered with a problem, or could not be reached (``status`` 0).

    Carries the problem details: ``status``, ``type``, ``title``, ``detail``, ``errors``
    (``[{pointer, detail}]`` naming each field), ``request_id`` and ``retry_after``
    (seconds, when the API said). ``problem`` is the whole body as received.
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        errors: list[dict[str, str]] | None = None,
        *,
        type: str = "about:blank",
        request_id: str | None = None,
        retry_after: float | None = None,
        problem: Mapping[str, Any] | None = None,
    ) -> None:
        self.status, self.title, self.detail = status, title, detail
        self.errors: list[dict[str, str]] = list(errors or [])
        self.type = type
        self.request_id = request_id
        self.retry_after = retry_after
        self.problem: dict[str, Any] = dict(problem or {})
        super().__init__(self.describe())

    @property
    def code(self) -> str:
        """The problem's stable slug (``rate-limited``, ``model-not-found``...), from its ``type``."""
        return self.type.rsplit(":", 1)[-1].rsplit("/", 1)[-1]

    def describe(self) -> str:
        """One line (``404 Model not found: no model 'x'``), then one line per field error."""
        head = f"{self.status} {self.title}" if self.status else self.title
        lines = [head + (f": {self.detail}" if self.detail else "")]
        for error in self.errors:
            text = f"{error.get('pointer', '')}: {error.get('detail', '')}"
            if text not in self.detail:  # the API's detail often lists the first few already
                lines.append(f"  {text}")
        return "\n".join(lines)

    @classmethod
    def from_response(cls, response: requests.Response) -> ApiError:
        """The error a non-2xx answer stands for (the subclass that matches its status)."""
        try:
            problem = response.json()
        except ValueError:
            problem = None
        if not isinstance(problem, dict):
            problem = {"title": response.reason or "Error", "detail": response.text[:200].strip()}
        errors = problem.get("errors")
        kind = _ERROR_CLASSES.get(response.status_code) or (
            ServerError if response.status_code >= 500 else ApiError
        )
        return kind(
            response.status_code,
            str(problem.get("title") or response.reason or "Error"),
            str(problem.get("detail") or ""),
            errors if isinstance(errors, list) else None,
            type=str(problem.get("type") or "about:blank"),
            request_id=problem.get("request_id") or response.headers.get("X-Request-ID"),
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            problem=problem,
        )


class ApiUnreachable(ApiError):
    """No answer from the API: refused, reset, timed out, name not resolved (``status`` 0)."""


class BadRequest(ApiError):
    """400, 413, 415, 422: the request is not valid (``errors`` names each field)."""


class Unauthorized(ApiError):
    """401: no API key, or an unknown or revoked one."""


class Forbidden(ApiError):
    """403: the key may not do this (registry writes need an admin key)."""


class NotFound(ApiError):
    """404: no such model, file, batch or task (or another tenant's)."""


class Conflict(ApiError):
    """409: not in a state that allows it (model not deployed, batch already final...)."""


class RateLimited(ApiError):
    """429: over the key's rate limit, still after the retries; ``retry_after`` says when to come back."""


class ServiceUnavailable(ApiError):
    """502, 503, 504: a backing service (broker, database, object store, Triton) is down."""


class ServerError(ApiError):
    """500 and other server errors."""


class InferenceFailed(ApiError):
    """A sync inference that was accepted (202) and then failed on its worker."""


_ERROR_CLASSES: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: BadRequest,
    415: BadRequest,
    422: BadRequest,
    429: RateLimited,
    502: ServiceUnavailable,
    503: ServiceUnavailable,
    504: ServiceUnavailable,
}


class WaitTimeout(ClientError, TimeoutError):
    """:meth:`Batches.wait` gave up before the batch ended; ``batch`` is the last one seen."""

    def __init__(self, batch: Batch, waited: float) -> None:
        self.batch, self.waited = batch, waited
        counts = batch["request_counts"]
        super().__init__(
            f"batch {batch['id']} still {batch['status']} after {waited:.0f}s "
            f"({counts['completed'] + counts['failed']} of {counts['total']} lines done)"
        )


class BatchNotFinished(ClientError):
    """Results were asked of a batch that has not ended yet; ``batch`` is the batch."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        super().__init__(f"batch {batch['id']} is {batch['status']}: its results exist once it has ended")


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _connection_reason(exc: requests.RequestException) -> str:
    """A short reason for a failed connection (``[Errno 111] Connection refused``), not urllib3's essay."""
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    if found:
        return found.group(0).strip()
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return text[:200]


# --- the multipart upload, streamed --------------------------------------------------------


class MultipartFile:
    """A ``multipart/form-data`` body of small text fields and one file, produced piece by piece.

    The file is read ``chunk_size`` bytes at a time while the body is sent, never whole.
    ``len()`` is the body's size when the file's is known (then requests sends a
    ``Content-Length``), else 0 (then it is sent chunked). Each iteration opens the
    file again through ``opener``, so a retried request sends it whole again.
    Field values and names must not contain the boundary (a random one is chosen).
    """

    def __init__(
        self,
        fields: Mapping[str, str],
        field: str,
        filename: str,
        opener: Callable[[], IO[bytes]],
        size: int | None,
        content_type: str = "application/octet-stream",
        progress: ByteProgress | None = None,
        chunk_size: int = UPLOAD_CHUNK,
    ) -> None:
        self.boundary = f"inferq-{uuid.uuid4().hex}"
        self.opener, self.size, self.progress, self.chunk_size = opener, size, progress, chunk_size
        head = b"".join(
            self._part_head(f'form-data; name="{_quote(name)}"') + value.encode() + b"\r\n"
            for name, value in fields.items()
        )
        disposition = f'form-data; name="{_quote(field)}"; filename="{_quote(filename)}"'
        self.head = head + self._part_head(disposition, content_type)
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()

    def _part_head(self, disposition: str, content_type: str | None = None) -> bytes:
        lines = [f"--{self.boundary}", f"Content-Disposition: {disposition}"]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return 0 if self.size is None else len(self.head) + self.size + len(self.tail)

    def __bool__(self) -> bool:
        return True  # a body, even of unknown length (requests drops a falsy ``data``)

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        if self.progress:
            self.progress(0, self.size)
        yield self.head
        stream = self.opener()
        try:
            while piece := stream.read(self.chunk_size):
                yield piece
                sent += len(piece)
                if self.progress:
                    self.progress(sent, self.size)
        finally:
            stream.close()
        if self.size is not None and sent != self.size:
            raise ClientError(f"the file changed while it was sent: {sent} bytes instead of {self.size}")
        yield self.tail


def _quote(value: str) -> str:
    """A name or filename inside a quoted Content-Disposition parameter (as browsers write it)."""
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class _Unclosable:
    """A caller's file object handed to the encoder: rewound for each attempt, never closed by us."""

    def __init__(self, stream: IO[bytes], start: int | None) -> None:
        self.stream, self.start, self.used = stream, start, False

    def open(self) -> IO[bytes]:
        if self.used:
            if self.start is None:
                raise ClientError("the upload cannot be retried: its file object cannot seek back")
            self.stream.seek(self.start)
        self.used = True
        return cast(IO[bytes], self)

    def read(self, size: int) -> bytes:
        return self.stream.read(size)

    def close(self) -> None:
        pass


# --- the client ----------------------------------------------------------------------------


class Client:
    """A client of the inferq REST API at ``url`` with ``api_key``.

    ``timeout`` is the seconds one HTTP request may take; ``retries`` how many times
    a request answered 429 or 503 (or, when idempotent, left without an answer) is
    sent again, waiting ``Retry-After`` (or a growing back-off) in between, within
    ``retry_time`` seconds in all. ``models``, ``files`` and ``batches`` hold the
    resources; :meth:`infer` and :meth:`results` are here.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 3,
        retry_time: float = 60.0,
        session: requests.Session | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = max(0, retries)
        self.retry_time = retry_time
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = "inferq-client"
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        # Object-store downloads (presigned URLs) go through a session without our key.
        self._store = requests.Session()
        self.models = Models(self)
        self.files = Files(self)
        self.batches = Batches(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self.session.close()
        self._store.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # -- HTTP ----------------------------------------------------------------------------

    def send(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool | None = None,
        retry: bool = True,
        **kwargs: Any,
    ) -> requests.Response:
        """Send a request and return its 2xx (or 3xx, when redirects are not followed) response.

        Retries as the class says; ``idempotent`` (default: by method, and POST with an
        ``Idempotency-Key``) allows retries after a failed connection; ``retry=False`` (a body
        that cannot be sent twice) allows none. Raises :class:`ApiError`.
        """
        method = method.upper()
        if idempotent is None:
            headers = kwargs.get("headers") or {}
            idempotent = method in IDEMPOTENT_METHODS or "Idempotency-Key" in headers
        kwargs.setdefault("timeout", self.timeout)
        url = path if path.startswith(("http://", "https://")) else f"{self.url}{path}"
        deadline = time.monotonic() + self.retry_time
        retries = self.retries if retry else 0
        attempt = 0
        while True:
            try:
                response = self.session.request(method, url, **kwargs)
            except requests.RequestException as exc:
                wait = min(0.25 * 2**attempt, 4.0)
                if not idempotent or attempt >= retries or time.monotonic() + wait > deadline:
                    raise ApiUnreachable(
                        0, "API unreachable", f"{self.url}: {_connection_reason(exc)}"
                    ) from None
                attempt += 1
                time.sleep(wait)
                continue
            if response.status_code < 400:
                return response
            error = ApiError.from_response(response)
            response.close()
            if response.status_code not in RETRY_STATUSES or attempt >= retries:
                raise error
            wait = error.retry_after if error.retry_after is not None else min(0.5 * 2**attempt, 8.0)
            if time.monotonic() + wait > deadline:
                raise error
            attempt += 1
            time.sleep(wait)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request; its JSON answer (None for an empty one)."""
        response = self.send(method, path, **kwargs)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, json=body, **kwargs)

    def put(self, path: str, body: Any, **kwargs: Any) -> Any:
        return self.request("PUT", path, json=body, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)

    def find_model(self, ref: str) -> dict[str, Any]:
        """A model by id, or by ``name:version`` (kept for callers of the first client)."""
        return self.models.find(ref)

    # -- sync inference --------------------------------------------------------------------

    def infer(
        self,
        model: str,
        inputs: Inputs,
        version: str | None = None,
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``model`` once: numpy arrays in, numpy arrays out (by output name, reshaped).

        ``inputs`` is ``{name: array}`` (the datatype follows the array's dtype: float32 is
        FP32, int64 INT64, str or bytes BYTES...), or a list of ``(name, array)`` pairs or of
        protocol tensors (``{"name", "shape", "datatype", "data"}``) sent as they are.
        ``outputs`` names the outputs wanted (default all). The answer is waited for up to
        ``timeout`` seconds (default: the client's ``timeout``); past it :class:`ApiError`
        with status 0 says so, the inference itself may still finish.
        """
        body: dict[str, Any] = {"inputs": encode_inputs(inputs)}
        if outputs is not None:
            body["outputs"] = [{"name": name} for name in outputs]
        path = f"/v1/models/{quote(model, safe='')}"
        if version is not None:
            path += f"/versions/{quote(str(version), safe='')}"
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        wait = max(0.0, min(budget, SERVER_WAIT_MAX))
        response = self.send(
            "POST",
            f"{path}/infer",
            params={"timeout": f"{wait:g}"},
            json=body,
            timeout=wait + self.timeout,
        )
        if response.status_code == 200:
            return decode_outputs(response.json())
        task_path = response.headers.get("Location") or f"/v1/tasks/{response.json()['id']}"
        return decode_outputs(self._wait_task(task_path, deadline))

    def _wait_task(self, path: str, deadline: float) -> dict[str, Any]:
        """Poll a sync task (``/v1/tasks/{id}``) until it ends; its answer."""
        pause = 0.02
        while True:
            task = self.get(path)
            if task["status"] == "succeeded":
                return cast(dict[str, Any], task["result"])
            if task["status"] == "failed":
                error = task.get("error") or {}
                code = str(error.get("code", "failed"))
                raise InferenceFailed(
                    500,
                    "Inference failed",
                    f"task {task['id']}: {error.get('message', '')}",
                    type=f"urn:inferq:problem:{code.replace('_', '-')}",
                    problem=task,
                )
            if time.monotonic() + pause > deadline:
                raise ApiUnreachable(0, "Timed out", f"task {task['id']} is still {task['status']}")
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    # -- batch results ---------------------------------------------------------------------

    def results(
        self,
        batch_id: str,
        kind: Literal["output", "error"] = "output",
        progress: ByteProgress | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The lines of a finished batch's output (or ``kind="error"``: error) file, decoded one by
        one as they stream in. None at all when the batch has no such file (no line went there).

        Raises :class:`BatchNotFinished` when the batch has not ended yet.
        """
        if kind not in ("output", "error"):
            raise ValueError("kind must be 'output' or 'error'")
        batch = self.batches.get(batch_id)
        if batch["status"] not in FINAL_STATUSES:
            raise BatchNotFinished(batch)
        file_id = batch["output_file_id"] if kind == "output" else batch["error_file_id"]
        if file_id is None:
            return iter(())
        return decode_lines(self.files.content(file_id, progress=progress))


def encode_inputs(inputs: Inputs) -> list[dict[str, Any]]:
    """Protocol tensors (``{name, shape, datatype, data}``) for ``inputs`` (see :meth:`Client.infer`)."""
    items: Iterable[Any] = inputs.items() if isinstance(inputs, Mapping) else inputs
    tensors = []
    for item in items:
        if isinstance(item, Mapping):
            tensors.append(dict(item))
            continue
        name, value = item
        array = np.asarray(value)
        tensors.append(from_numpy(str(name), datatype_of(array.dtype), array))
    return tensors


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The Open Inference Protocol datatype of a numpy dtype (str, bytes and object are BYTES)."""
    if dtype.kind in "USO":
        return "BYTES"
    try:
        return _DATATYPES[dtype.name]
    except KeyError:
        raise ValueError(f"no Open Inference Protocol datatype for numpy dtype {dtype}") from None


def decode_outputs(answer: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``{output name: array}`` of an inference answer, each array of its datatype and shape."""
    return {tensor["name"]: to_numpy(tensor) for tensor in answer.get("outputs", [])}


def decode_lines(pieces: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """JSON lines from a stream of byte pieces (lines may span pieces); blank lines are skipped."""
    held = b""
    for piece in pieces:
        held += piece
        *lines, held = held.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)
    if held.strip():
        yield json.loads(held)


class Models:
    """The model registry (``/v1/models``); writes need an admin key."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def list(
        self,
        name: str | None = None,
        status: str | None = None,
        framework: str | None = None,
        labels: Sequence[str] = (),
        limit: int = 20,
        offset: int = 0,
    ) -> dict[str, Any]:
        """A page of models, newest first: ``{data, total, limit, offset}``; ``labels`` as ``key:value``."""
        params: dict[str, Any] = {"limit": limit, "offset": offset, "label": list(labels)}
        params.update({k: v for k, v in (("name", name), ("status", status), ("framework", framework)) if v})
        return cast(dict[str, Any], self._client.get("/v1/models", params=params))

    def get(self, model_id: str) -> dict[str, Any]:
        """A model by id."""
        return cast(dict[str, Any], self._client.get(f"/v1/models/{quote(model_id, safe='')}"))

    def by_name(self, name: str, version: str) -> dict[str, Any]:
        """A model by name and version."""
        path = f"/v1/models/by-name/{quote(name, safe='')}/{quote(version, safe='')}"
        return cast(dict[str, Any], self._client.get(path))

    def find(self, ref: str) -> dict[str, Any]:
        """A model by id, or by ``name:version``."""
        if ":" in ref:
            name, version = ref.split(":", 1)
            return self.by_name(name, version)
        return self.get(ref)

    def register(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Register a model version (``{name, version, triton_name, inputs, outputs, ...}``)."""
        return cast(dict[str, Any], self._client.post("/v1/models", dict(spec)))

    def update(self, model_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Change a model's fields."""
        return cast(dict[str, Any], self._client.put(f"/v1/models/{quote(model_id, safe='')}", dict(changes)))

    def delete(self, model_id: str) -> None:
        """Delete a model version that is not deployed."""
        self._client.delete(f"/v1/models/{quote(model_id, safe='')}")

    def deploy(self, model_id: str, gpus: Sequence[int]) -> dict[str, Any]:
        """Start loading a model on ``gpus``; the model comes back ``deploying``."""
        path = f"/v1/models/{quote(model_id, safe='')}/deploy"
        return cast(dict[str, Any], self._client.post(path, {"gpus": list(gpus)}))

    def undeploy(self, model_id: str, gpus: Sequence[int] | None = None) -> dict[str, Any]:
        """Unload a model from ``gpus`` (default: all)."""
        body = {"gpus": list(gpus)} if gpus is not None else {}
        path = f"/v1/models/{quote(model_id, safe='')}/undeploy"
        return cast(dict[str, Any], self._client.post(path, body))

    def stats(self, model_id: str) -> dict[str, Any]:
        """Requests, errors and latency percentiles, overall and per GPU."""
        return cast(dict[str, Any], self._client.get(f"/v1/models/{quote(model_id, safe='')}/stats"))


class Files:
    """The tenant's files (``/v1/files``): batch inputs, and the outputs and errors of batches."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def upload(
        self,
        file: str | os.PathLike[str] | IO[bytes],
        purpose: str = "batch_input",
        filename: str | None = None,
        progress: ByteProgress | None = None,
    ) -> FileObject:
        """Upload a JSONL file (a path or a binary file object), streamed: the file is read and sent
        a piece at a time, never held whole. ``progress(sent, total)`` is called as bytes go out
        (``total`` is None for a file object whose size cannot be known)."""
        if isinstance(file, str | os.PathLike):
            path = Path(file)
            size: int | None = path.stat().st_size
            name = filename or path.name

            def opener() -> IO[bytes]:
                return path.open("rb")

            replayable = True
        else:
            stream = file
            name = filename or Path(str(getattr(stream, "name", "") or "upload.jsonl")).name
            size, start = _remaining_size(stream)
            opener = _Unclosable(stream, start).open
            replayable = start is not None
        content_type = mimetypes.guess_type(name)[0] or "application/jsonl"
        if name.endswith((".jsonl", ".ndjson")):
            content_type = "application/jsonl"

        body = MultipartFile({"purpose": purpose}, "file", name, opener, size, content_type, progress)
        response = self._client.send(
            "POST",
            "/v1/files",
            data=body,
            headers={"Content-Type": body.content_type},
            idempotent=False,
            retry=replayable,  # 429 and 503 come before anything is stored: send it again if we can
            timeout=(self._client.timeout, max(self._client.timeout, 300.0)),
        )
        return cast(FileObject, response.json())

    def get(self, file_id: str) -> FileObject:
        """A file by id."""
        return cast(FileObject, self._client.get(f"/v1/files/{quote(file_id, safe='')}"))

    def list(self, purpose: str | None = None, limit: int | None = None, after: str | None = None) -> Page:
        """One page of the tenant's files, newest first (see :meth:`iter` for all of them)."""
        params = {
            k: v for k, v in (("purpose", purpose), ("limit", limit), ("after", after)) if v is not None
        }
        return cast(Page, self._client.get("/v1/files", params=params))

    def iter(self, purpose: str | None = None, page_size: int = 100) -> Iterator[FileObject]:
        """Every file of the tenant's, newest first, page after page."""
        yield from _pages(lambda after: self.list(purpose, page_size, after))

    def delete(self, file_id: str) -> dict[str, Any]:
        """Delete a file (not the input of a batch still running: 409)."""
        return cast(dict[str, Any], self._client.delete(f"/v1/files/{quote(file_id, safe='')}"))

    def content_url(self, file_id: str) -> str:
        """A presigned URL of the file's bytes (good for an hour), without downloading anything."""
        response = self._client.send(
            "GET", f"/v1/files/{quote(file_id, safe='')}/content", allow_redirects=False
        )
        location = response.headers.get("Location")
        if response.status_code not in (301, 302, 303, 307, 308) or not location:
            raise ApiError(response.status_code, "No redirect", "the content of a file is a redirect")
        return urljoin(response.url, location)

    def content(
        self, file_id: str, progress: ByteProgress | None = None, chunk_size: int = DOWNLOAD_CHUNK
    ) -> Iterator[bytes]:
        """The file's bytes, streamed from the object store in pieces.

        The API answers with a redirect to a presigned URL; that URL is fetched without
        the API key (the object store must not see it, and would refuse two auth schemes).
        """
        url = self.content_url(file_id)
        try:
            response = self._client._store.get(url, stream=True, timeout=self._client.timeout)
        except requests.RequestException as exc:
            raise ApiUnreachable(
                0, "Object store unreachable", f"{url.split('?')[0]}: {_connection_reason(exc)}"
            ) from None
        return _stream(response, progress, chunk_size)


def _stream(response: requests.Response, progress: ByteProgress | None, chunk_size: int) -> Iterator[bytes]:
    with response:
        if response.status_code >= 400:
            raise ApiError(
                response.status_code,
                "Object store refused the download",
                response.text[:200].strip(),
            )
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        received = 0
        if progress:
            progress(0, total)
        try:
            for piece in response.iter_content(chunk_size):
                received += len(piece)
                if progress:
                    progress(received, total)
                yield piece
        except requests.RequestException as exc:
            raise ApiUnreachable(0, "Download interrupted", _connection_reason(exc)) from None
        if total is not None and received != total:
            raise ApiUnreachable(0, "Download interrupted", f"{received} of {total} bytes received")


def _remaining_size(stream: IO[bytes]) -> tuple[int | None, int | None]:
    """(bytes left to read, the position to seek back to) of a file object; None where unknown."""
    try:
        start = stream.tell()
        if not stream.seekable():
            return None, None
        end = stream.seek(0, os.SEEK_END)
        stream.seek(start)
        return end - start, start
    except (OSError, AttributeError, ValueError):
        return None, None


def _params(**values: Any) -> dict[str, Any]:
    """Query parameters: those that are not None."""
    return {name: value for name, value in values.items() if value is not None}


def _pages(fetch: Callable[[str | None], Page]) -> Iterator[Any]:
    after: str | None = None
    while True:
        page = fetch(after)
        yield from page["data"]
        if not page["has_more"] or not page["data"]:
            return
        after = page["last_id"]


class Batches:
    """Batches (``/v1/batches``): run a model over every line of an uploaded JSONL file."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self,
        model: str,
        input_file_id: str,
        version: str | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Batch:
        """Create a batch (it starts ``validating``). The same ``idempotency_key`` again returns the
        batch it made (and makes the request safe to retry after a lost connection)."""
        body: dict[str, Any] = {"model": model, "input_file_id": input_file_id}
        if version is not None:
            body["version"] = version
        if metadata:
            body["metadata"] = dict(metadata)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return cast(Batch, self._client.post("/v1/batches", body, headers=headers))

    def get(self, batch_id: str) -> Batch:
        """A batch by id, with its status, counts and progress."""
        return cast(Batch, self._client.get(f"/v1/batches/{quote(batch_id, safe='')}"))

    def list(self, status: str | None = None, limit: int | None = None, after: str | None = None) -> Page:
        """One page of the tenant's batches, newest first (see :meth:`iter` for all of them)."""
        params = _params(status=status, limit=limit, after=after)
        return cast(Page, self._client.get("/v1/batches", params=params))

    def iter(self, status: str | None = None, page_size: int = 100) -> Iterator[Batch]:
        """Every batch of the tenant's, newest first, page after page."""
        yield from _pages(lambda after: self.list(status, page_size, after))

    def cancel(self, batch_id: str) -> Batch:
        """Cancel a batch: what finished stays, the rest ends in the error file as ``cancelled``."""
        return cast(Batch, self._client.post(f"/v1/batches/{quote(batch_id, safe='')}/cancel"))

    def wait(
        self,
        batch_id: str,
        poll: float = 2.0,
        timeout: float | None = None,
        progress: Callable[[Batch], None] | None = None,
    ) -> Batch:
        """Poll until the batch has ended (``completed``, ``failed`` or ``cancelled``); the final batch.

        Polls quickly at first, then every ``poll`` seconds; ``progress(batch)`` is called
        after each poll. Past ``timeout`` seconds raises :class:`WaitTimeout` (the batch
        runs on). A batch that failed or was cancelled is returned, not raised.
        """
        started = time.monotonic()
        pause = min(0.1, poll)
        while True:
            batch = self.get(batch_id)
            if progress:
                progress(batch)
            if batch["status"] in FINAL_STATUSES:
                return batch
            waited = time.monotonic() - started
            if timeout is not None and waited + pause > timeout:
                if waited < timeout:
                    time.sleep(max(0.0, timeout - waited))
                    batch = self.get(batch_id)
                    if progress:
                        progress(batch)
                    if batch["status"] in FINAL_STATUSES:
                        return batch
                raise WaitTimeout(batch, time.monotonic() - started)
            time.sleep(pause)
            pause = min(pause * 1.5, poll)
