"""Response bodies of the REST API (the typed client reads the same models)."""

from pydantic import BaseModel

from app.jobs.view import JobView, Status


class FisherAnswer(BaseModel):
    job_id: str | None
    status: Status
    fisher_uri: str
    cached: bool


class MergeAnswer(BaseModel):
    job_id: str
    status: Status
    depends_on: list[str]


class JobList(BaseModel):
    jobs: list[JobView]
    next_cursor: str | None
