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


@lru_cache
def get_settings() -> Settings:
    return Settings()
