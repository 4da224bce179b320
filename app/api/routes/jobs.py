"""GET /jobs/{id}."""

from fastapi import APIRouter, HTTPException

from app.api.deps import RedisDep
from app.jobs import JobView, fetch, job_view

router = APIRouter(tags=["jobs"])


@router.get("/jobs/{job_id}", response_model=JobView)
def get_job(job_id: str, redis: RedisDep) -> JobView:
    job = fetch(job_id, redis)
    if job is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id!r}")
    return job_view(job)
