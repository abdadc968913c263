"""The Triton boundary: Open Inference Protocol calls over tritonclient's HTTP client.

tritonclient and socket errors are translated here into :class:`TritonError`
subclasses; nothing above this module imports tritonclient.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from inferq.tensors import from_numpy, to_numpy


class TritonError(Exception):
    """Triton answered with an error, or could not be asked."""

    code = "triton_error"


class TritonUnavailable(TritonError):
    """Triton could not be reached, timed out, or said it is not ready: worth a retry."""

    code = "backend_unavailable"


class TritonRejected(TritonError):
    """Triton refused the request itself (bad input): a retry would fail the same way."""

    code = "invalid_request"


class TritonModelNotFound(TritonError):
    """The model (or version) is not loaded on this Triton."""

    code = "model_not_loaded"


def _translate(exc: BaseException, url: str) -> TritonError:
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        message = exc.message() or str(exc)
        status = str(exc.status() or "")
        lowered = message.lower()
        if "unknown model" in lowered or "no available versions" in lowered or "not found" in lowered:
            return TritonModelNotFound(message)
        if status.startswith("5") or "unavailable" in lowered or "not ready" in lowered:
            return TritonUnavailable(f"{url}: {message}")
        return TritonRejected(message)
    return TritonUnavailable(f"{url}: {type(exc).__name__}: {exc}")


class TritonEndpoint:
    """One Triton server (one GPU's). Thread-safe: each thread gets its own HTTP client."""

    def __init__(self, url: str, timeout: float = 10.0, load_timeout: float = 600.0) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        self.url = url
        self._address = parts.netloc
        self._ssl = parts.scheme == "https"
        self.timeout = timeout  # inference and health calls
        self.load_timeout = load_timeout  # loading and unloading models, which can take minutes
        self._local = threading.local()

    def _client(self, slow: bool = False) -> Any:
        attr = "slow_client" if slow else "client"
        client = getattr(self._local, attr, None)
        if client is None:
            import tritonclient.http as httpclient

            timeout = self.load_timeout if slow else self.timeout
            client = httpclient.InferenceServerClient(
                self._address, ssl=self._ssl, connection_timeout=min(timeout, 10.0), network_timeout=timeout
            )
            setattr(self._local, attr, client)
        return client

    def _call(self, method: str, *args: Any, slow: bool = False, **kwargs: Any) -> Any:
        try:
            return getattr(self._client(slow), method)(*args, **kwargs)
        except Exception as exc:
            # A broken connection leaves the client unusable; start afresh next time.
            self.close()
            raise _translate(exc, self.url) from exc

    def close(self) -> None:
        for attr in ("client", "slow_client"):
            client = getattr(self._local, attr, None)
            setattr(self._local, attr, None)
            if client is not None:
                with contextlib.suppress(Exception):  # closing a dead connection may fail too
                    client.close()

    def is_live(self) -> bool:
        """Triton's liveness (``/v2/health/live``): the server answers and can serve its ready models.

        Under Triton's default strict readiness one failed model load makes the
        whole server "not ready", so health checks of a GPU use liveness.
        """
        return bool(self._call("is_server_live"))

    def model_ready(self, name: str, version: str = "") -> bool:
        return bool(self._call("is_model_ready", name, version))

    def loaded_models(self) -> set[str]:
        """Names of the models Triton has loaded and ready (its repository index)."""
        index = self._call("get_model_repository_index")
        return {str(entry["name"]) for entry in index or [] if entry.get("state") == "READY"}

    def load_model(self, name: str) -> None:
        """Load (or reload) ``name`` from Triton's repository (explicit model control)."""
        self._call("load_model", name, slow=True)

    def unload_model(self, name: str) -> None:
        self._call("unload_model", name, slow=True)

    def infer_arrays(
        self,
        model: str,
        inputs: Mapping[str, tuple[str, np.ndarray]],
        outputs: Sequence[str] | None = None,
        version: str = "",
        request_id: str = "",
    ) -> dict[str, tuple[str, np.ndarray]]:
        """Run one inference on numpy arrays (``name -> (datatype, array)``), as binary tensors both ways."""
        import tritonclient.http as httpclient

        infer_inputs = []
        for name, (datatype, array) in inputs.items():
            item = httpclient.InferInput(name, list(array.shape), datatype)
            item.set_data_from_numpy(array, binary_data=True)
            infer_inputs.append(item)
        requested = [httpclient.InferRequestedOutput(name, binary_data=True) for name in outputs or ()]
        result = self._call(
            "infer",
            model,
            infer_inputs,
            model_version=version,
            outputs=requested or None,
            request_id=request_id,
        )
        response = result.get_response()
        return {
            meta["name"]: (meta["datatype"], result.as_numpy(meta["name"]))
            for meta in response.get("outputs", [])
        }

    def infer(
        self,
        model: str,
        inputs: Sequence[Mapping[str, Any]],
        outputs: Sequence[str] | None = None,
        version: str = "",
        request_id: str = "",
    ) -> list[dict[str, Any]]:
        """Run one inference; inputs and outputs are protocol tensors with flat ``data`` lists."""
        arrays = {tensor["name"]: (tensor["datatype"], to_numpy(tensor)) for tensor in inputs}
        answer = self.infer_arrays(model, arrays, outputs, version, request_id)
        return [from_numpy(name, datatype, array) for name, (datatype, array) in answer.items()]
