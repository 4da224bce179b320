"""Job progress in RQ's `job.meta`, written at most about once a second."""

import time

from rq.job import Job


class MetaProgress:
    """Records `{done, total, unit}` under `job.meta["progress"]`; the last call always lands."""

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
        self.job.meta["progress"] = {"done": done, "total": total, "unit": self.unit}
        self.job.save_meta()
