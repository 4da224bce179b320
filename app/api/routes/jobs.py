"""GET /jobs, GET /jobs/{id}, DELETE /jobs/{id}."""

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status

from app.api.answers import JobList
from app.api.auth import require_api_key
from app.api.deps import RedisDep, SettingsDep
from app.jobs.lifecycle import NotCancellable, cancel_job
from app.jobs.listing import list_jobs
from app.jobs.view import JobView, Kind, Status, fetch, job_view

router = APIRouter(tags=["jobs"], dependencies=[Depends(require_api_key)])


@router.get("/jobs", response_model=JobList)
def get_jobs(
    redis: RedisDep,
    status_: Annotated[Status | None, Query(alias="status")] = None,
    kind: Kind | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(pattern=r"^\d+(\.\d+)?$")] = None,
) -> JobList:
    """Newest first; pass `next_cursor` back as `cursor` for the next page."""
    jobs, next_cursor = list_jobs(redis, status_, kind, limit, cursor)
    return JobList(jobs=jobs, next_cursor=next_cursor)


@router.get("/jobs/{job_id}", response_model=JobView)
def get_job(job_id: str, redis: RedisDep) -> JobView:
    job = fetch(job_id, redis)
    if job is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id!r}")
    return job_view(job)


@router.delete(
    "/jobs/{job_id}",
    response_model=JobView,
    status_code=status.HTTP_202_ACCEPTED,
    responses={409: {"description": "The job has already ended."}},
)
def delete_job(job_id: str, redis: RedisDep, settings: SettingsDep, force: bool = False) -> JobView:
    """Cancel: a queued job at once; a running one stops at its next progress step (about a
    second) and publishes nothing. `force=true` kills its work horse at once instead."""
    job = fetch(job_id, redis)
    if job is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id!r}")
    try:
        return cancel_job(job, settings, force=force)
    except NotCancellable as error:
        raise HTTPException(status_code=409, detail=str(error)) from None
