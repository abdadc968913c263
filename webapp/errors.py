"""One error type for the API, rendered as RFC 9457 problem details (application/problem+json)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, json
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from registry.db import DatabaseUnavailable
from registry.signatures import Problem
from tasks.pipeline import PipelineError

log = logging.getLogger(__name__)
PROBLEM_TYPE = "urn:inferq:problem:{}"
# A problem document stays small whatever the request: the first MAX_ERRORS field problems
# (and ``errors_omitted``: how many more), each pointer and detail clipped.
MAX_ERRORS = 20
MAX_POINTER = 256
MAX_DETAIL = 1024


class ApiError(Exception):
    """An error the API answers with: status, a stable ``kind`` slug, a title and a detail."""

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str = "",
        errors: list[Problem] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status, self.kind, self.title, self.detail = status, kind, title, detail
        self.errors = errors or []
        self.headers = headers or {}


class ServiceUnavailable(ApiError):
    """A backing service (broker, database, Redis, object store, Triton) is down: 503."""

    def __init__(self, service: str, detail: str) -> None:
        super().__init__(
            503,
            f"{service}-unavailable",
            f"The {service} is unavailable",
            detail,
            headers={"Retry-After": "5"},
        )


def validation_error(problems: list[Problem], title: str = "The request is not valid") -> ApiError:
    detail = "; ".join(f"{p.pointer}: {p.detail}" for p in problems[:5])
    return ApiError(400, "invalid-request", title, detail, errors=problems)


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (an ellipsis says it was cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def problem_response(error: ApiError) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE.format(error.kind),
        "title": error.title,
        "status": error.status,
        "detail": clip(error.detail, MAX_DETAIL),
    }
    if error.errors:
        body["errors"] = [
            {"pointer": clip(p.pointer, MAX_POINTER), "detail": clip(p.detail, MAX_DETAIL)}
            for p in error.errors[:MAX_ERRORS]
        ]
        if len(error.errors) > MAX_ERRORS:
            body["errors_omitted"] = len(error.errors) - MAX_ERRORS
    request_id = getattr(g, "request_id", None)
    if request_id:
        body["request_id"] = request_id
    response = Response(json.dumps(body), status=error.status, mimetype="application/problem+json")
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask) -> None:
    """Map every exception the API can meet to problem+json."""

    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        return problem_response(error)

    @app.errorhandler(PipelineError)
    def _pipeline_error(error: PipelineError) -> Response:
        headers = {}
        if error.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(error.retry_after)))
        return problem_response(
            ApiError(error.status, error.code, error.title, error.detail, error.problems, headers)
        )

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        kind = (error.name or "error").lower().replace(" ", "-")
        response = problem_response(ApiError(status, kind, error.name or "Error", error.description or ""))
        if status == 405 and error.get_response().headers.get("Allow"):
            response.headers["Allow"] = error.get_response().headers["Allow"]
        return response

    @app.errorhandler(DatabaseUnavailable)
    @app.errorhandler(OperationalError)
    def _database_down(error: Exception) -> Response:
        log.warning("database unavailable: %s", error)
        return problem_response(ServiceUnavailable("database", "the registry database cannot be reached"))

    @app.errorhandler(DBAPIError)
    def _database_error(error: DBAPIError) -> Response:
        if error.connection_invalidated:
            return _database_down(error)
        log.exception("database error")
        return problem_response(ApiError(500, "internal-error", "Internal server error"))

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error")
        return problem_response(
            ApiError(
                500,
                "internal-error",
                "Internal server error",
                "an unexpected error occurred; the request id is in the logs",
            )
        )
