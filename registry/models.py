"""Registered models (one row per name and version), their labels, and their deployments on GPUs."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, UniqueConstraint, func, select
from sqlalchemy.ext.associationproxy import AssociationProxy, association_proxy
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship, selectinload
from sqlalchemy.orm.collections import attribute_keyed_dict

from registry.db import Base, UTCDateTime, new_id, utcnow
from registry.signatures import Problem, parse_specs

MODEL_STATUSES = ("registered", "deploying", "ready", "failed", "retired")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
MAX_LIMIT = 100
MAX_LABELS = 64


class ModelLabel(Base):
    """One ``key: value`` label of a model (a row each, so label filters are plain SQL)."""

    __tablename__ = "model_labels"

    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(63), primary_key=True)
    value: Mapped[str] = mapped_column(String(255), index=True)


class Model(Base):
    """One version of a model: its Triton name, signature and lifecycle status."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_models_name_version"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(64))
    framework: Mapped[str] = mapped_column(String(32), default="onnx")
    triton_name: Mapped[str] = mapped_column(String(128))
    inputs: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    outputs: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="registered", index=True)
    # Canary: share of the unversioned traffic of ``name`` (relative to the other ready versions'
    # weights). None everywhere: the newest ready version takes it all.
    traffic_weight: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)
    status_message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    deployments: Mapped[list[Deployment]] = relationship(
        back_populates="model", cascade="all, delete-orphan", order_by="Deployment.gpu"
    )
    label_rows: Mapped[dict[str, ModelLabel]] = relationship(
        collection_class=attribute_keyed_dict("key"), cascade="all, delete-orphan"
    )
    labels: AssociationProxy[dict[str, str]] = association_proxy(
        "label_rows", "value", creator=lambda key, value: ModelLabel(key=key, value=value)
    )

    @property
    def triton_version(self) -> str:
        """The Triton version to ask for: the registry version when numeric, else Triton's latest."""
        return self.version if self.version.isdigit() else ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "framework": self.framework,
            "triton_name": self.triton_name,
            "triton_version": self.triton_version,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "description": self.description,
            "labels": dict(sorted(self.labels.items())),
            "status": self.status,
            "status_message": self.status_message,
            "traffic_weight": self.traffic_weight,
            "deployments": [d.as_dict() for d in self.deployments],
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


