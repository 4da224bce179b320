"""Jobs as the API shows them: RQ's states mapped to queued | running | succeeded | failed |
cancelled, with progress, result, error and dependencies."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel
from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.timeouts import TimerDeathPenalty

from app.jobs.keys import cancel_key

Kind = Literal["fisher", "merge"]
Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
STATUS: dict[JobStatus, Status] = {
    JobStatus.QUEUED: "queued",
    JobStatus.DEFERRED: "queued",
    JobStatus.SCHEDULED: "queued",
    JobStatus.CREATED: "queued",
    JobStatus.STARTED: "running",
    JobStatus.FINISHED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "cancelled",
    JobStatus.CANCELED: "cancelled",
}
TERMINAL: frozenset[Status] = frozenset({"succeeded", "failed", "cancelled"})
WORKER_LOST = (
    "the worker running this job stopped before it finished (killed, crashed or its machine "
    "was lost); nothing was published"
)


class JobProgress(BaseModel):
    done: int
    total: int
    unit: str


class JobError(BaseModel):
    type: str
    message: str


class JobView(BaseModel):
    job_id: str
    kind: Kind
    status: Status
    progress: JobProgress | None = None
    result: dict[str, Any] | None = None
    error: JobError | None = None
    depends_on: list[str] = []
    cancel_requested: bool = False
    created_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None


def status_of(job: Job) -> Status:
    status = STATUS.get(job.get_status(refresh=True) or JobStatus.QUEUED, "queued")
    if status == "failed" and job.meta.get("cancelled"):
        return "cancelled"
    if job.meta.get("failed_dependency") and status != "succeeded":
        return "failed"
    return status


def job_view(
    job: Job,
    *,
    status: Status | None = None,
    result: dict[str, Any] | None = None,
    error: JobError | None = None,
) -> JobView:
    """The job as stored; a worker's callback passes what it knows before RQ records it."""
    status = status or status_of(job)
    if status == "failed" and error is None:
        error = _error_of(job)
    if status == "succeeded" and result is None:
        result = job.return_value()
    progress = job.meta.get("progress")
    return JobView(
        job_id=job.id,
        kind=job.meta.get("kind", "merge"),
        status=status,
        progress=JobProgress(**progress) if progress else None,
        result=result,
        error=error if status == "failed" else None,
        depends_on=list(job._dependency_ids),
        cancel_requested=bool(job.connection.exists(cancel_key(job.id))),
        created_at=job.created_at,
        started_at=job.started_at,
        ended_at=job.ended_at or job.meta.get("ended_at"),
    )


def _error_of(job: Job) -> JobError:
    """The exception's type and message from the job's traceback (its last line)."""
    if job.meta.get("failed_dependency"):
        return JobError(type="DependencyFailed", message=job.meta["failed_dependency"])
    result = job.latest_result()
    text = ((result.exc_string if result is not None else "") or "").strip()
    if "AbandonedJobError" in text:
        return JobError(type="WorkerLost", message=WORKER_LOST)
    last = text.splitlines()[-1] if text else "Error: unknown failure"
    kind, _, message = last.partition(": ")
    return JobError(type=kind.rsplit(".", 1)[-1], message=message or kind)


def fetch(job_id: str, connection: Redis) -> Job | None:
    """A fisher or merge job; None for an unknown id or any other job in this Redis
    (callback deliveries, other applications' jobs)."""
    try:
        job = Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return None
    if job.meta.get("kind") not in ("fisher", "merge"):
        return None
    if job.get_status(refresh=False) == JobStatus.STARTED:
        reap_abandoned(job.origin, connection)
        job.refresh()
    return job


def reap_abandoned(queue: str, connection: Redis) -> None:
    """Fail the jobs of `queue` whose worker stopped sending heartbeats (RQ's own cleanup,
    which its workers otherwise run only every ten minutes)."""
    # the failure callbacks it runs are timed by a timer thread: the API calls this from
    # worker threads, where RQ's default SIGALRM timer cannot be set
    registry = StartedJobRegistry(
        queue, connection=connection, death_penalty_class=TimerDeathPenalty
    )
    registry.cleanup()
