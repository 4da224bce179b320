"""A running service for end-to-end tests: the API in this process (FastAPI's test client,
spoken to through the typed client), real `fisher-merge worker` processes, Redis db 15, a moto
S3 server over HTTP. Workers are stopped (SIGKILL to their process group) after each test."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from app.client import FisherMergeClient
from app.core.config import Settings
from app.main import create_app
from tests.conftest import BUCKET
from tests.redis_fixture import REDIS_URL

MIB = 1024 * 1024


@dataclass
class Service:
    client: FisherMergeClient
    settings: Settings
    env: dict[str, str]
    prefix: str  # this test's S3 prefix
    workers: list[subprocess.Popen] = field(default_factory=list)

    def start_worker(self, **env: str) -> subprocess.Popen:
        worker = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"],
            env={**self.env, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.workers.append(worker)
        return worker

    def uri(self, name: str) -> str:
        return f"s3://{BUCKET}/{self.prefix}/{name}"

    def stop_workers(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                kill_worker(worker)


def kill_worker(worker: subprocess.Popen) -> None:
    """SIGKILL a worker and its children: its work horse runs in a session of its own."""
    for pid in (*children_of(worker.pid), worker.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    worker.wait()


def children_of(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                children.append(int(stat.parent.name))
    return children


def make_service(tmp_path: Path, s3_endpoint: str, **overrides: str) -> Service:
    prefix = f"svc-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "FM_REDIS_URL": REDIS_URL,
        "FM_S3_ENDPOINT_URL": s3_endpoint,
        "FM_CACHE_URI": f"s3://{BUCKET}/{prefix}/cache",
        "FM_MODEL_CACHE_DIR": str(tmp_path / "models"),
        "FM_CHUNK_BYTES": str(MIB),
        "FM_S3_PART_BYTES": str(5 * MIB),
        "FM_WORKER_HEARTBEAT_S": "1",
        "FM_CALLBACK_RETRY_S": "1,1,1",
        "FM_CALLBACK_SECRET": "callback-secret",
        **overrides,
    }
    settings = Settings(
        redis_url=REDIS_URL,
        s3_endpoint_url=s3_endpoint,
        cache_uri=env["FM_CACHE_URI"],
        model_cache_dir=tmp_path / "models-api",
        api_keys=overrides.get("FM_API_KEYS", ""),
    )
    return Service(FisherMergeClient(), settings, env, prefix)


@pytest.fixture
def service(tmp_path, redis, s3_endpoint) -> Iterator[Service]:
    service = make_service(tmp_path, s3_endpoint)
    with TestClient(create_app(service.settings)) as http:
        service.client = FisherMergeClient(http=http)
        yield service
    service.stop_workers()


def save_wide_checkpoint(path: Path, seed: int, tensors: int = 16, rows: int = 512) -> Path:
    """Float32 safetensors of `tensors` [rows, 1024] matrices: large enough that a merge
    streamed from S3 in 1 MiB steps takes seconds, so a test can act half-way through it."""
    generator = torch.Generator().manual_seed(seed)
    state = {
        f"layers.{i}.weight": torch.randn(rows, 1024, generator=generator) for i in range(tensors)
    }
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps({"model_type": "wide-test"}))
    return path


def wait_for(condition: Callable[[], bool], timeout_s: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)
