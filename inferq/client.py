"""A small client of the inferq REST API, used by the ``inferq`` client commands."""

from __future__ import annotations

from typing import Any

import requests


class ApiError(Exception):
    """The API answered with a problem (or could not be reached)."""

    def __init__(self, status: int, title: str, detail: str = "", errors: list[dict[str, str]] | None = None):
        self.status, self.title, self.detail, self.errors = status, title, detail, errors or []
        super().__init__(self.describe())

    def describe(self) -> str:
        lines = [f"{self.status} {self.title}" + (f": {self.detail}" if self.detail else "")]
        lines += [f"  {e.get('pointer', '')}: {e.get('detail', '')}" for e in self.errors]
        return "\n".join(lines)


class Client:
    """``INFERQ_URL`` + ``INFERQ_API_KEY``; raises :class:`ApiError` for any non-2xx answer."""

    def __init__(self, url: str, api_key: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self.timeout)
        try:
            response = self.session.request(method, f"{self.url}{path}", **kwargs)
        except requests.RequestException as exc:
            raise ApiError(0, "API unreachable", f"{self.url}: {exc}") from None
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"title": response.reason, "detail": response.text[:200]}
            raise ApiError(
                response.status_code,
                problem.get("title", ""),
                problem.get("detail", ""),
                problem.get("errors"),
            )
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, json=body, **kwargs)

    def put(self, path: str, body: Any, **kwargs: Any) -> Any:
        return self.request("PUT", path, json=body, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)

    def find_model(self, ref: str) -> dict[str, Any]:
        """A model by id, or by ``name:version``."""
        if ":" in ref:
            name, version = ref.split(":", 1)
            return dict(self.get(f"/v1/models/by-name/{name}/{version}"))
        return dict(self.get(f"/v1/models/{ref}"))
