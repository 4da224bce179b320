"""Transient object-store errors (connection lost, timeouts, 5xx, throttling) retried with
doubling back-off inside the job; every other error, bad input above all, fails at once.
A retried step starts over: the engines publish nothing until they are done."""

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from rq.job import Job

from app.core.config import Settings
from app.storage import TransientStorageError
from workers.progress import raise_if_cancelled

T = TypeVar("T")
log = logging.getLogger(__name__)


def with_storage_retries(run: Callable[[], T], job: Job | None, settings: Settings) -> T:
    for attempt in range(settings.storage_retries + 1):
        try:
            return run()
        except TransientStorageError as error:
            if attempt == settings.storage_retries:
                raise
            delay = settings.storage_retry_base_s * 2**attempt
            log.warning("storage error, retry %d in %.0f s: %s", attempt + 1, delay, error)
            if job is not None:
                job.meta["storage_retries"] = attempt + 1
                job.meta["last_storage_error"] = str(error)
                job.save_meta()
            _sleep(delay, job)
    raise AssertionError("unreachable")


def _sleep(seconds: float, job: Job | None) -> None:
    """Back off, but stop at once when the job is cancelled meanwhile."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        raise_if_cancelled(job)
        time.sleep(min(left, 0.5))
