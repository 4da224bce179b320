"""POST /merge: a merge job, after the jobs computing its missing 'auto' Fishers."""

from fastapi import APIRouter, Response, status
from pydantic import BaseModel

from app.api.deps import RedisDep, SettingsDep
from app.fisher.auto import fisher_request_for
from app.fisher.engine import look_up
from app.jobs import STATUS, enqueue_fisher, enqueue_merge
from app.schemas import MergeRequest

router = APIRouter(tags=["merge"])


class MergeAnswer(BaseModel):
    job_id: str
    status: str
    depends_on: list[str]


@router.post("/merge", response_model=MergeAnswer, status_code=status.HTTP_202_ACCEPTED)
def post_merge(
    request: MergeRequest, response: Response, settings: SettingsDep, redis: RedisDep
) -> MergeAnswer:
    models, fisher_jobs = [], []
    for i, model in enumerate(request.models):
        if model.fisher == "auto":
            fisher_request = fisher_request_for(request, i)
            found = look_up(fisher_request, settings)
            if found.cached is not None:
                model = model.model_copy(update={"fisher": found.fisher_uri})
            else:
                fisher_jobs.append(enqueue_fisher(fisher_request, found.key, redis))
        models.append(model)
    job = enqueue_merge(request.model_copy(update={"models": models}), fisher_jobs, redis)
    response.headers["Location"] = f"/jobs/{job.id}"
    return MergeAnswer(
        job_id=job.id, status=STATUS[job.get_status()], depends_on=[j.id for j in fisher_jobs]
    )
