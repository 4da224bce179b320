"""The REST API over HTTP (FastAPI's test client), with the real Redis and a real worker."""

import json

import pytest
from fastapi.testclient import TestClient

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
    answer = client.post("/merge", json=body)
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
