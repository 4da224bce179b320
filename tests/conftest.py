"""Shared fixtures: tiny checkpoints on disk, a moto S3 server over HTTP, stores of both kinds."""

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import torch
from moto.server import ThreadedMotoServer

from app.core.config import Settings
from app.synthetic import save_stand_in_fisher, save_tiny_classifier

BUCKET = "ckpt"
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request
pytest_plugins = ["tests.redis_fixture", "tests.service"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server in this process, spoken to over real HTTP."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    mp = pytest.MonkeyPatch()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        mp.setenv(name, value)
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    yield endpoint
    mp.undo()
    server.stop()


@pytest.fixture
def s3_settings(s3_endpoint: str) -> Settings:
    return Settings(s3_endpoint_url=s3_endpoint, s3_part_bytes=5 * 1024 * 1024)


@pytest.fixture
def s3_client(s3_endpoint: str):
    return boto3.client("s3", endpoint_url=s3_endpoint)


def upload_dir(client, local: Path, prefix: str) -> str:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(local).as_posix()}")
    return f"s3://{BUCKET}/{prefix}"


def s3_keys(client, prefix: str) -> list[str]:
    answer = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for item in answer.get("Contents", [])]


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny fine-tunes of one base, in several dtypes and layouts, with stand-in Fishers."""
    root = tmp_path_factory.mktemp("zoo")
    save_tiny_classifier(root / "a", seed=1, num_labels=2)
    save_tiny_classifier(root / "b", seed=2, num_labels=2)
    save_tiny_classifier(root / "c3", seed=3, num_labels=3)
    save_tiny_classifier(root / "b_sharded", seed=2, num_labels=2, max_shard_size="30KB")
    save_tiny_classifier(root / "a_f16", seed=1, dtype=torch.float16)
    save_tiny_classifier(root / "b_bf16", seed=2, dtype=torch.bfloat16)
    for name, seed in [
        ("a", 1),
        ("b", 2),
        ("c3", 3),
        ("b_sharded", 2),
        ("a_f16", 1),
        ("b_bf16", 2),
    ]:
        save_stand_in_fisher(root / name, root / "fishers" / name, seed=seed + 100)
    return root


def auto_merge_body(root: Path, output: str, fisher_defaults: dict) -> dict:
    """A Fisher merge of models a and b under `root`, both Fishers 'auto'."""
    return {
        "models": [
            {"uri": str(root / "a"), "fisher": "auto"},
            {"uri": str(root / "b"), "fisher": "auto"},
        ],
        "method": "fisher",
        "output_uri": str(root / output),
        "fisher_defaults": fisher_defaults,
    }
