"""Registry reads through the cache: what the API serves for models, and what inference resolves."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from registry.models import (
    ModelFilter,
    get_model,
    get_model_version,
    list_models,
    model_exists,
    ready_versions,
)
from webapp import db_session, services


def model_by_id(model_id: str) -> dict[str, Any] | None:
    def load() -> dict[str, Any] | None:
        model = get_model(db_session(), model_id)
        return model.as_dict() if model else None

    return services().cache.get(f"id:{model_id}", load)


def model_by_version(name: str, version: str) -> dict[str, Any] | None:
    def load() -> dict[str, Any] | None:
        model = get_model_version(db_session(), name, version)
        return model.as_dict() if model else None

    return services().cache.get(f"nv:{name}:{version}", load)


def serving_versions(name: str) -> dict[str, Any]:
    """``{"versions": ready versions of name, highest first, "exists": whether any version exists}``."""

    def load() -> dict[str, Any]:
        versions = ready_versions(db_session(), name)
        return {
            "versions": [model.as_dict() for model in versions],
            "exists": bool(versions) or model_exists(db_session(), name),
        }

    return services().cache.get(f"ready:{name}", load)


def model_page(query: ModelFilter) -> dict[str, Any]:
    def load() -> dict[str, Any]:
        rows, total = list_models(db_session(), query)
        return {
            "data": [m.as_dict() for m in rows],
            "total": total,
            "limit": query.limit,
            "offset": query.offset,
        }

    key = "list:" + json.dumps(dataclasses.asdict(query), sort_keys=True)
    return services().cache.get(key, load)
