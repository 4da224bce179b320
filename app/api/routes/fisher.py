"""POST /fisher: the cached Fisher at once (200), or a job computing it (202)."""

from fastapi import APIRouter, Response, status
from pydantic import BaseModel

from app.api.deps import RedisDep, SettingsDep
from app.fisher.engine import look_up
from app.jobs import STATUS, enqueue_fisher
from app.schemas import FisherRequest

router = APIRouter(tags=["fisher"])


class FisherAnswer(BaseModel):
    job_id: str | None
    status: str
    fisher_uri: str
    cached: bool


@router.post("/fisher", response_model=FisherAnswer, status_code=status.HTTP_202_ACCEPTED)
def post_fisher(
    request: FisherRequest, response: Response, settings: SettingsDep, redis: RedisDep
) -> FisherAnswer:
    found = look_up(request, settings)
    if found.cached is not None:
        response.status_code = status.HTTP_200_OK
        return FisherAnswer(
            job_id=None, status="succeeded", fisher_uri=found.fisher_uri, cached=True
        )
    job = enqueue_fisher(request, found.key, redis)
    response.headers["Location"] = f"/jobs/{job.id}"
    return FisherAnswer(
        job_id=job.id, status=STATUS[job.get_status()], fisher_uri=found.fisher_uri, cached=False
    )
