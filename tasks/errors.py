"""Errors of the request pipeline: a stable ``code``, the HTTP-ish ``status`` it maps to, and the
problems that name each bad field. Every entry point (the web views, the CLI, tasks) renders them."""

from __future__ import annotations

from registry.signatures import Problem


class PipelineError(Exception):
    """A request the pipeline cannot take: ``status`` (HTTP), a stable ``code`` slug, a title, a detail."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str = "",
        problems: list[Problem] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status, self.code, self.title, self.detail = status, code, title, detail
        self.problems = problems or []
        self.retry_after = retry_after


def invalid(problems: list[Problem], title: str = "The request is not valid") -> PipelineError:
    detail = "; ".join(f"{p.pointer}: {p.detail}" for p in problems[:5])
    return PipelineError(400, "invalid-request", title, detail, problems=problems)


def unavailable(service: str, detail: str) -> PipelineError:
    """A backing service (broker, database, cache, object store, Triton) is down: 503."""
    return PipelineError(
        503, f"{service}-unavailable", f"The {service} is unavailable", detail, retry_after=5
    )
