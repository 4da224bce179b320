"""RQ job functions run by a real `fisher-merge worker` process against the real Redis."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rq import Queue
from rq.job import Job, JobStatus

from app.synthetic import save_tiny_classifier
from tests.conftest import auto_merge_body
from tests.redis_fixture import REDIS_URL
from tests.reference import load_state


@pytest.fixture
def setup(tmp_path):
    save_tiny_classifier(tmp_path / "a", seed=1)
    save_tiny_classifier(tmp_path / "b", seed=2, num_labels=3)
    rows = [{"text": "the movie was good", "label": 1}, {"text": "bad plot", "label": 0}]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    return tmp_path


def run_worker_burst(root: Path) -> None:
    env = {
        **os.environ,
        "FM_REDIS_URL": REDIS_URL,
        "FM_CACHE_URI": str(root / "cache"),
        "FM_MODEL_CACHE_DIR": str(root / "models"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "worker", "--burst"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr


def fisher_body(root: Path, model: str) -> dict:
    return {
        "model": str(root / model),
        "fisher_type": "exact",
        "dataset": {"uri": str(root / "data.jsonl"), "text_fields": ["text"]},
    }


def test_fisher_and_dependent_merge_jobs(redis, setup):
    fishers = Queue("fisher", connection=redis)
    merges = Queue("merge", connection=redis)
    first = fishers.enqueue("workers.jobs.fisher_job", fisher_body(setup, "a"))
    second = fishers.enqueue("workers.jobs.fisher_job", fisher_body(setup, "b"))
    merge = merges.enqueue(
        "workers.jobs.merge_job",
        auto_merge_body(
            setup, "merged", {k: v for k, v in fisher_body(setup, "a").items() if k != "model"}
        ),
        depends_on=[first, second],
    )
    run_worker_burst(setup)
    jobs = [Job.fetch(job.id, connection=redis) for job in (first, second, merge)]
    assert [job.get_status() for job in jobs] == [JobStatus.FINISHED] * 3
    uris = [job.return_value()["fisher_uri"] for job in jobs[:2]]
    assert jobs[2].return_value()["fishers"] == uris  # the merge reused the dependencies' work
    assert jobs[0].meta["progress"] == {"done": 2, "total": 2, "unit": "examples"}
    assert jobs[2].meta["progress"]["unit"] == "bytes"
    assert jobs[2].meta["progress"]["done"] == jobs[2].meta["progress"]["total"]
    assert set(load_state(setup / "merged")) == set(load_state(setup / "a"))


def test_bad_input_fails_the_job_with_the_reason(redis, setup):
    queue = Queue("merge", connection=redis)
    job = queue.enqueue(
        "workers.jobs.merge_job", {"models": [str(setup / "a")], "output_uri": str(setup / "o")}
    )
    run_worker_burst(setup)
    job = Job.fetch(job.id, connection=redis)
    assert job.get_status() == JobStatus.FAILED
    assert "models" in job.latest_result().exc_string
    assert not (setup / "o").exists()


def test_unknown_queue_is_refused():
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "worker", "--queues", "gpu"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "unknown queues ['gpu']" in done.stderr
