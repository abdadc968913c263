"""The inferq REST API: a Flask app factory wiring blueprints, auth, errors and metrics."""

from __future__ import annotations

import re
import uuid
from typing import Any

from flask import Blueprint, Flask, current_app, g, request

from inferq.settings import Settings, load_settings
from tasks.runtime import Services

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def serve() -> Flask:
    """The app gunicorn serves (``inferq api``): :func:`create_app` from the environment, with the
    garbage collector tuned for a long-lived server (``inferq.services.tune_gc``)."""
    from inferq.services import tune_gc

    app = create_app()
    tune_gc()
    return app


def create_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    """Build the API for ``settings`` (the environment by default). Connects to nothing yet."""
    from registry.apikeys import KeyCache
    from tasks import create_celery_app
    from webapp import batches, docs, files, health, infer, metrics, models, task_status, v2
    from webapp.auth import authenticate_request
    from webapp.errors import register_error_handlers
    from webapp.ratelimit import KeyRateLimiter

    settings = settings or load_settings()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["inferq"] = services or Services(settings)
    app.extensions["celery"] = create_celery_app(settings)
    app.extensions["inferq.keys"] = KeyCache(settings.key_cache_ttl)
    app.extensions["inferq.ratelimit"] = KeyRateLimiter(
        settings.redis_url, settings.rate_limit, settings.cache_timeout, settings.rate_limit_fail_open
    )

    @app.before_request
    def _request_id() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex

    @app.before_request
    def _bound_reads() -> None:
        # gunicorn's gevent worker bounds only the wait for a request's head (--keep-alive);
        # a socket timeout drops a client that stops sending its body (or reading the answer).
        sock = request.environ.get("gunicorn.socket")
        if sock is not None:
            sock.settimeout(settings.api_read_timeout)

    @app.after_request
    def _echo_request_id(response: Any) -> Any:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        return response

    @app.teardown_request
    def _close_session(_: BaseException | None) -> None:
        session = g.pop("_db", None)
        if session is not None:
            session.close()

    from inferq.tracing import instrument_app

    instrument_app(app, settings)
    register_error_handlers(app)
    metrics.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(docs.bp)
    v1 = Blueprint("v1", __name__, url_prefix="/v1")
    v1.before_request(authenticate_request)
    v1.register_blueprint(infer.bp)
    v1.register_blueprint(models.bp)
    v1.register_blueprint(task_status.bp)
    v1.register_blueprint(files.bp)
    v1.register_blueprint(batches.bp)
    app.register_blueprint(v1)
    app.register_blueprint(v2.bp)
    return app


def services() -> Services:
    """The current app's :class:`Services`."""
    return current_app.extensions["inferq"]


def celery_app() -> Any:
    return current_app.extensions["celery"]


def send_task(name: str, args: list[Any], queue: str, task_id: str | None = None) -> None:
    """Queue a task by name on ``queue``; a broker that cannot take it is a 503."""
    from tasks.pipeline import publish

    publish(celery_app(), name, args, queue, task_id)


def parse_json_body(optional: bool = False) -> Any:
    """The request body as JSON, or a problem that says why it is not: 415 (not JSON), 413 (over
    ``INFERQ_MAX_REQUEST_BYTES``, with or without Content-Length), 408 (too slow), 400 (empty,
    nested too deeply, malformed). ``optional``: no body at all gives None."""
    from webapp.bodies import parse_json

    settings = services().settings
    return parse_json(request, settings.max_request_bytes, settings.api_read_timeout, optional)


def db_session() -> Any:
    """The request's SQLAlchemy session, opened on first use and closed at teardown."""
    session = g.get("_db")
    if session is None:
        session = g._db = services().db.sessions()
    return session
