"""Triton-compatible endpoints under ``/v2`` (the Open Inference Protocol over HTTP, with Triton's
binary tensor data extension), so that ``tritonclient.http`` code works by changing only its URL
and adding ``Authorization: Bearer <key>``.

Inference goes through the same request pipeline, router and GPU queues as ``/v1``
(``tasks.pipeline.infer``); ``webapp.v2_codec`` turns Triton's bodies into the pipeline's and back.
Errors are Triton's ``{"error": "message"}``. ``/v2/health/live`` and ``/v2/health/ready`` are open,
like ``/healthz`` and ``/readyz``; everything else needs the same key as ``/v1`` and counts
against its rate limit.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, Response, jsonify, request

from inferq import __version__
from registry.catalog import model_by_version, serving_versions
from tasks import pipeline
from tasks.pipeline import PipelineError
from webapp import services, v2_codec
from webapp.auth import authenticate_request, counts_in_pipeline
from webapp.bodies import read_body
from webapp.infer import counted_infer

log = logging.getLogger(__name__)

bp = Blueprint("v2", __name__, url_prefix="/v2")
health = Blueprint("health", __name__)  # open, like /healthz
api = Blueprint("api", __name__)
api.before_request(authenticate_request)

# What GET /v2 announces: only the extensions inferq implements.
EXTENSIONS = ["binary_tensor_data", "model_configuration"]
# Registry framework -> Triton's platform name (model metadata and config).
PLATFORMS = {
    "onnx": "onnxruntime_onnx",
    "tensorrt": "tensorrt_plan",
    "pytorch": "pytorch_libtorch",
    "torchscript": "pytorch_libtorch",
    "tensorflow": "tensorflow_savedmodel",
    "openvino": "openvino",
    "python": "python",
}
MAX_MESSAGE = 2048
BACKENDS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt", "pytorch_libtorch": "pytorch"}


def triton_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """Triton's error answer: ``{"error": message}`` with the status (the message clipped: it may
    quote the request)."""
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 1] + "\u2026"
    response = Response(json.dumps({"error": message}), status=status, mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _message(title: str, detail: str) -> str:
    return f"{title}: {detail}" if detail else title


@bp.after_app_request
def _triton_error_shape(response: Response) -> Response:
    """Every error on a /v2 path takes Triton's shape, ``{"error": message}``, with its status and
    headers: the app renders them as problem+json (pipeline errors, bad bodies, a database
    down, and also routes /v2 does not have: 404, 405), and this turns that into Triton's."""
    if response.mimetype != "application/problem+json" or not (
        request.path == "/v2" or request.path.startswith("/v2/")
    ):
        return response
    try:
        problem = json.loads(response.get_data())
        message = _message(str(problem.get("title", "Error")), str(problem.get("detail", "")))
    except (ValueError, AttributeError):
        message = response.status
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 1] + "\u2026"
    response.set_data(json.dumps({"error": message}))
    response.mimetype = "application/json"
    return response


@health.get("/health/live")
def live() -> Response:
    """200 while the process answers (Triton's liveness; no key needed)."""
    return Response(status=200)