class Deployment(Base):
    """A model version loaded (or being loaded) on one GPU's Triton."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("model_id", "gpu", name="uq_deployments_model_gpu"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    gpu: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="loading")
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    model: Mapped[Model] = relationship(back_populates="deployments")

    def as_dict(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu,
            "status": self.status,
            "message": self.message,
            "updated_at": self.updated_at.isoformat(),
        }


# Deployment statuses: a GPU that serves the model (``reloading``: ready, and a redeploy is loading
# the new copy), and one whose load is under way.
SERVING = ("ready", "reloading")
LOADING = ("loading", "reloading")


def ready_gpus(model: Mapping[str, Any]) -> list[int]:
    """GPUs where a model (as ``Model.as_dict()``) is loaded and serves."""
    return [d["gpu"] for d in model["deployments"] if d["status"] in SERVING]


def version_key(version: str) -> tuple[int, int, str]:
    """Order versions numerically where they are numbers ("10" after "9"), else by text."""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


def _loaded() -> Any:
    return select(Model).options(selectinload(Model.deployments), selectinload(Model.label_rows))


def get_model(session: Session, model_id: str) -> Model | None:
    return session.scalar(_loaded().where(Model.id == model_id))


def get_model_version(session: Session, name: str, version: str) -> Model | None:
    return session.scalar(_loaded().where(Model.name == name, Model.version == version))


def ready_versions(session: Session, name: str) -> list[Model]:
    """Every ready version of ``name``, highest version first."""
    candidates = session.scalars(_loaded().where(Model.name == name, Model.status == "ready")).all()
    return sorted(candidates, key=lambda m: version_key(m.version), reverse=True)


def pick_version(
    versions: Sequence[dict[str, Any]], rng: random.Random | None = None
) -> dict[str, Any] | None:
    """The version that serves one unversioned request (``versions``: ready ones, highest first).

    Without any ``traffic_weight`` the highest version serves everything. Once a
    version has a weight, traffic is split by weight (versions without one get
    none); when every weight is 0, the highest version serves.
    """
    if not versions:
        return None
    weights = [v.get("traffic_weight") for v in versions]
    if all(w is None for w in weights) or not any(w for w in weights):
        return versions[0]
    return (rng or random).choices(list(versions), weights=[w or 0 for w in weights])[0]


def model_exists(session: Session, name: str) -> bool:
    return session.scalar(select(Model.id).where(Model.name == name).limit(1)) is not None


@dataclass(frozen=True)
class ModelFilter:
    """Filters and page of ``GET /v1/models``."""

    name: str | None = None
    status: str | None = None
    framework: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    limit: int = 20
    offset: int = 0


def list_models(session: Session, query: ModelFilter) -> tuple[list[Model], int]:
    """One page of models matching every filter, newest first (ties by id), and the total count."""
    conditions = []
    if query.name is not None:
        conditions.append(Model.name == query.name)
    if query.status is not None:
        conditions.append(Model.status == query.status)
    if query.framework is not None:
        conditions.append(Model.framework == query.framework)
    for key, value in query.labels:
        conditions.append(
            select(ModelLabel.model_id)
            .where(ModelLabel.model_id == Model.id, ModelLabel.key == key, ModelLabel.value == value)
            .exists()
        )
    total = session.scalar(select(func.count()).select_from(Model).where(*conditions)) or 0
    rows = session.scalars(
        _loaded()
        .where(*conditions)
        .order_by(Model.created_at.desc(), Model.id.desc())
        .limit(query.limit)
        .offset(query.offset)
    ).all()
    return list(rows), total


# --- validation of registry writes -------------------------------------------------

CREATE_FIELDS = (
    "name",
    "version",
    "framework",
    "triton_name",
    "inputs",
    "outputs",
    "description",
    "labels",
    "traffic_weight",
)
MAX_WEIGHT = 1000
UPDATE_FIELDS = (*CREATE_FIELDS, "status")


def validate_model_fields(body: Any, *, partial: bool) -> tuple[dict[str, Any], list[Problem]]:
    """Check a create (``partial=False``) or update body; return the clean values and the problems."""
    if not isinstance(body, dict):
        return {}, [Problem("/", "the request body must be a JSON object")]
    allowed = UPDATE_FIELDS if partial else CREATE_FIELDS
    problems = [
        Problem(f"/{key}", f"unknown field; allowed: {', '.join(allowed)}")
        for key in body
        if key not in allowed
    ]
    values: dict[str, Any] = {}
    if not partial:
        problems += [
            Problem(f"/{key}", "is required")
            for key in ("name", "version", "inputs", "outputs")
            if key not in body
        ]

    def text(key: str, pattern: re.Pattern[str] | None, maximum: int, what: str) -> None:
        if key not in body:
            return
        value = body[key]
        if not isinstance(value, str) or len(value) > maximum or (pattern and not pattern.match(value)):
            problems.append(Problem(f"/{key}", what))
        else:
            values[key] = value

    text("name", NAME, 128, "must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
    text(
        "version",
        VERSION,
        64,
        "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
    )
    text("triton_name", NAME, 128, "must be a Triton model name (letters, digits, '.', '_', '-')")
    text(
        "framework", re.compile(r"^[a-z0-9_.-]{1,32}$"), 32, "must be a lower-case framework name, e.g. onnx"
    )
    text("description", None, 10_000, "must be a string of at most 10000 characters")
    for key in ("inputs", "outputs"):
        if key in body:
            specs, found = parse_specs(body[key], f"/{key}")
            problems += found
            if not found:
                values[key] = [spec.as_dict() for spec in specs]
    if "labels" in body:
        labels = body["labels"]
        if not isinstance(labels, dict):
            problems.append(Problem("/labels", "must be an object of string keys and values"))
        elif len(labels) > MAX_LABELS:
            problems.append(Problem("/labels", f"at most {MAX_LABELS} labels per model"))
        else:
            for key, value in labels.items():
                if not LABEL_KEY.match(key):
                    problems.append(
                        Problem(f"/labels/{key}", "label keys are 1-63 letters, digits, '.', '_', '/', '-'")
                    )
                elif not isinstance(value, str) or len(value) > 255:
                    problems.append(
                        Problem(f"/labels/{key}", "label values are strings of at most 255 characters")
                    )
            values["labels"] = labels
    if "traffic_weight" in body:
        weight = body["traffic_weight"]
        if weight is not None and (
            not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= MAX_WEIGHT
        ):
            problems.append(Problem("/traffic_weight", f"must be an integer from 0 to {MAX_WEIGHT}, or null"))
        else:
            values["traffic_weight"] = weight
    if "status" in body:
        if body["status"] not in ("registered", "retired"):
            problems.append(
                Problem("/status", "may only be set to 'retired' or 'registered'; deploy makes it ready")
            )
        else:
            values["status"] = body["status"]
    if not partial and not problems:
        values.setdefault("framework", "onnx")
        values.setdefault("triton_name", values["name"])
        values.setdefault("description", "")
        values.setdefault("labels", {})
    return values, problems


def apply_fields(model: Model, values: Mapping[str, Any]) -> None:
    """Set validated fields on a model."""
    for key, value in values.items():
        if key == "labels":
            model.labels.clear()
            model.labels.update(value)
        else:
            setattr(model, key, value)


# --- deployments -------------------------------------------------------------------


def set_deployment(session: Session, model: Model, gpu: int, status: str, message: str = "") -> Deployment:
    """Record (or update) the deployment of ``model`` on ``gpu``."""
    for deployment in model.deployments:
        if deployment.gpu == gpu:
            deployment.status, deployment.message = status, message
            return deployment
    deployment = Deployment(gpu=gpu, status=status, message=message)
    model.deployments.append(deployment)
    return deployment


def settle_status(model: Model) -> None:
    """Derive the model's status from its deployments: ready while any GPU serves it."""
    statuses = {d.status for d in model.deployments}
    if statuses & set(SERVING):
        model.status, model.status_message = "ready", ""
    elif "loading" in statuses:
        model.status, model.status_message = "deploying", ""
    elif "ready" in statuses:
        model.status, model.status_message = "ready", ""
    elif "failed" in statuses:
        model.status = "failed"
        model.status_message = "; ".join(f"gpu {d.gpu}: {d.message}" for d in model.deployments if d.message)
    elif model.status != "retired":
        model.status, model.status_message = "registered", ""
