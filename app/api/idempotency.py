"""`Idempotency-Key`: a repeated POST with the same key and the same body gets the first answer
back (same job); the same key with another body is a 422. Keys are scoped to the caller's API
key and kept for a day."""

import hashlib
import json
from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Header, HTTPException, Response, status
from pydantic import BaseModel
from redis import Redis

from app.jobs.keys import idempotency_key

Answer = TypeVar("Answer", bound=BaseModel)
TTL_S = 24 * 3600
PENDING_TTL_S = 60

IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="Retry-safe submission: the same key and body give the same job.",
    ),
]


def remembered(
    connection: Redis,
    key: str | None,
    scope: str,
    request: BaseModel,
    response: Response,
    answer_type: type[Answer],
    answer: Callable[[], Answer],
) -> Answer:
    """`answer()` once per (scope, key, body); its status code and Location are replayed too."""
    if key is None:
        return answer()
    digest = hashlib.sha256(request.model_dump_json().encode()).hexdigest()
    slot = idempotency_key(scope, key)
    if connection.set(slot, json.dumps({"body": digest}), nx=True, ex=PENDING_TTL_S):
        try:
            result = answer()
        except BaseException:
            connection.delete(slot)
            raise
        record = {
            "body": digest,
            "answer": result.model_dump(mode="json"),
            "status": response.status_code,
            "location": response.headers.get("location"),
        }
        connection.set(slot, json.dumps(record), ex=TTL_S)
        return result
    stored = json.loads(connection.get(slot) or "{}")
    if stored.get("body") != digest:
        raise HTTPException(
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"Idempotency-Key {key!r} was used with a different body",
        )
    if "answer" not in stored:
        raise HTTPException(
            status_code=status.HTTP_409_CONFLICT,
            detail=f"a request with Idempotency-Key {key!r} is still being processed; retry",
        )
    if stored["status"]:
        response.status_code = stored["status"]
    if stored["location"]:
        response.headers["Location"] = stored["location"]
    return answer_type.model_validate(stored["answer"])


def scope_of(route: str, api_key: str | None) -> str:
    """Callers with different API keys never see each other's idempotency keys."""
    caller = hashlib.sha256((api_key or "").encode()).hexdigest()[:16]
    return f"{route}:{caller}"
