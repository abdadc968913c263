"""Registering repository models and deploying them on GPUs through each GPU's Triton."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy.orm import Session

from registry.models import Model, get_model_version, set_deployment, settle_status
from registry.triton_repository import describe_model_dir, model_dirs
from workers.triton import TritonEndpoint, TritonError


def register_repository(session: Session, repository: Path) -> list[Model]:
    """Register every model version found in a Triton repository (those not registered yet)."""
    registered = []
    for model_dir in model_dirs(repository):
        for entry in describe_model_dir(model_dir):
            model = get_model_version(session, entry["name"], entry["version"])
            if model is None:
                model = Model(**entry)
                session.add(model)
                session.flush()
            registered.append(model)
    return registered


def deploy(
    session: Session, model: Model, gpus: Sequence[int], triton: Callable[[int], TritonEndpoint]
) -> Model:
    """Load ``model`` on each GPU's Triton and record one deployment per GPU.

    The model moves to ``ready`` when at least one GPU loaded it, ``failed`` (with
    Triton's message) when none did. The caller commits.
    """
    model.status = "deploying"
    for gpu in gpus:
        set_deployment(session, model, gpu, "loading")
    session.flush()
    for gpu in gpus:
        endpoint = triton(gpu)
        try:
            endpoint.load_model(model.triton_name)
            if not endpoint.model_ready(model.triton_name, model.triton_version):
                raise TritonError(
                    f"Triton loaded {model.triton_name!r} but version {model.version!r} is not ready"
                )
            set_deployment(session, model, gpu, "ready")
        except TritonError as exc:
            set_deployment(session, model, gpu, "failed", str(exc))
    settle_status(model)
    session.flush()
    return model
