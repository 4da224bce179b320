"""Putting jobs on the queues: deterministic Fisher job ids (identical requests in flight share
one job), merges that depend on the Fisher jobs they need, and the index `GET /jobs` reads."""

import time
import uuid

from redis import Redis
from rq import Callback, Queue
from rq.job import Job

from app.core.config import Settings
from app.jobs.callbacks import add_callback
from app.jobs.keys import INDEX, PREFIX, callbacks_key, cancel_key, notified_key
from app.jobs.view import TERMINAL, fetch, status_of
from app.schemas import FisherRequest, MergeRequest


def _options(settings: Settings, kind: str) -> dict:
    return {
        "meta": {"kind": kind},
        "job_timeout": settings.job_timeout_s,
        "result_ttl": settings.job_ttl_s,
        "failure_ttl": settings.job_ttl_s,
        "on_success": Callback("workers.jobs.job_succeeded"),
        "on_failure": Callback("workers.jobs.job_failed"),
    }


def _index(job: Job, connection: Redis, settings: Settings) -> None:
    now = time.time()
    with connection.pipeline() as pipeline:
        pipeline.zadd(INDEX, {job.id: now})
        pipeline.zremrangebyscore(INDEX, 0, now - settings.job_ttl_s - settings.job_timeout_s)
        pipeline.execute()


def enqueue_fisher(request: FisherRequest, key: str, connection: Redis, settings: Settings) -> Job:
    """One job per cache key: an identical request in flight gets the same job back."""
    job_id = f"fisher-{key[:32]}"
    # concurrent identical requests: one of them enqueues, the others find its job
    with connection.lock(f"{PREFIX}:enqueue:{job_id}", timeout=30, blocking_timeout=30):
        existing = fetch(job_id, connection)
        if existing is not None and status_of(existing) not in TERMINAL:
            add_callback(job_id, request.callback_url, connection, settings)
            return existing
        if existing is not None:  # an earlier run of this key that ended: start afresh
            existing.delete()
            stale = (key_of(job_id) for key_of in (cancel_key, callbacks_key, notified_key))
            connection.delete(*stale)
        add_callback(job_id, request.callback_url, connection, settings)
        job = Queue("fisher", connection=connection).enqueue(
            "workers.jobs.fisher_job",
            request.model_dump(mode="json", exclude={"callback_url"}),
            job_id=job_id,
            **_options(settings, "fisher"),
        )
    _index(job, connection, settings)
    return job


def enqueue_merge(
    request: MergeRequest, depends_on: list[Job], connection: Redis, settings: Settings
) -> Job:
    job_id = f"merge-{uuid.uuid4().hex}"
    add_callback(job_id, request.callback_url, connection, settings)
    job = Queue("merge", connection=connection).enqueue(
        "workers.jobs.merge_job",
        request.model_dump(mode="json", exclude_none=True, exclude={"callback_url"}),
        job_id=job_id,
        depends_on=depends_on or None,
        **_options(settings, "merge"),
    )
    _index(job, connection, settings)
    return job
