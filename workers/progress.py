"""Job progress in RQ's `job.meta`, written at most about once a second; the same beat checks
whether the job's cancellation was asked for."""

import time

from rq.job import Job

from app.jobs.lifecycle import JobCancelled, cancel_requested


class MetaProgress:
    """Records `{done, total, unit}` under `job.meta["progress"]`; the last call always lands.
    Raises JobCancelled once the job is asked to stop, so the engine aborts its output."""

    def __init__(self, job: Job | None, unit: str, interval_s: float = 1.0) -> None:
        self.job = job
        self.unit = unit
        self.interval_s = interval_s
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.job is None or (now - self._last < self.interval_s and done < total):
            return
        self._last = now
        raise_if_cancelled(self.job)
        self.job.meta["progress"] = {"done": done, "total": total, "unit": self.unit}
        self.job.save_meta()


def raise_if_cancelled(job: Job | None) -> None:
    if job is not None and cancel_requested(job.id, job.connection):
        raise JobCancelled(f"job {job.id} was cancelled")
