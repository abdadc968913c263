"""``GET /openapi.json`` (the API's OpenAPI 3.1 document) and ``GET /docs`` (Swagger UI, served locally).

Swagger UI 5 reads OpenAPI 3.1 (4.x cannot: "the provided definition does not specify a valid
version field"); its files come from the flask-swagger-ui wheel, nothing from the internet.
``tests/integration/test_docs_browser.py`` renders the page in headless Chromium.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, send_from_directory

bp = Blueprint("docs", __name__)
SPEC = Path(__file__).with_name("openapi.yaml")

PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>inferq API</title>
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
  <style>body { margin: 0; background: #fafafa; }</style>
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "/openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      persistAuthorization: true,
      tryItOutEnabled: false,
      validatorUrl: null
    });
  </script>
</body>
</html>
"""


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI document, read once from ``webapp/openapi.yaml``."""
    import yaml

    from inferq import __version__

    document: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    document["info"]["version"] = __version__
    return document


@bp.get("/openapi.json")
def openapi_json() -> Any:
    return jsonify(openapi_document())


@bp.get("/docs")
def docs() -> Response:
    return Response(PAGE, mimetype="text/html")


@bp.get("/docs/assets/<path:name>")
def docs_assets(name: str) -> Any:
    return send_from_directory(swagger_ui_dist(), name, max_age=86400)


@cache
def swagger_ui_dist() -> Path:
    """Swagger UI's distribution files, as the flask-swagger-ui wheel ships them (5.x: OpenAPI 3.1)."""
    import flask_swagger_ui

    return Path(flask_swagger_ui.__file__).with_name("dist")
