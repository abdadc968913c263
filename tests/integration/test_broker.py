"""The Redis broker transport (tasks/broker.py): what it reuses must not lose a message."""

from __future__ import annotations

import pytest

from tests.fixtures import Stack

pytestmark = pytest.mark.integration


def test_remote_control_replies_reach_every_new_client(stack: Stack) -> None:
    """``celery inspect``, Flower and health checks each bind a reply queue of their own; a worker
    that routed replies on a table of bindings it had read a moment before lost the reply to the
    next new client (a health check right after Flower's polling: "No nodes replied")."""
    from tasks import create_celery_app

    workers = len(stack.workers)
    for _ in range(4):  # new clients in quick succession, each within a second of the last reply
        app = create_celery_app(stack.settings)
        try:
            replies = app.control.broadcast("ping", reply=True, timeout=3, limit=workers)
        finally:
            app.close()
        assert len(replies) >= workers, replies
