"""POST /merge: a merge job, after the jobs computing its missing 'auto' Fishers."""

from fastapi import APIRouter, Response, status

from app.api.answers import MergeAnswer
from app.api.auth import ApiKeyDep
from app.api.deps import RedisDep, SettingsDep
from app.api.idempotency import IdempotencyHeader, remembered, scope_of
from app.fisher.auto import fisher_request_for
from app.fisher.engine import look_up
from app.jobs.enqueue import enqueue_fisher, enqueue_merge
from app.jobs.view import status_of
from app.schemas import MergeRequest

router = APIRouter(tags=["merge"])


@router.post("/merge", response_model=MergeAnswer, status_code=status.HTTP_202_ACCEPTED)
def post_merge(
    request: MergeRequest,
    response: Response,
    settings: SettingsDep,
    redis: RedisDep,
    api_key: ApiKeyDep,
    idempotency_key: IdempotencyHeader = None,
) -> MergeAnswer:
    def answer() -> MergeAnswer:
        models, fisher_jobs = [], []
        for i, model in enumerate(request.models):
            if model.fisher == "auto":
                fisher_request = fisher_request_for(request, i)
                found = look_up(fisher_request, settings)
                if found.cached is not None:
                    model = model.model_copy(update={"fisher": found.fisher_uri})
                else:
                    fisher_jobs.append(enqueue_fisher(fisher_request, found.key, redis, settings))
            models.append(model)
        resolved = request.model_copy(update={"models": models})
        job = enqueue_merge(resolved, fisher_jobs, redis, settings)
        response.headers["Location"] = f"/jobs/{job.id}"
        return MergeAnswer(
            job_id=job.id, status=status_of(job), depends_on=[j.id for j in fisher_jobs]
        )

    scope = scope_of("merge", api_key)
    return remembered(redis, idempotency_key, scope, request, response, MergeAnswer, answer)
