"""Registered models (one row per name and version) and their deployments on GPUs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, UniqueConstraint, select
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship, selectinload

from registry.db import Base, UTCDateTime, new_id, utcnow
from registry.signatures import TensorSpec, specs_from_json

MODEL_STATUSES = ("registered", "deploying", "ready", "failed", "retired")
DEPLOYMENT_STATUSES = ("loading", "ready", "failed")


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
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="registered", index=True)
    status_message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    deployments: Mapped[list[Deployment]] = relationship(
        back_populates="model", cascade="all, delete-orphan", order_by="Deployment.gpu"
    )

    @property
    def input_specs(self) -> list[TensorSpec]:
        return specs_from_json(self.inputs)

    @property
    def output_specs(self) -> list[TensorSpec]:
        return specs_from_json(self.outputs)

    @property
    def triton_version(self) -> str:
        """The Triton version to ask for: the registry version when numeric, else Triton's latest."""
        return self.version if self.version.isdigit() else ""

    def ready_gpus(self) -> list[int]:
        return [d.gpu for d in self.deployments if d.status == "ready"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "framework": self.framework,
            "triton_name": self.triton_name,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "description": self.description,
            "labels": self.labels,
            "status": self.status,
            "status_message": self.status_message,
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


def version_key(version: str) -> tuple[int, int, str]:
    """Order versions numerically where they are numbers ("10" after "9"), else by text."""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


def get_model(session: Session, model_id: str) -> Model | None:
    return session.scalar(select(Model).options(selectinload(Model.deployments)).where(Model.id == model_id))


def get_model_version(session: Session, name: str, version: str) -> Model | None:
    return session.scalar(
        select(Model)
        .options(selectinload(Model.deployments))
        .where(Model.name == name, Model.version == version)
    )


def newest_ready_version(session: Session, name: str) -> Model | None:
    """The highest version of ``name`` whose status is ``ready``."""
    candidates = session.scalars(
        select(Model)
        .options(selectinload(Model.deployments))
        .where(Model.name == name, Model.status == "ready")
    ).all()
    return max(candidates, key=lambda m: version_key(m.version), default=None)


def model_exists(session: Session, name: str) -> bool:
    return session.scalar(select(Model.id).where(Model.name == name).limit(1)) is not None


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
    """Derive the model's status from its deployments after a deploy."""
    statuses = {d.status for d in model.deployments}
    if "ready" in statuses:
        model.status, model.status_message = "ready", ""
    elif "failed" in statuses:
        model.status = "failed"
        model.status_message = "; ".join(f"gpu {d.gpu}: {d.message}" for d in model.deployments if d.message)
    elif "loading" in statuses:
        model.status = "deploying"
    else:
        model.status = "registered"
