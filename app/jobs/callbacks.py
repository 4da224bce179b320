"""Callbacks: when a job ends, each `callback_url` given for it gets a POST of the job's JSON,
delivered by a job on the `callbacks` queue that RQ retries with back-off."""

import hashlib
import hmac

from redis import Redis
from rq import Queue, Retry
from rq.job import Job

from app.core.config import Settings
from app.jobs.keys import callbacks_key, notified_key
from app.jobs.view import JobView

SIGNATURE_HEADER = "X-Fisher-Merge-Signature"
CALLBACK_QUEUE = "callbacks"


def sign(body: bytes, secret: str) -> str:
    """`sha256=<hex HMAC-SHA256 of the body>`, as the receiver recomputes it."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def add_callback(job_id: str, url: str | None, connection: Redis, settings: Settings) -> None:
    if url:
        connection.sadd(callbacks_key(job_id), url)
        connection.expire(callbacks_key(job_id), settings.job_ttl_s + settings.job_timeout_s)


def notify(job: Job, view: JobView, settings: Settings) -> None:
    """Queue one delivery per callback URL, once per job however many paths report its end."""
    connection = job.connection
    urls = sorted(url.decode() for url in connection.smembers(callbacks_key(job.id)))
    if not urls or not connection.set(notified_key(job.id), 1, nx=True, ex=settings.job_ttl_s):
        return
    body = view.model_dump_json()
    intervals = settings.callback_retry_intervals
    queue = Queue(CALLBACK_QUEUE, connection=connection)
    for url in urls:
        queue.enqueue(
            "workers.callbacks.deliver",
            url,
            body,
            retry=Retry(max=len(intervals), interval=intervals) if intervals else None,
            job_timeout=60,
            result_ttl=3600,
            failure_ttl=settings.job_ttl_s,
            meta={"kind": "callback", "for_job": job.id},
        )
