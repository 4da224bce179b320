"""`GET /jobs`: newest first, filtered by status and kind, paged by an opaque cursor (the
creation time of the last job returned, so new jobs never shift a page)."""

from redis import Redis
from rq.job import Job

from app.jobs.keys import INDEX
from app.jobs.view import JobView, Kind, Status, job_view, reap_abandoned

SCAN_BATCH = 200


def list_jobs(
    connection: Redis,
    status: Status | None = None,
    kind: Kind | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[JobView], str | None]:
    for queue in ("fisher", "merge"):
        reap_abandoned(queue, connection)
    upper: str = f"({cursor}" if cursor else "+inf"
    views: list[JobView] = []
    while True:
        page = connection.zrevrangebyscore(INDEX, upper, "-inf", 0, SCAN_BATCH, withscores=True)
        if not page:
            return views, None
        jobs = Job.fetch_many([job_id.decode() for job_id, _ in page], connection=connection)
        for (_, score), job in zip(page, jobs, strict=True):
            if job is None or (kind and job.meta.get("kind") != kind):
                continue
            view = job_view(job)
            if status and view.status != status:
                continue
            views.append(view)
            if len(views) == limit:
                return views, repr(score)
        upper = f"({page[-1][1]!r}"
