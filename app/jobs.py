"""Jobs as the API shows them: RQ's states mapped to queued | running | succeeded | failed |
cancelled, with progress, result, error and dependencies; and the enqueueing rules shared by
the routes (deterministic Fisher job ids, so identical requests in flight share one job)."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel
from redis import Redis
from rq import Callback, Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from app.schemas import FisherRequest, MergeRequest

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
JOB_TIMEOUT_S = 6 * 3600
RESULT_TTL_S = 7 * 24 * 3600


class JobProgress(BaseModel):
    done: int
    total: int
    unit: str


class JobError(BaseModel):
    type: str
    message: str


class JobView(BaseModel):
    job_id: str
    kind: Literal["fisher", "merge"]
    status: Status
    progress: JobProgress | None = None
    result: dict[str, Any] | None = None
    error: JobError | None = None
    depends_on: list[str] = []
    created_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None


def job_view(job: Job) -> JobView:
    status = STATUS.get(job.get_status(refresh=True) or JobStatus.QUEUED, "queued")
    if job.meta.get("failed_dependency"):
        status = "failed"
    error = _error_of(job) if status == "failed" else None
    progress = job.meta.get("progress")
    return JobView(
        job_id=job.id,
        kind=job.meta.get("kind", "merge"),
        status=status,
        progress=JobProgress(**progress) if progress else None,
        result=job.return_value() if status == "succeeded" else None,
        error=error,
        depends_on=list(job._dependency_ids),
        created_at=job.created_at,
        started_at=job.started_at,
        ended_at=job.ended_at,
    )


def _error_of(job: Job) -> JobError:
    """The exception's type and message from the job's traceback (its last line)."""
    if job.meta.get("failed_dependency"):
        return JobError(type="DependencyFailed", message=job.meta["failed_dependency"])
    result = job.latest_result()
    text = (result.exc_string if result is not None else "") or ""
    last = text.strip().splitlines()[-1] if text.strip() else "Error: unknown failure"
    kind, _, message = last.partition(": ")
    return JobError(type=kind.rsplit(".", 1)[-1], message=message or kind)


def fetch(job_id: str, connection: Redis) -> Job | None:
    try:
        return Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return None


def enqueue_fisher(request: FisherRequest, key: str, connection: Redis) -> Job:
    """One job per cache key: an identical request in flight gets the same job back."""
    job_id = f"fisher-{key[:32]}"
    existing = fetch(job_id, connection)
    if existing is not None and STATUS.get(existing.get_status(), "queued") in (
        "queued",
        "running",
    ):
        return existing
    if existing is not None:
        existing.delete()
    return Queue("fisher", connection=connection).enqueue(
        "workers.jobs.fisher_job",
        request.model_dump(mode="json"),
        job_id=job_id,
        meta={"kind": "fisher"},
        on_failure=Callback("workers.jobs.fail_dependents"),
        job_timeout=JOB_TIMEOUT_S,
        result_ttl=RESULT_TTL_S,
        failure_ttl=RESULT_TTL_S,
    )


def enqueue_merge(request: MergeRequest, depends_on: list[Job], connection: Redis) -> Job:
    return Queue("merge", connection=connection).enqueue(
        "workers.jobs.merge_job",
        request.model_dump(mode="json", exclude_none=True),
        depends_on=depends_on or None,
        meta={"kind": "merge"},
        job_timeout=JOB_TIMEOUT_S,
        result_ttl=RESULT_TTL_S,
        failure_ttl=RESULT_TTL_S,
    )
