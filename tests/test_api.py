"""The REST API over HTTP (FastAPI's test client), with the real Redis and a real worker."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from app.client import FisherMergeClient
from app.core.config import Settings
from app.main import create_app
from app.synthetic import save_tiny_classifier
from tests.conftest import auto_merge_body
from tests.redis_fixture import REDIS_URL
from tests.reference import load_state
from tests.test_workers import run_worker_burst


@pytest.fixture
def root(tmp_path, redis):
    save_tiny_classifier(tmp_path / "a", seed=1)
    save_tiny_classifier(tmp_path / "b", seed=2, num_labels=3)
    rows = [{"text": "the movie was good", "label": 1}, {"text": "bad plot", "label": 0}]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    return tmp_path


@pytest.fixture
def client(root):
    settings = Settings(
        redis_url=REDIS_URL, cache_uri=str(root / "cache"), model_cache_dir=root / "models"
    )
    with TestClient(create_app(settings)) as client:
        yield client


def fisher_body(root, model="a"):
    return {
        "model": str(root / model),
        "fisher_type": "exact",
        "dataset": {"uri": str(root / "data.jsonl"), "text_fields": ["text"]},
    }


def test_fisher_job_then_cached_answer(client, root):
    answer = client.post("/fisher", json=fisher_body(root))
    assert answer.status_code == 202
    job_id = answer.json()["job_id"]
    assert answer.headers["location"] == f"/jobs/{job_id}"
    again = client.post("/fisher", json=fisher_body(root))
    assert again.json()["job_id"] == job_id  # identical requests in flight share one job
    assert client.get(f"/jobs/{job_id}").json()["status"] == "queued"
    run_worker_burst(root)
    view = client.get(f"/jobs/{job_id}").json()
    assert view["status"] == "succeeded" and view["kind"] == "fisher"
    assert view["progress"] == {"done": 2, "total": 2, "unit": "examples"}
    assert view["result"]["fisher_uri"] == answer.json()["fisher_uri"]
    cached = client.post("/fisher", json=fisher_body(root))
    assert cached.status_code == 200
    assert cached.json() == {
        "job_id": None,
        "status": "succeeded",
        "fisher_uri": answer.json()["fisher_uri"],
        "cached": True,
    }


def test_merge_with_auto_fishers_is_three_jobs(client, root):
    defaults = {k: v for k, v in fisher_body(root).items() if k != "model"}
    body = auto_merge_body(root, "merged", defaults)
    answer = client.post("/merge", json=body)
    assert answer.status_code == 202
    merge_id, depends_on = answer.json()["job_id"], answer.json()["depends_on"]
    assert len(depends_on) == 2
    assert client.get(f"/jobs/{merge_id}").json()["depends_on"] == depends_on
    run_worker_burst(root)
    view = client.get(f"/jobs/{merge_id}").json()
    assert view["status"] == "succeeded", view
    assert set(load_state(root / "merged")) == set(load_state(root / "a"))
    second = client.post("/merge", json=body | {"output_uri": str(root / "again")})
    assert second.json()["depends_on"] == []  # both Fishers are cached now


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lambdas": [1.0]}, "lambdas has 1 values but models has 2"),
        ({"lambdas": [1.0, -1.0]}, "lambdas[1] = -1.0 must be finite and >= 0"),
        ({"lambdas": [1.0, float("inf")]}, "lambdas[1] = inf must be finite and >= 0"),
        ({"method": "ties"}, "unknown method 'ties'"),
        ({"output_uri": "gs://x/y"}, "unsupported URI scheme 'gs'"),
        ({"models": ["s3://a/"]}, "at least 2 items"),
    ],
)
def test_invalid_merge_bodies_are_422_naming_the_field(client, root, change, field):
    body = {
        "models": [str(root / "a"), str(root / "b")],
        "method": "isotropic",
        "output_uri": str(root / "o"),
    } | change
    headers = {"Content-Type": "application/json"}  # json.dumps writes Infinity; httpx refuses
    answer = client.post("/merge", content=json.dumps(body), headers=headers)
    assert answer.status_code == 422
    assert field in json.dumps(answer.json())


def test_missing_data_set_is_422(client, root):
    body = fisher_body(root) | {
        "dataset": {"uri": str(root / "nope.jsonl"), "text_fields": ["text"]}
    }
    answer = client.post("/fisher", json=body)
    assert answer.status_code == 422 and "nope.jsonl" in answer.json()["detail"]


def test_failed_job_reports_type_and_message(client, root):
    body = fisher_body(root) | {
        "dataset": {"uri": str(root / "data.jsonl"), "text_fields": ["missing"]}
    }
    job_id = client.post("/fisher", json=body).json()["job_id"]
    run_worker_burst(root)
    view = client.get(f"/jobs/{job_id}").json()
    assert view["status"] == "failed"
    assert view["error"]["type"] == "DatasetError"
    assert "text field 'missing' is missing" in view["error"]["message"]


def test_health_and_unknown_job(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"redis": "ok", "store": "ok"}
    assert client.get("/jobs/nope").status_code == 404


def test_failed_fisher_fails_the_merge_waiting_on_it(client, root):
    body = auto_merge_body(
        root, "merged", {"dataset": {"uri": str(root / "data.jsonl"), "text_fields": ["missing"]}}
    )
    answer = client.post("/merge", json=body).json()
    run_worker_burst(root)
    view = client.get(f"/jobs/{answer['job_id']}").json()
    assert view["status"] == "failed"
    assert view["error"]["type"] == "DependencyFailed"
    assert any(job_id in view["error"]["message"] for job_id in answer["depends_on"])
    assert "text field 'missing' is missing" in view["error"]["message"]
    assert not (root / "merged").exists()


def test_invalid_callback_url_is_422(client, root):
    answer = client.post("/fisher", json=fisher_body(root) | {"callback_url": "ftp://x/y"})
    assert answer.status_code == 422
    assert "callback_url" in json.dumps(answer.json())


@pytest.fixture
def keyed(root):
    settings = Settings(
        redis_url=REDIS_URL,
        cache_uri=str(root / "cache"),
        model_cache_dir=root / "models",
        api_keys="key-one, key-two",
    )
    with TestClient(create_app(settings)) as http:
        yield http


def test_api_keys_when_configured(keyed, root):
    assert keyed.post("/fisher", json=fisher_body(root)).status_code == 401
    wrong = keyed.get("/jobs", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert "API key" in wrong.json()["detail"]
    assert keyed.get("/jobs/x", headers={"Authorization": "Bearer key-two"}).status_code == 404
    client = FisherMergeClient(http=keyed, api_key="key-one")
    assert client.fisher(fisher_body(root)).job_id
    for open_path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert keyed.get(open_path).status_code == 200


def test_no_keys_configured_means_no_auth(client, root):
    assert client.get("/jobs").status_code == 200


def test_idempotency_key_same_body_same_job_other_body_422(client, root):
    headers = {"Idempotency-Key": "req-1"}
    first = client.post("/merge", json=merge_body(root, "o1"), headers=headers)
    again = client.post("/merge", json=merge_body(root, "o1"), headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert again.headers["location"] == first.headers["location"]
    other = client.post("/merge", json=merge_body(root, "o2"), headers=headers)
    assert other.status_code == 422 and "req-1" in other.json()["detail"]
    fresh = client.post("/merge", json=merge_body(root, "o1"), headers={"Idempotency-Key": "2"})
    assert fresh.json()["job_id"] != first.json()["job_id"]
    assert len(FisherMergeClient(http=client).jobs(kind="merge").jobs) == 2


def test_idempotency_replays_a_cached_fisher_answer(client, root):
    job_id = client.post("/fisher", json=fisher_body(root)).json()["job_id"]
    run_worker_burst(root)
    headers = {"Idempotency-Key": "f"}
    first = client.post("/fisher", json=fisher_body(root), headers=headers)
    again = client.post("/fisher", json=fisher_body(root), headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json()["cached"] and job_id


def merge_body(root, output: str) -> dict:
    return {
        "models": [str(root / "a"), str(root / "b")],
        "method": "isotropic",
        "output_uri": str(root / output),
    }


def test_list_jobs_filters_and_pages(client, root):
    api = FisherMergeClient(http=client)
    fisher_id = api.fisher(fisher_body(root)).job_id
    merge_ids = [api.merge(merge_body(root, f"o{i}")).job_id for i in range(5)]
    assert [job.job_id for job in api.jobs().jobs] == [*reversed(merge_ids), fisher_id]
    assert [job.job_id for job in api.jobs(kind="fisher").jobs] == [fisher_id]
    seen, cursor = [], None
    while True:
        page = api.jobs(kind="merge", limit=2, cursor=cursor)
        seen += [job.job_id for job in page.jobs]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == list(reversed(merge_ids))
    api.cancel(merge_ids[0])
    assert [job.job_id for job in api.jobs(status="cancelled").jobs] == [merge_ids[0]]
    assert len(api.jobs(status="queued").jobs) == 5
    bad = client.get("/jobs", params={"status": "done"})
    assert bad.status_code == 422 and "status" in json.dumps(bad.json())
    assert client.get("/jobs", params={"limit": 0}).status_code == 422


def test_cancel_a_queued_fisher_fails_the_merge_waiting_on_it(client, root):
    api = FisherMergeClient(http=client)
    defaults = {k: v for k, v in fisher_body(root).items() if k != "model"}
    merge = api.merge(auto_merge_body(root, "merged", defaults))
    view = api.cancel(merge.depends_on[0])
    assert view.status == "cancelled" and view.cancel_requested
    run_worker_burst(root)
    assert api.job(merge.depends_on[1]).status == "succeeded"  # shared work is kept
    merged = api.job(merge.job_id)
    assert merged.status == "failed" and merged.error.type == "DependencyFailed"
    assert f"{merge.depends_on[0]} was cancelled" in merged.error.message
    assert not (root / "merged").exists()
    conflict = client.delete(f"/jobs/{merge.depends_on[0]}")
    assert conflict.status_code == 409 and "already ended: cancelled" in conflict.json()["detail"]
    assert client.delete("/jobs/nope").status_code == 404


def test_metrics_count_requests_and_jobs(client, root):
    api = FisherMergeClient(http=client)
    api.merge(merge_body(root, "o"))
    client.get("/jobs/nope")
    text = client.get("/metrics").text
    assert 'fisher_merge_http_requests_total{method="POST",route="/merge",status="202"} 1.0' in text
    assert (
        'fisher_merge_http_requests_total{method="GET",route="/jobs/{job_id}",status="404"} 1.0'
        in text
    )
    assert 'fisher_merge_http_request_duration_seconds_count{method="POST",route="/merge"}' in text
    assert 'fisher_merge_queue_depth{queue="merge"} 1.0' in text
    assert 'fisher_merge_jobs{queue="merge",status="queued"} 1.0' in text
    run_worker_burst(root)
    text = client.get("/metrics").text
    assert 'fisher_merge_queue_depth{queue="merge"} 0.0' in text
    assert 'fisher_merge_jobs{queue="merge",status="succeeded"} 1.0' in text


def test_concurrent_identical_fisher_requests_share_one_job(client, root, redis):
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: client.post("/fisher", json=fisher_body(root)), range(8)))
    assert {answer.status_code for answer in answers} == {202}
    assert len({answer.json()["job_id"] for answer in answers}) == 1
    assert redis.llen("rq:queue:fisher") == 1
