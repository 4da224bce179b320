"""RQ job functions: parse the request (the same models as the API and CLI), run the engine,
report progress, return what was written. Bad input raises; RQ records the job as failed."""

from typing import Any

from redis import Redis
from rq import get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job

from app.fisher.auto import resolve_auto_fishers
from app.fisher.engine import run_fisher
from app.merge.engine import run_merge
from app.schemas import FisherRequest, MergeRequest
from workers.progress import MetaProgress


def fisher_job(body: dict[str, Any]) -> dict[str, Any]:
    request = FisherRequest.model_validate(body)
    result = run_fisher(request, progress=MetaProgress(get_current_job(), "examples"))
    return {"fisher_uri": result.fisher_uri, "cached": result.cached, "key": result.key}


def merge_job(body: dict[str, Any]) -> dict[str, Any]:
    """A merge; 'auto' Fishers are normally computed by the jobs it depends on and are found
    in the cache here (one that is missing is computed in this job)."""
    request = MergeRequest.model_validate(body)
    job = get_current_job()
    if any(model.fisher == "auto" for model in request.models):
        request = resolve_auto_fishers(request, progress=MetaProgress(job, "examples"))
    report = MetaProgress(job, "bytes")
    result = run_merge(request, progress=lambda progress: report(progress.done, progress.total))
    return {
        "output_uri": result.output_uri,
        "files": result.files,
        "fishers": [model.fisher for model in request.models],
    }


def fail_dependents(
    job: Job, connection: Redis, exc_type: type, exc_value: BaseException, _traceback: object
) -> None:
    """A failed Fisher job cancels the merges waiting on it (RQ would leave them deferred
    forever) and records why, so their view reads failed with the Fisher job named."""
    reason = f"Fisher job {job.id} failed: {exc_type.__name__}: {exc_value}"
    for dependent_id in job.dependent_ids:
        try:
            dependent = Job.fetch(dependent_id, connection=connection)
        except NoSuchJobError:
            continue
        dependent.meta["failed_dependency"] = reason
        dependent.save_meta()
        dependent.cancel()
