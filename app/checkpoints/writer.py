"""Streaming a checkpoint out: header first (from names, dtypes and shapes), then tensor data in
order, split into shards at `max_shard_size` with a Hugging Face index file.

Everything goes through an `OutputTransaction`, so the files appear only when the caller commits.
"""

import json
from collections.abc import Sequence

import torch

from app.checkpoints.format import (
    DTYPES,
    CheckpointError,
    TensorSpec,
    build_header,
    tensor_to_bytes,
)
from app.storage import ObjectWriter, OutputTransaction


def plan_shards(specs: Sequence[TensorSpec], max_shard_size: int) -> list[list[TensorSpec]]:
    """Greedy split in order; a tensor larger than the limit gets a shard of its own."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def shard_names(stem: str, count: int) -> list[str]:
    if count == 1:
        return [f"{stem}.safetensors"]
    return [f"{stem}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


class CheckpointWriter:
    """Accepts tensor data strictly in the planned order, whole or in row slices."""

    def __init__(
        self,
        transaction: OutputTransaction,
        specs: Sequence[TensorSpec],
        metadata: dict[str, str] | None = None,
        max_shard_size: int = 5 * 1000**3,
        stem: str = "model",
    ) -> None:
        self._transaction = transaction
        self._metadata = {"format": "pt", **(metadata or {})}
        self._shards = plan_shards(specs, max_shard_size)
        self._names = shard_names(stem, len(self._shards))
        self._stem = stem
        self._queue = [
            (shard, spec) for shard, specs_ in enumerate(self._shards) for spec in specs_
        ]
        self._position = 0
        self._tensor_bytes = 0
        self._shard_index = -1
        self._file: ObjectWriter | None = None
        self.files: list[str] = []

    @property
    def total_bytes(self) -> int:
        return sum(spec.nbytes for _, spec in self._queue)

    def write(self, name: str, data: torch.Tensor) -> None:
        """Append `data` (the whole tensor, or its next rows) to tensor `name`."""
        if self._position >= len(self._queue):
            raise CheckpointError(f"tensor {name!r} written after every planned tensor")
        shard, spec = self._queue[self._position]
        if name != spec.name:
            raise CheckpointError(f"tensor {name!r} written where {spec.name!r} was planned")
        if data.dtype != DTYPES[spec.dtype].torch_dtype:
            raise CheckpointError(f"tensor {name!r}: got {data.dtype}, planned {spec.dtype}")
        if tuple(data.shape[1:]) != spec.shape[1:]:
            raise CheckpointError(
                f"tensor {name!r}: rows of shape {list(data.shape[1:])}, planned {list(spec.shape)}"
            )
        if shard != self._shard_index:
            self._open_shard(shard)
        chunk = tensor_to_bytes(data)
        if self._tensor_bytes + len(chunk) > spec.nbytes:
            raise CheckpointError(f"tensor {name!r}: more data than its shape holds")
        assert self._file is not None
        self._file.write(chunk)
        self._tensor_bytes += len(chunk)
        if self._tensor_bytes == spec.nbytes:
            self._position += 1
            self._tensor_bytes = 0

    def _open_shard(self, shard: int) -> None:
        header, _ = build_header(self._shards[shard], self._metadata)
        key = self._names[shard]
        self._file = self._transaction.open(key)
        self._file.write(header)
        self._shard_index = shard
        self.files.append(key)

    def close(self) -> list[str]:
        """Check every tensor was written in full and add the index; returns the keys written."""
        if self._position != len(self._queue):
            missing = self._queue[self._position][1].name
            raise CheckpointError(f"checkpoint closed before tensor {missing!r} was complete")
        if len(self._shards) > 1:
            index = {
                "metadata": {"total_size": self.total_bytes},
                "weight_map": {spec.name: self._names[shard] for shard, spec in self._queue},
            }
            key = f"{self._stem}.safetensors.index.json"
            self._transaction.put(key, json.dumps(index, indent=2).encode())
            self.files.append(key)
        return self.files
