"""POST /fisher: the cached Fisher at once (200), or a job computing it (202)."""

from fastapi import APIRouter, Response, status

from app.api.answers import FisherAnswer
from app.api.auth import ApiKeyDep
from app.api.deps import RedisDep, SettingsDep
from app.api.idempotency import IdempotencyHeader, remembered, scope_of
from app.fisher.engine import look_up
from app.jobs.enqueue import enqueue_fisher
from app.jobs.view import status_of
from app.schemas import FisherRequest

router = APIRouter(tags=["fisher"])


@router.post(
    "/fisher",
    response_model=FisherAnswer,
    status_code=status.HTTP_202_ACCEPTED,
    responses={200: {"model": FisherAnswer, "description": "Already in the cache; no job."}},
)
def post_fisher(
    request: FisherRequest,
    response: Response,
    settings: SettingsDep,
    redis: RedisDep,
    api_key: ApiKeyDep,
    idempotency_key: IdempotencyHeader = None,
) -> FisherAnswer:
    def answer() -> FisherAnswer:
        found = look_up(request, settings)
        if found.cached is not None:
            response.status_code = status.HTTP_200_OK
            return FisherAnswer(
                job_id=None, status="succeeded", fisher_uri=found.fisher_uri, cached=True
            )
        job = enqueue_fisher(request, found.key, redis, settings)
        response.headers["Location"] = f"/jobs/{job.id}"
        return FisherAnswer(
            job_id=job.id, status=status_of(job), fisher_uri=found.fisher_uri, cached=False
        )

    scope = scope_of("fisher", api_key)
    return remembered(redis, idempotency_key, scope, request, response, FisherAnswer, answer)
