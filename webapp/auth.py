"""API keys: ``Authorization: Bearer <key>`` on every /v1 request; the key names the tenant."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import current_app, g, request

from registry.apikeys import Principal
from webapp import services
from webapp.errors import ApiError

F = TypeVar("F", bound=Callable[..., Any])


def authenticate_request() -> None:
    """``before_request`` hook of the /v1 blueprint: sets ``g.principal`` or answers 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(
            401,
            "unauthorized",
            "Authentication required",
            "send the API key as 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": 'Bearer realm="inferq"'},
        )
    principal = current_app.extensions["inferq.keys"].authenticate(services().db, key.strip())
    if principal is None:
        raise ApiError(
            401,
            "unauthorized",
            "Invalid API key",
            "the API key is unknown or revoked",
            headers={"WWW-Authenticate": 'Bearer realm="inferq", error="invalid_token"'},
        )
    g.principal = principal
    view = current_app.view_functions.get(request.endpoint or "")
    if not getattr(view, "counts_in_pipeline", False):
        current_app.extensions["inferq.ratelimit"].check(principal)


class PipelineHit:
    """The rate-limit hit of a request that the sync pipeline counts in its record round trip
    (``tasks.pipeline.Admit``), queued at most once."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal
        self.counted = False

    def admit(self, pipe: Any) -> Callable[[list[Any]], BaseException | None]:
        if self.counted:
            return lambda replies: None
        self.counted = True
        verdict: Callable[[list[Any]], BaseException | None] = current_app.extensions[
            "inferq.ratelimit"
        ].add_hit(pipe, self.principal)
        return verdict

    def count_alone(self) -> None:
        """A request that ended before the pipeline counted it: count it now (429 when over)."""
        if not self.counted:
            self.counted = True
            current_app.extensions["inferq.ratelimit"].check(self.principal)


def counts_in_pipeline(view: F) -> F:
    """The rate limit of ``view`` (a sync inference) is counted in the pipeline's record round trip,
    not in a round trip of its own before the view; a request refused earlier (bad body, unknown
    model) is counted then, so every request counts, and one over the limit is a 429 as before."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        hit = g.pipeline_hit = PipelineHit(current_principal())
        try:
            return view(*args, **kwargs)
        finally:
            hit.count_alone()  # when not counted yet; over the limit, its 429 is the answer

    wrapper.counts_in_pipeline = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def current_principal() -> Principal:
    return g.principal


def admin_required(view: F) -> F:
    """Only admin keys may call ``view`` (registry writes)."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not current_principal().admin:
            raise ApiError(403, "forbidden", "Admin key required", "this operation needs an admin API key")
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
