"""RQ job functions: parse the request (the same models as the API and CLI), run the engine,
report progress, return what was written. Bad input raises; RQ records the job as failed.
`job_succeeded` / `job_failed` are RQ's callbacks for every fisher and merge job."""

from typing import Any

from redis import Redis
from rq import get_current_job
from rq.job import Job

from app.core.config import get_settings
from app.fisher.auto import resolve_auto_fishers
from app.fisher.engine import run_fisher
from app.jobs.lifecycle import JobCancelled, job_ended
from app.jobs.view import WORKER_LOST, JobError, job_view
from app.merge.engine import run_merge
from app.schemas import FisherRequest, MergeRequest
from workers.progress import MetaProgress, raise_if_cancelled
from workers.retry import with_storage_retries


def fisher_job(body: dict[str, Any]) -> dict[str, Any]:
    request = FisherRequest.model_validate(body)
    job = get_current_job()
    raise_if_cancelled(job)
    progress = MetaProgress(job, "examples")
    settings = get_settings()
    result = with_storage_retries(lambda: run_fisher(request, progress=progress), job, settings)
    return {"fisher_uri": result.fisher_uri, "cached": result.cached, "key": result.key}


def merge_job(body: dict[str, Any]) -> dict[str, Any]:
    """A merge; 'auto' Fishers are normally computed by the jobs it depends on and are found
    in the cache here (one that is missing is computed in this job)."""
    request = MergeRequest.model_validate(body)
    job = get_current_job()
    raise_if_cancelled(job)
    settings = get_settings()
    if any(model.fisher == "auto" for model in request.models):
        examples = MetaProgress(job, "examples")
        request = with_storage_retries(
            lambda: resolve_auto_fishers(request, progress=examples), job, settings
        )
    report = MetaProgress(job, "bytes")
    result = with_storage_retries(
        lambda: run_merge(request, progress=lambda step: report(step.done, step.total)),
        job,
        settings,
    )
    return {
        "output_uri": result.output_uri,
        "files": result.files,
        "fishers": [model.fisher for model in request.models],
    }


def job_succeeded(job: Job, _connection: Redis, result: Any, *_: object) -> None:
    job_ended(job, job_view(job, status="succeeded", result=result), get_settings())


def job_failed(
    job: Job, _connection: Redis, exc_type: type, exc_value: BaseException, _traceback: object
) -> None:
    """Also runs in whichever process finds the job abandoned by a killed worker."""
    if issubclass(exc_type, JobCancelled):
        job.meta["cancelled"] = True
        job.save_meta()
        view = job_view(job, status="cancelled")
    elif exc_type.__name__ == "AbandonedJobError":
        lost = JobError(type="WorkerLost", message=WORKER_LOST)
        view = job_view(job, status="failed", error=lost)
    else:
        error = JobError(type=exc_type.__name__, message=str(exc_value))
        view = job_view(job, status="failed", error=error)
    job_ended(job, view, get_settings())
