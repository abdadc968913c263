"""The Flask side of the hand-written baseline: POST /infer queues the task and waits for it.

Run from this folder: ``gunicorn -k gthread --workers 1 --threads 16 app:app``.
"""

from __future__ import annotations

import os

from flask import Flask, jsonify, request

from tasks import infer

MODEL = os.environ.get("HANDWRITTEN_MODEL", "digits")
TIMEOUT = float(os.environ.get("HANDWRITTEN_TIMEOUT", "30"))

app = Flask(__name__)


@app.post("/infer")
def infer_view():
    body = request.get_json()
    outputs = infer.delay(MODEL, body["inputs"]).get(timeout=TIMEOUT)
    return jsonify({"model_name": MODEL, "outputs": outputs})
