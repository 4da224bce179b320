"""A typed Python client for the REST API, for the platform's code (and the tests).

with FisherMergeClient("http://127.0.0.1:8000", api_key="...") as client:
    job = client.merge(MergeRequest(...))
    view = client.wait(job.job_id, timeout_s=3600)
"""

import time
from types import TracebackType
from typing import Any

import httpx

from app.api.answers import FisherAnswer, JobList, MergeAnswer
from app.jobs.view import TERMINAL, JobView, Kind, Status
from app.schemas import FisherRequest, MergeRequest


class ApiError(Exception):
    """The API refused the request; `detail` is its message (naming the field for a 422)."""

    def __init__(self, status_code: int, detail: Any) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class JobTimeout(TimeoutError):
    def __init__(self, view: JobView, timeout_s: float) -> None:
        super().__init__(f"job {view.job_id} still {view.status} after {timeout_s:g} s")
        self.view = view


class FisherMergeClient:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout_s: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        """`http` replaces the connection (e.g. FastAPI's TestClient); `base_url` is then its."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = http or httpx.Client(base_url=base_url, timeout=timeout_s)
        self.http.headers.update(headers)

    def __enter__(self) -> "FisherMergeClient":
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = self.http.request(method, path, **kwargs)
        if answer.status_code >= 400:
            try:
                detail = answer.json().get("detail", answer.text)
            except ValueError:
                detail = answer.text
            raise ApiError(answer.status_code, detail)
        return answer.json()

    @staticmethod
    def _body(request: FisherRequest | MergeRequest | dict[str, Any]) -> dict[str, Any]:
        if isinstance(request, dict):
            return request
        return request.model_dump(mode="json", exclude_none=True)

    @staticmethod
    def _headers(idempotency_key: str | None) -> dict[str, str]:
        return {"Idempotency-Key": idempotency_key} if idempotency_key else {}

    def fisher(
        self, request: FisherRequest | dict[str, Any], idempotency_key: str | None = None
    ) -> FisherAnswer:
        """Compute (or find cached) a Fisher; `cached` answers carry no job."""
        body = self._call(
            "POST", "/fisher", json=self._body(request), headers=self._headers(idempotency_key)
        )
        return FisherAnswer.model_validate(body)

    def merge(
        self, request: MergeRequest | dict[str, Any], idempotency_key: str | None = None
    ) -> MergeAnswer:
        body = self._call(
            "POST", "/merge", json=self._body(request), headers=self._headers(idempotency_key)
        )
        return MergeAnswer.model_validate(body)

    def job(self, job_id: str) -> JobView:
        return JobView.model_validate(self._call("GET", f"/jobs/{job_id}"))

    def jobs(
        self,
        status: Status | None = None,
        kind: Kind | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobList:
        params = {"status": status, "kind": kind, "limit": limit, "cursor": cursor}
        query = {name: value for name, value in params.items() if value is not None}
        return JobList.model_validate(self._call("GET", "/jobs", params=query))

    def cancel(self, job_id: str, force: bool = False) -> JobView:
        params = {"force": "true"} if force else {}
        return JobView.model_validate(self._call("DELETE", f"/jobs/{job_id}", params=params))

    def wait(self, job_id: str, timeout_s: float = 3600.0, poll_s: float = 0.5) -> JobView:
        """Poll until the job ends (succeeded, failed or cancelled); JobTimeout otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            view = self.job(job_id)
            if view.status in TERMINAL:
                return view
            if time.monotonic() >= deadline:
                raise JobTimeout(view, timeout_s)
            time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.0)))

    def ready(self) -> bool:
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False