@health.get("/health/ready")
def ready() -> Response:
    """200 when the API can take inference requests: the broker and the registry database answer
    (no key needed). Whether a model can run: ``/v2/models/{name}/ready``; every dependency: ``/readyz``."""
    from webapp.health import check_broker, check_database

    failed = []
    for name, check in (("broker", check_broker), ("database", check_database)):
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - any failure means not ready; reported in the message
            failed.append(f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    if failed:
        return triton_error(503, "Not ready: " + "; ".join(failed), {"Retry-After": "5"})
    return Response(status=200)


@api.get("")
def server_metadata() -> Any:
    """Triton's server metadata: name, version and the protocol extensions inferq implements."""
    return jsonify({"name": "inferq", "version": __version__, "extensions": EXTENSIONS})


def describe(name: str, version: str | None) -> tuple[dict[str, Any], list[str]]:
    """The registry record a model's metadata describes, and the versions to list: the version
    named (any status), or the newest ready one and every ready version."""
    if version is not None:
        model = model_by_version(services().db, services().cache, name, version)
        if model is None:
            raise PipelineError(
                404, "model-not-found", "Model not found", f"no model {name!r} version {version!r}"
            )
        return model, [model["version"]]
    found = serving_versions(services().db, services().cache, name)
    if not found["versions"]:
        if not found["exists"]:
            raise PipelineError(404, "model-not-found", "Model not found", f"no model named {name!r}")
        raise PipelineError(
            409,
            "model-not-ready",
            "Model not ready",
            f"no version of {name!r} is deployed; name a version for its metadata",
        )
    return found["versions"][0], [model["version"] for model in found["versions"]]


def platform(framework: str) -> str:
    return PLATFORMS.get(framework, framework)


@api.get("/models/<name>")
@api.get("/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None) -> Any:
    """Triton's model metadata: name, versions, platform, inputs and outputs (datatype, shape)."""
    model, versions = describe(name, version)
    return jsonify(
        {
            "name": name,
            "versions": versions,
            "platform": platform(model["framework"]),
            "inputs": model["inputs"],
            "outputs": model["outputs"],
        }
    )


@api.get("/models/<name>/ready")
@api.get("/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None) -> Response:
    """200 when inference on the model (version) can be routed: deployed and ready on a GPU;
    400 when it exists but is not (as Triton answers), 404 when unknown."""
    try:
        pipeline.resolve_model(services(), name, version)
    except PipelineError as exc:
        if exc.status != 409:
            raise
        return triton_error(400, _message(exc.title, exc.detail))
    return Response(status=200)


def _triton_type(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


@api.get("/models/<name>/config")
@api.get("/models/<name>/versions/<version>/config")
def model_config(name: str, version: str | None = None) -> Any:
    """Triton's model configuration, as inferq serves the model: its signature with every
    dimension explicit (``max_batch_size`` 0, a variable batch dimension is -1)."""
    model, _ = describe(name, version)
    platform_name = platform(model["framework"])

    def tensors(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {"name": spec["name"], "data_type": _triton_type(spec["datatype"]), "dims": spec["shape"]}
            for spec in specs
        ]

    return jsonify(
        {
            "name": name,
            "platform": platform_name,
            "backend": BACKENDS.get(platform_name, platform_name),
            "max_batch_size": 0,
            "input": tensors(model["inputs"]),
            "output": tensors(model["outputs"]),
        }
    )


@api.post("/models/<name>/infer")
@api.post("/models/<name>/versions/<version>/infer")
@counts_in_pipeline
def infer(name: str, version: str | None = None) -> Response:
    """One inference through the request pipeline, JSON or with binary tensors both ways.

    It waits for the answer up to ``INFERQ_SYNC_TIMEOUT_MAX`` seconds, or the request's
    ``parameters.timeout`` (Triton's, in microseconds) when shorter; past that, 504 naming the
    task, which runs on (``GET /v1/tasks/{id}``).
    """
    settings = services().settings
    raw = read_body(request, settings.max_request_bytes, settings.api_read_timeout)  # 413, 408
    raw = v2_codec.decompress(raw, request.headers.get("Content-Encoding"), settings.max_request_bytes)
    header, binary = v2_codec.split_body(raw, request.headers.get(v2_codec.HEADER_LENGTH))
    decoded = v2_codec.decode_request(header, binary)
    timeout = settings.sync_timeout_max
    if decoded.timeout is not None:
        timeout = min(timeout, decoded.timeout)
    result = counted_infer(name, version, decoded.body, timeout)
    if result.answer is None:
        raise PipelineError(
            504,
            "inference-timeout",
            "Inference not done in time",
            f"no answer within {timeout:g}s; task {result.task_id} runs on: GET /v1/tasks/{result.task_id}",
        )
    encoded = v2_codec.encode_response(result.answer, decoded)
    body, encoding = v2_codec.compress(encoded.body, request.headers.get("Accept-Encoding", ""))
    response = Response(body, 200, content_type=encoded.content_type)
    if encoded.header_length is not None:
        response.headers[v2_codec.HEADER_LENGTH] = str(encoded.header_length)
    if encoding is not None:
        response.headers["Content-Encoding"] = encoding
        response.headers["Vary"] = "Accept-Encoding"
    return response


bp.register_blueprint(health)
bp.register_blueprint(api)
