"""Registry reads through the cache: what the API serves for models, and what inference resolves.

Each read opens a database session only on a cache miss, and closes it before
returning, so a caller that goes on to wait (a sync request) holds none.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from registry.cache import RegistryCache
from registry.db import Database
from registry.models import (
    ModelFilter,
    get_model,
    get_model_version,
    list_models,
    model_exists,
    ready_versions,
)


def model_by_id(db: Database, cache: RegistryCache, model_id: str) -> dict[str, Any] | None:
    def load() -> dict[str, Any] | None:
        with db.session() as session:
            model = get_model(session, model_id)
            return model.as_dict() if model else None

    return cache.get(f"id:{model_id}", load)


def model_by_version(db: Database, cache: RegistryCache, name: str, version: str) -> dict[str, Any] | None:
    return model_by_version_at(db, cache, name, version)[1]


def model_by_version_at(
    db: Database, cache: RegistryCache, name: str, version: str
) -> tuple[str | None, dict[str, Any] | None]:
    """:func:`model_by_version` and the registry generation it is current for (``RegistryCache.get_at``)."""

    def load() -> dict[str, Any] | None:
        with db.session() as session:
            model = get_model_version(session, name, version)
            return model.as_dict() if model else None

    found: tuple[str | None, dict[str, Any] | None] = cache.get_at(f"nv:{name}:{version}", load)
    return found


def serving_versions(db: Database, cache: RegistryCache, name: str) -> dict[str, Any]:
    """``{"versions": ready versions of name, highest first, "exists": whether any version exists}``."""
    return serving_versions_at(db, cache, name)[1]


def serving_versions_at(db: Database, cache: RegistryCache, name: str) -> tuple[str | None, dict[str, Any]]:
    """:func:`serving_versions` and the registry generation it is current for."""

    def load() -> dict[str, Any]:
        with db.session() as session:
            versions = ready_versions(session, name)
            return {
                "versions": [model.as_dict() for model in versions],
                "exists": bool(versions) or model_exists(session, name),
            }

    found: tuple[str | None, dict[str, Any]] = cache.get_at(f"ready:{name}", load)
    return found


def model_page(db: Database, cache: RegistryCache, query: ModelFilter) -> dict[str, Any]:
    def load() -> dict[str, Any]:
        with db.session() as session:
            rows, total = list_models(session, query)
            return {
                "data": [m.as_dict() for m in rows],
                "total": total,
                "limit": query.limit,
                "offset": query.offset,
            }

    key = "list:" + json.dumps(dataclasses.asdict(query), sort_keys=True)
    return cache.get(key, load)
