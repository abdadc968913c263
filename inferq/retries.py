"""Short, bounded retries (tenacity) around calls to Triton, the object store and the database
inside a task: a blip is absorbed where it happens instead of failing or re-running the whole task.

Only errors that say "try again" are retried (each boundary's *Unavailable* errors, a dropped
database connection); a retry never outlasts ``seconds``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_fixed,
)

T = TypeVar("T")


def retrying(
    *errors: type[BaseException], seconds: float = 10.0, attempts: int = 5, first_wait: float = 0.2
) -> Retrying:
    """A tenacity policy: retry ``errors`` with exponential waits, for at most ``attempts`` tries
    and ``seconds`` in all; the last error is re-raised as it is."""
    return Retrying(
        retry=retry_if_exception_type(errors),
        stop=stop_after_attempt(attempts) | stop_after_delay(seconds),
        wait=wait_exponential(multiplier=first_wait, max=max(first_wait, seconds / 4)),
        reraise=True,
    )


def waiting(
    transient: Callable[[BaseException], bool],
    seconds: float,
    on_wait: Callable[[BaseException], None],
    interval: float = 2.0,
) -> Retrying:
    """A tenacity policy for waiting on a service that is still starting: retry what
    ``transient`` says may pass, every ``interval`` seconds for ``seconds`` at most, calling
    ``on_wait`` with the error before each wait; anything else is re-raised at once."""

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if error is not None:
            on_wait(error)

    return Retrying(
        retry=retry_if_exception(transient),
        stop=stop_after_delay(seconds),
        wait=wait_fixed(interval),
        before_sleep=before_sleep,
        reraise=True,
    )


def call_retrying(
    call: Callable[[], T], *errors: type[BaseException], seconds: float = 10.0, attempts: int = 5
) -> T:
    """``call()``, retried on ``errors`` as :func:`retrying` says."""
    return retrying(*errors, seconds=seconds, attempts=attempts)(call)
