"""End to end over HTTP: the API, real worker processes, the real Redis and a moto S3 server.
Fisher and merge jobs to completion, cancellation, a worker killed or stopped half-way,
callbacks, transient storage errors."""

import hashlib
import hmac
import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import boto3
import pytest
import torch
from moto.server import ThreadedMotoServer
from redis import Redis
from rq.job import Job
from safetensors.torch import load

from app.merge.engine import run_merge
from app.schemas import MergeRequest
from app.synthetic import save_tiny_classifier
from tests.conftest import BUCKET, free_port, s3_keys, upload_dir
from tests.redis_fixture import REDIS_URL
from tests.reference import load_state
from tests.service import kill_worker, save_wide_checkpoint, wait_for

ROWS = [{"text": "the movie was good", "label": 1}, {"text": "bad plot", "label": 0}]


def s3_state(s3_client, prefix: str) -> dict[str, torch.Tensor]:
    body = s3_client.get_object(Bucket=BUCKET, Key=f"{prefix}/model.safetensors")["Body"].read()
    return load(body)


@pytest.fixture
def uploaded(service, tmp_path, s3_client):
    """Tiny classifiers a (2 labels) and b (3 labels) and a data set, in S3."""
    save_tiny_classifier(tmp_path / "a", seed=1)
    save_tiny_classifier(tmp_path / "b", seed=2, num_labels=3)
    data = tmp_path / "data" / "train.jsonl"
    data.parent.mkdir()
    data.write_text("\n".join(json.dumps(row) for row in ROWS))
    return {
        name: upload_dir(s3_client, tmp_path / name, f"{service.prefix}/{name}")
        for name in ("a", "b", "data")
    }


@pytest.fixture
def wide(service, tmp_path, s3_client):
    """Two wide checkpoints in S3: a merge of them from S3 in 1 MiB steps takes seconds."""
    return [
        upload_dir(
            s3_client, save_wide_checkpoint(tmp_path / name, seed), f"{service.prefix}/{name}"
        )
        for name, seed in (("w1", 1), ("w2", 2))
    ]


def fisher_settings(uploaded) -> dict:
    return {
        "fisher_type": "exact",
        "dataset": {"uri": uploaded["data"] + "/train.jsonl", "text_fields": ["text"]},
    }


def test_fisher_job_writes_its_fisher_to_s3_then_is_cached(service, uploaded, s3_client):
    body = {"model": uploaded["a"], **fisher_settings(uploaded)}
    answer = service.client.fisher(body)
    assert not answer.cached and answer.job_id
    service.start_worker()
    view = service.client.wait(answer.job_id, timeout_s=120)
    assert view.status == "succeeded", view
    assert view.result["fisher_uri"] == answer.fisher_uri
    prefix = answer.fisher_uri.removeprefix(f"s3://{BUCKET}/").rstrip("/")
    assert sorted(s3_keys(s3_client, prefix)) == [
        f"{prefix}/fisher.json",
        f"{prefix}/fisher.safetensors",
    ]
    fisher = load(
        s3_client.get_object(Bucket=BUCKET, Key=f"{prefix}/fisher.safetensors")["Body"].read()
    )
    params = load_state(Path(service.env["FM_MODEL_CACHE_DIR"]).parent / "a")
    assert set(fisher) == {name for name, t in params.items() if t.is_floating_point()}
    assert all(torch.all(value >= 0) for value in fisher.values())
    again = service.client.fisher(body)
    assert again.cached and again.job_id is None and again.fisher_uri == answer.fisher_uri


def test_auto_merge_is_three_jobs_and_equals_the_engine(service, uploaded, s3_client, tmp_path):
    body = {
        "models": [
            {"uri": uploaded["a"], "fisher": "auto"},
            {"uri": uploaded["b"], "fisher": "auto"},
        ],
        "lambdas": [0.7, 0.3],
        "method": "fisher",
        "output_uri": service.uri("merged"),
        "fisher_defaults": fisher_settings(uploaded),
    }
    answer = service.client.merge(body)
    assert len(answer.depends_on) == 2
    service.start_worker()
    view = service.client.wait(answer.job_id, timeout_s=180)
    assert view.status == "succeeded", view
    assert {job.status for job in map(service.client.job, answer.depends_on)} == {"succeeded"}
    # the engine run directly on the same inputs gives the same tensors, bit for bit
    direct = MergeRequest.model_validate(
        body
        | {
            "models": [
                {"uri": uri, "fisher": fisher}
                for uri, fisher in zip(
                    (uploaded["a"], uploaded["b"]), view.result["fishers"], strict=True
                )
            ],
            "output_uri": str(tmp_path / "direct"),
        }
    )
    run_merge(direct, service.settings)
    served = s3_state(s3_client, f"{service.prefix}/merged")
    expected = load_state(tmp_path / "direct")
    assert served.keys() == expected.keys()
    assert all(torch.equal(served[name], expected[name]) for name in expected)
    # a second merge of the same models computes no Fisher
    second = service.client.merge(body | {"output_uri": service.uri("again")})
    assert second.depends_on == []
    assert service.client.wait(second.job_id, timeout_s=120).status == "succeeded"
    assert len(service.client.jobs(kind="fisher").jobs) == 2


