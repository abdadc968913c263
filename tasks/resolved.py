"""A model version as a request runs on it, and the models a process resolved before (reused by
sync requests while the registry is unchanged: see :class:`ResolvedModels`)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from registry.models import ready_gpus
from registry.signatures import TensorSpec, specs_from_json
from tasks.errors import PipelineError


@dataclass(frozen=True)
class ResolvedModel:
    """The model version a request runs on, as the registry (through its cache) describes it."""

    id: str
    name: str
    version: str
    triton_name: str
    triton_version: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    gpus: list[int]  # where it is deployed and ready
    # Set when this came from the process's memo (:class:`ResolvedModels`) without a registry
    # read: the generation it holds for, which the dispatch checks in its record round trip.
    reused_at: str | None = None

    @classmethod
    def from_record(cls, model: dict[str, Any]) -> ResolvedModel:
        return cls(
            id=model["id"],
            name=model["name"],
            version=model["version"],
            triton_name=model["triton_name"],
            triton_version=model["triton_version"],
            inputs=specs_from_json(model["inputs"]),
            outputs=specs_from_json(model["outputs"]),
            gpus=ready_gpus(model),
        )


class StaleModel(PipelineError):
    """A model reused from the memo changed in the registry before the request was published."""

    def __init__(self) -> None:
        super().__init__(503, "registry-changed", "Registry changed", "the model changed; try again")


class ResolvedModels:
    """Models this process resolved, reused by sync requests without a registry read.

    An entry is the registry's answer for a name (and version) at one registry generation
    (``registry.cache``); a request that reuses it publishes only if the generation its
    record round trip reads is still that one (:class:`StaleModel` otherwise, and the
    request resolves again), so a request that starts after a registry write sees it, as
    with the cache. Only answers that resolve (ready models) are kept, for ``MEMO_TTL``
    seconds at most (a Redis that lost its generation counter could count back to it).
    """

    MEMO_TTL = 5.0
    MEMO_SIZE = 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[
            tuple[str, str | None], tuple[str, float, list[dict[str, Any]], list[ResolvedModel]]
        ] = {}

    def get(
        self, name: str, version: str | None
    ) -> tuple[str, list[dict[str, Any]], list[ResolvedModel]] | None:
        entry = self._entries.get((name, version))
        if entry is None or time.monotonic() - entry[1] > self.MEMO_TTL:
            return None
        return entry[0], entry[2], entry[3]

    def put(self, name: str, version: str | None, generation: str, records: list[dict[str, Any]]) -> None:
        if not all(model["status"] == "ready" and ready_gpus(model) for model in records):
            return
        resolved = [ResolvedModel.from_record(model) for model in records]
        with self._lock:
            if len(self._entries) >= self.MEMO_SIZE:
                self._entries.clear()
            self._entries[(name, version)] = (generation, time.monotonic(), records, resolved)

    def seen(self, generation: str) -> None:
        """A dispatch read ``generation``: entries of any other are stale."""
        with self._lock:
            for key in [key for key, entry in self._entries.items() if entry[0] != generation]:
                del self._entries[key]
