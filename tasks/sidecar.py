"""INFERQ_TRITON_SIDECAR: each GPU worker has a Triton of its own (a sidecar container in its pod),
and several pods serve one GPU queue. A deploy loads the model through the GPU's Service, which
reaches one of those Tritons; so each worker loads into its own Triton what the registry says its
GPU serves: in the background from its start on (every INFERQ_RECONCILE_INTERVAL), and at once
when a call finds a model missing that should be there.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import select

from registry.models import SERVING, Deployment, Model
from tasks.maintenance import reconcile
from tasks.runtime import Services
from workers.triton import TritonError

log = logging.getLogger(__name__)
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
_stop = threading.Event()
_failed_until: dict[str, float] = {}  # Triton model name -> monotonic time before which no new try
HEAL_BACKOFF = 30.0


def serves(services: Services, gpu: int, triton_name: str) -> bool:
    """Whether the registry says a model served by ``triton_name`` is deployed on ``gpu``."""
    with services.db.session() as session:
        found = session.execute(
            select(Deployment.id)
            .join(Model)
            .where(Deployment.gpu == gpu, Deployment.status.in_(SERVING), Model.triton_name == triton_name)
            .limit(1)
        ).first()
    return found is not None


def heal(services: Services, gpu: int, triton_name: str) -> bool:
    """Load ``triton_name`` into this worker's own Triton if it should be there; True when it is
    there now (another thread may have loaded it meanwhile). False outside sidecar mode, and for
    ``HEAL_BACKOFF`` seconds after a load that failed (a model this Triton cannot load is not
    asked for again on every request)."""
    if not services.settings.triton_sidecar:
        return False
    if time.monotonic() < _failed_until.get(triton_name, 0.0) or not serves(services, gpu, triton_name):
        return False
    with _locks_guard:
        lock = _locks.setdefault(triton_name, threading.Lock())
    with lock:  # one load per model at a time; the other threads wait for it
        if time.monotonic() < _failed_until.get(triton_name, 0.0):
            return False  # it failed while this thread waited for the lock
        endpoint = services.triton(gpu)
        try:
            if triton_name not in endpoint.loaded_models():
                log.warning(
                    "sidecar: gpu %s: %s missing from this worker's Triton; loading it", gpu, triton_name
                )
                endpoint.load_model(triton_name)
        except TritonError as exc:
            log.warning("sidecar: gpu %s: loading %s failed: %s", gpu, triton_name, exc)
            _failed_until[triton_name] = time.monotonic() + HEAL_BACKOFF
            return False
    return True


def keep_loaded(services: Services, gpu: int) -> threading.Thread:
    """Start the background pass that keeps this worker's Triton true to the registry."""
    _stop.clear()

    def loop() -> None:
        while not _stop.is_set():
            try:
                reconcile(services, [gpu], mark=False)  # logs what it did
            except Exception:  # the database or Triton away: the next pass tries again
                log.exception("sidecar: gpu %s: reconcile pass failed", gpu)
            _stop.wait(services.settings.reconcile_interval)

    thread = threading.Thread(target=loop, name=f"inferq-sidecar-gpu{gpu}", daemon=True)
    thread.start()
    return thread


def stop() -> None:
    _stop.set()