def start_wide_merge(service, wide, **extra) -> str:
    body = {"models": wide, "method": "isotropic", "output_uri": service.uri("wide-out"), **extra}
    job_id = service.client.merge(body).job_id

    def started() -> bool:
        progress = service.client.job(job_id).progress
        return progress is not None and progress.done > 0

    wait_for(started, timeout_s=60, what="the merge to make progress")
    view = service.client.job(job_id)
    assert view.status == "running" and view.progress.done < view.progress.total
    return job_id


def nothing_at(s3_client, service, name: str) -> bool:
    return s3_keys(s3_client, f"{service.prefix}/{name}/") == []


def abort_leftover_uploads(s3_client, service) -> int:
    """What the bucket's AbortIncompleteMultipartUpload rule does for a killed job's upload."""
    answer = s3_client.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{service.prefix}/")
    uploads = answer.get("Uploads", [])
    for upload in uploads:
        s3_client.abort_multipart_upload(
            Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"]
        )
    return len(uploads)


def test_cancel_a_running_merge_publishes_nothing(service, wide, s3_client):
    service.start_worker()
    job_id = start_wide_merge(service, wide)
    assert service.client.cancel(job_id).cancel_requested
    view = service.client.wait(job_id, timeout_s=30)
    assert view.status == "cancelled" and view.error is None
    assert nothing_at(s3_client, service, "wide-out")
    uploads = s3_client.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{service.prefix}/wide-out")
    assert uploads.get("Uploads", []) == []  # the job aborted its upload itself
    with pytest.raises(Exception, match="409"):
        service.client.cancel(job_id)


def test_forced_cancel_kills_the_job_and_the_worker_goes_on(service, wide, s3_client):
    worker = service.start_worker()
    job_id = start_wide_merge(service, wide)
    assert service.client.cancel(job_id, force=True).status == "cancelled"
    wait_for(lambda: service.client.job(job_id).status == "cancelled", what="the horse killed")
    assert service.client.job(job_id).ended_at is not None
    assert nothing_at(s3_client, service, "wide-out")
    abort_leftover_uploads(s3_client, service)
    body = {"models": wide, "method": "isotropic", "output_uri": service.uri("next")}
    assert service.client.wait(service.client.merge(body).job_id, 60).status == "succeeded"
    assert worker.poll() is None


def test_worker_killed_half_way_fails_the_job_and_publishes_nothing(
    service, wide, s3_client, receiver
):
    url, calls = receiver
    worker = service.start_worker()
    job_id = start_wide_merge(service, wide, callback_url=url)
    kill_worker(worker)
    view = service.client.wait(job_id, timeout_s=30)
    assert view.status == "failed"
    assert view.error.type == "WorkerLost"
    assert nothing_at(s3_client, service, "wide-out")
    assert abort_leftover_uploads(s3_client, service) <= 1  # invisible, never completed
    # a new worker delivers the callback the lost job's end queued (its first attempt: the
    # retry waits for the dead worker's scheduler lock to expire, about a minute)
    service.start_worker()
    wait_for(lambda: len(calls) >= 1, timeout_s=60, what="the callback")
    assert calls[-1][0]["status"] == "failed"
    assert calls[-1][0]["error"]["type"] == "WorkerLost"


def test_sigterm_lets_the_current_job_finish(service, wide, s3_client):
    worker = service.start_worker()
    job_id = start_wide_merge(service, wide)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=120) == 0
    assert service.client.job(job_id).status == "succeeded"
    assert not nothing_at(s3_client, service, "wide-out")


