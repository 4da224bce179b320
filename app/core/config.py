"""The one settings class: every `FM_*` environment variable the api, workers and CLI read."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FM_", frozen=True)

    device: Literal["auto", "cpu", "cuda"] | str = Field(
        "auto", description="Torch device for merge arithmetic; `auto` picks CUDA when present."
    )
    chunk_bytes: int = Field(
        64 * MIB,
        ge=MIB,
        description="Memory budget for one merge step; larger tensors are merged in row slices.",
    )
    max_shard_size: int = Field(
        5 * 1000**3, ge=1, description="Default largest output shard, in bytes."
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, moto); unset means AWS."
    )
    s3_region: str | None = Field(None, description="Region for the S3 client.")
    s3_part_bytes: int = Field(
        8 * MIB, ge=5 * MIB, description="Multipart upload part size (S3 needs at least 5 MiB)."
    )
    local_fsync: bool = Field(
        True,
        description="fsync local files before publishing them, so a power loss cannot leave a "
        "published but empty or torn file; off trades that for speed on scratch disks.",
    )
    cache_uri: str = Field(
        str(Path.home() / ".cache" / "fisher-merge" / "store"),
        description="Prefix of the content-addressed Fisher cache (fishers/<key>/ below it).",
    )
    model_cache_dir: Path = Field(
        Path.home() / ".cache" / "fisher-merge" / "models",
        description="Local folder where checkpoints from object storage are kept for loading.",
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis of the RQ queues.")
    read_threads: int = Field(4, ge=1, le=64, description="Parallel tensor reads during a merge.")
    api_keys: str = Field(
        "",
        description="Comma-separated bearer API keys; when set, job routes answer 401 without one.",
    )
    callback_secret: str = Field(
        "", description="Signs callback bodies with HMAC-SHA256 (X-Fisher-Merge-Signature)."
    )
    callback_retry_s: str = Field(
        "2,10,30,120,600",
        description="Seconds between callback attempts, comma-separated; one retry per value.",
    )
    job_timeout_s: int = Field(
        6 * 3600, ge=60, description="A job running longer than this is stopped and failed."
    )
    job_ttl_s: int = Field(
        7 * 24 * 3600, ge=60, description="How long finished, failed and cancelled jobs are kept."
    )
    worker_heartbeat_s: int = Field(
        10,
        ge=1,
        description="Worker heartbeat period; a job whose worker is silent for three periods "
        "(killed, machine lost) is failed.",
    )
    storage_retries: int = Field(
        4, ge=0, description="Retries of a job step after a transient object-store error."
    )
    storage_retry_base_s: float = Field(
        2.0, gt=0, description="First back-off after a transient object-store error; doubles."
    )

    @property
    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]

    @property
    def callback_retry_intervals(self) -> list[int]:
        return [int(value) for value in self.callback_retry_s.split(",") if value.strip()]


@lru_cache
def get_settings() -> Settings:
    return Settings()
