"""How jobs end besides succeeding: cancellation (queued: at once; running: at the job's next
progress step, or at once with `force`), and what every end does: fail the merges waiting on a
Fisher job that did not succeed, and queue the callbacks."""

from datetime import UTC, datetime

from redis import Redis
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job

from app.core.config import Settings
from app.jobs.callbacks import notify
from app.jobs.keys import cancel_key
from app.jobs.view import TERMINAL, JobView, job_view, status_of


class JobCancelled(Exception):
    """Raised inside a running job whose cancellation was asked for; the engine aborts its
    output as for any error, and the job reads `cancelled`."""


class NotCancellable(Exception):
    """The job has already ended."""


def cancel_requested(job_id: str, connection: Redis) -> bool:
    return bool(connection.exists(cancel_key(job_id)))


def cancel_job(job: Job, settings: Settings, force: bool = False) -> JobView:
    connection = job.connection
    status = status_of(job)
    if status in TERMINAL:
        raise NotCancellable(f"job {job.id} has already ended: {status}")
    connection.set(cancel_key(job.id), 1, ex=settings.job_ttl_s + settings.job_timeout_s)
    if status == "queued":
        job.cancel()
        job_ended(job, job_view(job), settings)
    elif force:
        try:
            send_stop_job_command(connection, job.id)
        except InvalidJobOperation:  # it ended in between; its worker reports how
            return job_view(job)
        job_ended(job, job_view(job, status="cancelled"), settings)
        return job_view(job, status="cancelled")
    return job_view(job)


def job_ended(job: Job, view: JobView, settings: Settings) -> None:
    unrecorded = job.ended_at is None and view.ended_at is None
    if view.status != "succeeded" and unrecorded:  # RQ leaves it unset when cancelled
        ended = datetime.now(UTC)
        job.meta["ended_at"] = ended.isoformat()
        job.save_meta()
        view = view.model_copy(update={"ended_at": ended})
    if view.status != "succeeded":
        if view.status == "cancelled":
            reason = f"{view.kind.capitalize()} job {job.id} was cancelled"
        else:
            error = view.error
            detail = f"{error.type}: {error.message}" if error else "unknown error"
            reason = f"{view.kind.capitalize()} job {job.id} failed: {detail}"
        fail_dependents(job, reason, settings)
    notify(job, view, settings)


def fail_dependents(job: Job, reason: str, settings: Settings) -> None:
    """RQ would leave the merges waiting on a job that did not succeed deferred forever: cancel
    them, recording why, so their view reads failed with this job named."""
    for dependent_id in job.dependent_ids:
        try:
            dependent = Job.fetch(dependent_id, connection=job.connection)
        except NoSuchJobError:
            continue
        if status_of(dependent) in TERMINAL:
            continue
        dependent.meta["failed_dependency"] = reason
        dependent.save_meta()
        dependent.cancel()
        job_ended(dependent, job_view(dependent), settings)
