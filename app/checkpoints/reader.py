"""Reading tensors from a checkpoint prefix, one tensor (or row slice) at a time.

A checkpoint is `<stem>.safetensors` or shards listed by `<stem>.safetensors.index.json`. Only
headers are read on open (two ranged reads per file); tensor data is fetched on demand.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from app.checkpoints.format import (
    DTYPES,
    CheckpointError,
    Header,
    TensorEntry,
    TensorSpec,
    parse_header,
)
from app.storage import ObjectInfo, ObjectNotFound, ObjectStore


@dataclass(frozen=True)
class SafetensorsObject:
    """One safetensors object in a store, with its parsed header."""

    store: ObjectStore
    info: ObjectInfo
    header: Header

    @classmethod
    def open(cls, store: ObjectStore, key: str) -> "SafetensorsObject":
        info = store.head(key)
        uri = store.uri_of(key)
        header = parse_header(
            lambda start, length: store.read_range(key, start, length), info.size, uri
        )
        return cls(store=store, info=info, header=header)

    @property
    def uri(self) -> str:
        return self.store.uri_of(self.info.key)

    def read_rows(
        self, entry: TensorEntry, start: int, stop: int, buffer: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Rows [start, stop) of the tensor's first dimension, as a CPU tensor that views
        `buffer` (uint8, at least as large) when one is given, or new memory."""
        spec = entry.spec
        row_bytes = spec.row_numel * DTYPES[spec.dtype].itemsize
        size = (stop - start) * row_bytes
        # torch.empty, unlike bytearray, does not zero the memory it is about to overwrite
        raw = torch.empty(size, dtype=torch.uint8) if buffer is None else buffer[:size]
        if size:
            self.store.read_into(
                self.info.key, entry.begin + start * row_bytes, memoryview(raw.numpy())
            )
        shape = (stop - start, *spec.shape[1:]) if spec.shape else ()
        return raw.view(DTYPES[spec.dtype].torch_dtype).reshape(shape)


class Checkpoint:
    """The tensors of one checkpoint prefix, by name."""

    def __init__(
        self, store: ObjectStore, files: list[SafetensorsObject], index_key: str | None
    ) -> None:
        self.store = store
        self.files = files
        self.index_key = index_key
        self._where: dict[str, tuple[SafetensorsObject, TensorEntry]] = {}
        for file in files:
            for name, entry in sorted(file.header.entries.items(), key=lambda kv: kv[1].begin):
                if name in self._where:
                    raise CheckpointError(
                        f"{store.uri}: tensor {name!r} appears in both "
                        f"{self._where[name][0].uri} and {file.uri}"
                    )
                self._where[name] = (file, entry)

    @classmethod
    def open(cls, store: ObjectStore, stem: str = "model") -> "Checkpoint":
        index_key = f"{stem}.safetensors.index.json"
        single_key = f"{stem}.safetensors"
        try:
            index_bytes = store.read_bytes(index_key)
        except ObjectNotFound:
            try:
                return cls(store, [SafetensorsObject.open(store, single_key)], None)
            except ObjectNotFound:
                raise CheckpointError(
                    f"{store.uri}: neither {single_key} nor {index_key} exists"
                ) from None
        shard_keys = _shards_of_index(index_bytes, store.uri_of(index_key))
        files = []
        for key in shard_keys:
            try:
                files.append(SafetensorsObject.open(store, key))
            except ObjectNotFound:
                raise CheckpointError(
                    f"{store.uri_of(index_key)}: names shard {key!r}, which does not exist"
                ) from None
        checkpoint = cls(store, files, index_key)
        checkpoint._check_index(index_bytes)
        return checkpoint

    def _check_index(self, index_bytes: bytes) -> None:
        weight_map: dict[str, str] = json.loads(index_bytes)["weight_map"]
        for name, key in weight_map.items():
            file = self._where.get(name, (None, None))[0]
            if file is None or file.info.key != key:
                raise CheckpointError(
                    f"{self.store.uri_of(self.index_key or '')}: maps tensor {name!r} to {key!r}, "
                    "which does not hold it"
                )

    @property
    def uri(self) -> str:
        return self.store.uri

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def names(self) -> list[str]:
        """Tensor names in file order, then by offset: the order the data lies on disk."""
        return list(self._where)

    def spec(self, name: str) -> TensorSpec:
        return self._where[name][1].spec

    def specs(self) -> Iterator[TensorSpec]:
        for name in self._where:
            yield self.spec(name)

    def read_rows(
        self, name: str, start: int, stop: int, buffer: torch.Tensor | None = None
    ) -> torch.Tensor:
        file, entry = self._where[name]
        return file.read_rows(entry, start, stop, buffer)

    def read(self, name: str) -> torch.Tensor:
        return self.read_rows(name, 0, self.spec(name).rows)

    def locate(self, name: str) -> str:
        """URI of the file holding `name`, for error messages."""
        return self._where[name][0].uri


def _shards_of_index(index_bytes: bytes, uri: str) -> list[str]:
    try:
        index = json.loads(index_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{uri}: index is not valid JSON ({error})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(key, str) for key in weight_map.values()
    ):
        raise CheckpointError(f"{uri}: index has no weight_map of tensor names to shard files")
    return sorted(set(weight_map.values()))
