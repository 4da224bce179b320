"""Redis keys the service keeps beside RQ's own. State that the API and a running job both
change lives in keys of its own, never in `job.meta`, which a worker rewrites whole."""

PREFIX = "fisher-merge"
INDEX = f"{PREFIX}:jobs"  # sorted set of fisher and merge job ids by creation time


def cancel_key(job_id: str) -> str:
    return f"{PREFIX}:cancel:{job_id}"


def callbacks_key(job_id: str) -> str:
    return f"{PREFIX}:callbacks:{job_id}"


def notified_key(job_id: str) -> str:
    return f"{PREFIX}:notified:{job_id}"


def idempotency_key(scope: str, key: str) -> str:
    return f"{PREFIX}:idempotency:{scope}:{key}"