def test_a_second_sigterm_stops_the_job(service, wide, s3_client):
    worker = service.start_worker()
    job_id = start_wide_merge(service, wide)
    worker.send_signal(signal.SIGTERM)
    time.sleep(1.5)  # RQ ignores a second signal within a second of the first
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=30)
    view = service.client.wait(job_id, timeout_s=30)
    assert view.status == "failed" and view.error.type == "WorkerLost"
    assert nothing_at(s3_client, service, "wide-out")
    assert abort_leftover_uploads(s3_client, service) <= 1


class Receiver(BaseHTTPRequestHandler):
    """Answers 500 to the first POST of each job to each path, 200 after; records them all."""

    calls: ClassVar[list[tuple[dict, bytes, dict, str]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        job_id = json.loads(body)["job_id"]
        first = not any(call[0]["job_id"] == job_id and call[3] == self.path for call in self.calls)
        self.calls.append((json.loads(body), body, dict(self.headers), self.path))
        self.send_response(500 if first else 200)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def receiver():
    Receiver.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", Receiver.calls
    server.shutdown()


def test_callbacks_are_signed_and_retried(service, uploaded, wide, receiver):
    url, calls = receiver
    fisher = service.client.fisher(
        {"model": uploaded["a"], **fisher_settings(uploaded), "callback_url": url}
    )
    shared = service.client.fisher(  # the same Fisher: the same job, both URLs called
        {"model": uploaded["a"], **fisher_settings(uploaded), "callback_url": url + "-2"}
    )
    assert shared.job_id == fisher.job_id
    bad = service.client.merge(
        {
            "models": [uploaded["a"], service.uri("nope")],
            "method": "isotropic",
            "output_uri": service.uri("o"),
            "callback_url": url,
        }
    )
    queued = service.client.merge(
        {"models": wide, "method": "isotropic", "output_uri": service.uri("q"), "callback_url": url}
    )
    service.client.cancel(queued.job_id)
    service.start_worker()
    wait_for(lambda: len(calls) >= 8, timeout_s=90, what="two attempts per job and URL")
    final = {call[0]["job_id"]: call for call in calls}
    assert final[fisher.job_id][0]["status"] == "succeeded"
    assert final[fisher.job_id][0]["result"]["fisher_uri"] == fisher.fisher_uri
    assert final[bad.job_id][0]["status"] == "failed"
    assert service.uri("nope") in final[bad.job_id][0]["error"]["message"]
    assert final[queued.job_id][0]["status"] == "cancelled"
    for _, body, headers, _ in calls:
        expected = hmac.new(b"callback-secret", body, hashlib.sha256).hexdigest()
        assert headers["X-Fisher-Merge-Signature"] == f"sha256={expected}"
    assert sorted((call[0]["job_id"], call[3]) for call in calls) == sorted(
        [(fisher.job_id, "/hook-2"), *((job.job_id, "/hook") for job in (fisher, bad, queued))] * 2
    )


def test_transient_storage_errors_are_retried_bad_input_is_not(service, tmp_path):
    port = free_port()
    later = f"http://127.0.0.1:{port}"
    bucket_body = {
        "models": ["s3://late/a", "s3://late/b"],
        "method": "isotropic",
        "output_uri": "s3://late/out",
    }
    job_id = service.client.merge(bucket_body).job_id
    service.start_worker(
        FM_S3_ENDPOINT_URL=later, FM_STORAGE_RETRY_BASE_S="1", FM_STORAGE_RETRIES="8"
    )
    connection = Redis.from_url(REDIS_URL)
    wait_for(
        lambda: Job.fetch(job_id, connection=connection).meta.get("storage_retries", 0) >= 1,
        timeout_s=60,
        what="a retried storage error",
    )
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        client = boto3.client("s3", endpoint_url=later)
        client.create_bucket(Bucket="late")
        for name, seed in (("a", 1), ("b", 2)):
            save_tiny_classifier(tmp_path / name, seed=seed)
            for path in (tmp_path / name).iterdir():
                client.upload_file(str(path), "late", f"{name}/{path.name}")
        view = service.client.wait(job_id, timeout_s=120)
        assert view.status == "succeeded", view
        missing = service.client.merge(
            bucket_body | {"models": ["s3://late/a", "s3://late/zz"], "output_uri": "s3://late/o2"}
        )
        view = service.client.wait(missing.job_id, timeout_s=60)
        assert view.status == "failed" and "s3://late/zz" in view.error.message
        assert "storage_retries" not in Job.fetch(missing.job_id, connection=connection).meta
    finally:
        server.stop()
