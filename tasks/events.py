"""Task events (what Flower shows) sent off the path of the task they describe.

A worker with task events on buffers them and, out of the box, flushes the buffer on its
event loop's next turn: for one sync request that is two ``task.multi`` publishes (received,
started) from the worker's main thread while the pool thread calls Triton, then a third after
it ends; each one a Redis round trip and a serialised message, competing for the same cores
as the request (measured: about 1.5 ms of a 1-row request's p50 on 2 cores).

:class:`FlushEvents` (a consumer bootstep) flushes the buffer every
``INFERQ_EVENT_FLUSH_INTERVAL`` seconds instead, or at once when it holds ``BUFFER_LIMIT``
events: the events of many tasks leave in one message, none on a request's path, and
Flower shows a task at most that interval later. Events are in the buffer until the
flush, so a worker stopping flushes first.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, bootsteps
from kombu.exceptions import KombuError

BUFFER_LIMIT = 200  # events buffered before a flush in the sending thread
log = logging.getLogger(__name__)


class FlushEvents(bootsteps.StartStopStep):
    """Flush the worker's buffered task events on a timer instead of at every event."""

    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.timer: Any = None

    def start(self, c: Any) -> None:
        dispatcher = c.event_dispatcher
        if dispatcher is None or not c.hub or "task" not in (dispatcher.buffer_group or ()):
            return  # no event loop: Celery sends each event at once
        dispatcher.on_send_buffered = None  # no flush per event
        dispatcher.buffer_limit = BUFFER_LIMIT
        if self.timer is None:  # a restarted consumer (broker reconnect) keeps the timer
            interval = c.app.inferq_settings.event_flush_interval
            self.timer = c.hub.call_repeatedly(interval, self.flush, c)

    @staticmethod
    def flush(c: Any) -> None:
        dispatcher = c.event_dispatcher
        if dispatcher is None or not any(dispatcher._group_buffer.values()):
            return
        try:
            dispatcher.flush()
        except (KombuError, OSError) as exc:  # kept in the buffer; the next tick tries again
            log.warning("task events not sent: %s", exc)

    def stop(self, c: Any) -> None:
        self.flush(c)

    def shutdown(self, c: Any) -> None:
        self.flush(c)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def install(app: Celery) -> None:
    """Add :class:`FlushEvents` to ``app``'s workers."""
    app.steps["consumer"].add(FlushEvents)
