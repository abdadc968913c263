"""OpenTelemetry tracing of the API and the workers (OTLP to Jaeger or any collector).

Off unless ``INFERQ_OTLP_ENDPOINT`` (e.g. ``http://jaeger:4318``) or ``INFERQ_TRACE_FILE``
(JSON lines, for local debugging) is set. The Flask and Celery instrumentations carry the
trace from the HTTP request through the task message into the worker, so one trace
shows the request, the queueing, the task and its Triton call.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

from inferq.settings import Settings

_lock = threading.Lock()
_configured: dict[str, Any] = {}


class JsonLinesExporter:
    """Appends finished spans to a file, one JSON object per line."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        lines = [json.dumps(json.loads(span.to_json()), separators=(",", ":")) for span in spans]
        with self._lock, open(self.path, "a") as out:
            out.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def enabled(settings: Settings) -> bool:
    return bool(settings.otlp_endpoint or settings.trace_file)


def setup_tracing(settings: Settings, service: str) -> Any:
    """This process's tracer provider (one per process, made on first use); None when tracing is off.

    A later call with another destination adds it to the same provider (OpenTelemetry
    allows one global provider per process).
    """
    if not enabled(settings):
        return None
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    with _lock:
        provider = _configured.get("provider")
        if provider is None:
            from opentelemetry import trace
            from opentelemetry.instrumentation.celery import CeleryInstrumentor
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider

            provider = TracerProvider(resource=Resource.create({"service.name": service}))
            trace.set_tracer_provider(provider)
            CeleryInstrumentor().instrument(tracer_provider=provider)
            _configured["provider"] = provider
        destinations: set[str] = _configured.setdefault("destinations", set())
        if settings.otlp_endpoint and settings.otlp_endpoint not in destinations:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            endpoint = settings.otlp_endpoint.rstrip("/") + "/v1/traces"
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
            destinations.add(settings.otlp_endpoint)
        if settings.trace_file and settings.trace_file not in destinations:
            exporter: Any = JsonLinesExporter(settings.trace_file)
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            destinations.add(settings.trace_file)
        return provider


def instrument_app(app: Any, settings: Settings) -> None:
    """Trace every request of a Flask app (and the tasks it publishes)."""
    provider = setup_tracing(settings, "inferq-api")
    if provider is not None:
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        FlaskInstrumentor().instrument_app(app, tracer_provider=provider, excluded_urls="healthz,metrics")


def span(name: str, **attributes: Any) -> Any:
    """A span around a block (a no-op when tracing is off)."""
    from opentelemetry import trace

    return trace.get_tracer("inferq").start_as_current_span(name, attributes=attributes)
