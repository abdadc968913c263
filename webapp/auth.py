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
    current_app.extensions["inferq.ratelimit"].check(principal)


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
