"""Test configuration shared by unit and integration tests.

A forgotten real dependency fails loudly: the environment's INFERQ_* settings
point at addresses that cannot resolve, so only what a fixture hands over works.
"""

from __future__ import annotations

import os

SENTINELS = {
    "INFERQ_REDIS_URL": "redis://unconfigured-in-tests.invalid:1/0",
    "INFERQ_DATABASE_URL": "sqlite:////nonexistent/unconfigured-in-tests.db",
    "INFERQ_S3_ENDPOINT": "http://unconfigured-in-tests.invalid:1",
    "INFERQ_TRITON_URLS": "http://unconfigured-in-tests.invalid:1",
}
for _key in [k for k in os.environ if k.startswith("INFERQ_")]:
    del os.environ[_key]
os.environ.update(SENTINELS)

pytest_plugins = ["tests.fixtures"]
