"""Delivery of one callback: POST the job's JSON; any failure raises so RQ retries it later."""

import httpx

from app.core.config import get_settings
from app.jobs.callbacks import SIGNATURE_HEADER, sign


def deliver(url: str, body: str) -> int:
    payload = body.encode()
    headers = {"Content-Type": "application/json", "User-Agent": "fisher-merge"}
    secret = get_settings().callback_secret
    if secret:
        headers[SIGNATURE_HEADER] = sign(payload, secret)
    answer = httpx.post(url, content=payload, headers=headers, timeout=10.0)
    answer.raise_for_status()
    return answer.status_code
