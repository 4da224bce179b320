"""The streaming merge: open headers, plan, then for each tensor (or row slice of one) read it from
every model and Fisher, combine in float32 on the device, write, drop.

Peak memory is set by `FM_CHUNK_BYTES` (one slice of every input plus the output, and the next
slice being read), not by the model or its largest tensor. Output appears only when complete.
"""

import json
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import torch

from app import __version__
from app.checkpoints.format import DTYPES, TensorSpec
from app.checkpoints.reader import Checkpoint
from app.checkpoints.writer import CheckpointWriter
from app.core.config import Settings, get_settings
from app.core.finite import all_finite
from app.merge.methods import METHODS
from app.merge.plan import MergePlan, TensorPlan, plan_merge
from app.schemas import MergeRequest
from app.storage import ObjectStore, OutputTransaction, open_store

MANIFEST_KEY = "merge.json"
FISHER_STEM = "fisher"
_WEIGHT_SUFFIXES = (
    ".safetensors",
    ".safetensors.index.json",
    ".bin",
    ".bin.index.json",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".gguf",
)
_NOT_COPIED = {MANIFEST_KEY, "README.md"}


class MergeInputError(ValueError):
    """An input holds values the merge cannot use (non-finite, negative Fisher, overflow)."""


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    unit: str = "bytes"


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class MergeResult:
    output_uri: str
    files: list[str]
    manifest: dict[str, object] = field(repr=False)


@dataclass(frozen=True)
class _Step:
    """Rows [start, stop) of one planned tensor."""

    plan: TensorPlan
    start: int
    stop: int


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_merge(
    request: MergeRequest,
    settings: Settings | None = None,
    progress: ProgressCallback | None = None,
) -> MergeResult:
    settings = settings or get_settings()
    if any(model.fisher == "auto" for model in request.models):
        raise ValueError("models with fisher 'auto' must be resolved to Fisher URIs first")
    models = [Checkpoint.open(open_store(model.uri, settings)) for model in request.models]
    fishers = None
    if METHODS[request.method].needs_fisher:
        fishers = [
            Checkpoint.open(open_store(model.fisher or "", settings), stem=FISHER_STEM)
            for model in request.models
        ]
    output = open_store(request.output_uri, settings)
    existing = _check_output(output, request, [model.store for model in models])
    plan = plan_merge(models, request.target, request.dtype, fishers)
    merger = _StreamingMerge(request, settings, models, fishers, plan)
    manifest = _manifest(request, models, fishers, plan, merger.fisher_norms)
    max_shard_size = request.max_shard_size or settings.max_shard_size
    with OutputTransaction(output, replace=existing) as transaction:
        writer = CheckpointWriter(
            transaction,
            plan.output_specs,
            metadata={"fisher_merge": json.dumps(manifest, separators=(",", ":"))},
            max_shard_size=max_shard_size,
        )
        merger.write(writer, progress)
        files = writer.close()
        files += _copy_side_files(models[request.target].store, transaction)
        manifest_out = {**manifest, "created_at": datetime.now(UTC).isoformat(), "files": files}
        transaction.put(MANIFEST_KEY, json.dumps(manifest_out, indent=2).encode())
        files.append(MANIFEST_KEY)
    return MergeResult(output_uri=output.uri, files=files, manifest=manifest_out)


def _check_output(
    output: ObjectStore, request: MergeRequest, inputs: Sequence[ObjectStore]
) -> list[str]:
    """Keys already at the output (to be replaced); refuses an input as output, or a non-empty
    output without `overwrite`."""
    for i, store in enumerate(inputs):
        if store.uri == output.uri:
            raise ValueError(f"output_uri {request.output_uri!r} is models[{i}].uri")
    existing = [info.key for info in output.list(recursive=True)]
    if existing and not request.overwrite:
        raise ValueError(
            f"output_uri {output.uri} already holds {len(existing)} objects; "
            "set overwrite to replace them"
        )
    return existing


class _StreamingMerge:
    def __init__(
        self,
        request: MergeRequest,
        settings: Settings,
        models: Sequence[Checkpoint],
        fishers: Sequence[Checkpoint] | None,
        plan: MergePlan,
    ) -> None:
        self.models = models
        self.target = models[request.target]
        self.fishers = fishers
        self.plan = plan
        self.lambdas = request.weights
        self.method = METHODS[request.method](fisher_floor=request.fisher_floor)
        self.device = resolve_device(settings.device)
        self.chunk_bytes = settings.chunk_bytes
        self.read_threads = settings.read_threads
        self.fisher_norms = (
            self._fisher_norms() if fishers is not None and request.normalize_fishers else None
        )

    def _sources(self, tensor: TensorPlan) -> list[Checkpoint]:
        if not tensor.merged:
            return [self.target]
        return [*self.models, *(self.fishers or [])]

    def _steps(self) -> Iterator[_Step]:
        for tensor in self.plan.tensors:
            rows = tensor.source.rows
            per_row = tensor.source.row_numel * self._bytes_per_element(tensor)
            rows_per_step = max(1, self.chunk_bytes // max(per_row, 1))
            for start in range(0, max(rows, 1), rows_per_step):
                yield _Step(tensor, start, min(start + rows_per_step, rows))

    def _bytes_per_element(self, tensor: TensorPlan) -> int:
        """Host memory alive per element of a step: the raw inputs of this step and of the one
        being read ahead, their float32 working copies, two accumulators and the output."""
        sources = self._sources(tensor)
        name = tensor.source.name
        raw = sum(DTYPES[source.spec(name).dtype].itemsize for source in sources)
        working = 4 * len(sources) + 8 if tensor.merged else 0
        return 2 * raw + working + DTYPES[tensor.output.dtype].itemsize

    def _staging_buffers(self, steps: list[_Step]) -> list[dict[int, torch.Tensor]]:
        """Two read buffers per input checkpoint (the step being merged and the one being read
        ahead), each as large as that input's largest step: reused for every step, so the
        merge allocates nothing per step and its memory is fixed before it starts."""
        sizes: dict[int, int] = {}
        for step in steps:
            rows = step.stop - step.start
            for source in self._sources(step.plan):
                spec = source.spec(step.plan.source.name)
                size = rows * spec.row_numel * DTYPES[spec.dtype].itemsize
                sizes[id(source)] = max(sizes.get(id(source), 0), size)
        return [
            {key: torch.empty(size, dtype=torch.uint8) for key, size in sizes.items()}
            for _ in range(2)
        ]

    def write(self, writer: CheckpointWriter, progress: ProgressCallback | None) -> None:
        total = sum(spec.nbytes for spec in self.plan.output_specs)
        done = 0
        steps = list(self._steps())
        buffers = self._staging_buffers(steps)
        with ThreadPoolExecutor(max_workers=self.read_threads) as pool:

            def read(i: int) -> list[Future[torch.Tensor]]:
                if i >= len(steps):
                    return []
                step, slot = steps[i], buffers[i % 2]
                name = step.plan.source.name
                return [
                    pool.submit(source.read_rows, name, step.start, step.stop, slot[id(source)])
                    for source in self._sources(step.plan)
                ]

            reading = read(0)
            for i, step in enumerate(steps):
                values = [future.result() for future in reading]
                reading = read(i + 1)
                out = self._combine(step, values)
                writer.write(step.plan.output.name, out.cpu())
                done += out.numel() * out.element_size()
                if progress is not None:
                    progress(Progress(done=done, total=total))

    def _combine(self, step: _Step, values: list[torch.Tensor]) -> torch.Tensor:
        """The output slice of one step; the inputs are overwritten."""
        spec, out_dtype = step.plan.source, DTYPES[step.plan.output.dtype].torch_dtype
        if not step.plan.merged:
            out = values[0].to(out_dtype)
        else:
            count = len(self.models)
            for i, lam in enumerate(self.lambdas):
                if not lam:  # a model weighted 0 never reaches the output's check below
                    _check_finite(values[i], spec, self.models[i].locate(spec.name))
            thetas = [self._on_device(value) for value in values[:count]]
            fishers = None
            if self.fishers is not None:
                fishers = [self._on_device(value) for value in values[count:]]
                self._check_fishers(spec, fishers)
            out = self.method.merge(thetas, self.lambdas, fishers).to(out_dtype)
        if not all_finite(out):
            self._blame(step)
        return out

    def _on_device(self, value: torch.Tensor) -> torch.Tensor:
        return value.to(device=self.device, dtype=torch.float32)

    def _check_fishers(self, spec: TensorSpec, fishers: list[torch.Tensor]) -> None:
        assert self.fishers is not None
        for i, fisher in enumerate(fishers):
            if fisher.numel() and float(fisher.min()) < 0:
                where = self.fishers[i].locate(spec.name)
                raise MergeInputError(f"{where}: Fisher for {spec.name!r} has negative values")
            if self.fisher_norms is not None:
                fisher.div_(self.fisher_norms[i])

    def _blame(self, step: _Step) -> None:
        """The output is not finite: read the inputs again (the merge overwrote its copies)
        and name the one responsible, or else the output dtype."""
        spec = step.plan.source
        for source in self._sources(step.plan):
            value = source.read_rows(spec.name, step.start, step.stop)
            _check_finite(value, spec, source.locate(spec.name))
        raise MergeInputError(
            f"tensor {spec.name!r}: merged values overflow {step.plan.output.dtype}"
        )

    def _fisher_norms(self) -> list[float]:
        """Each Fisher's global L2 norm over the merged tensors, one streamed pass."""
        assert self.fishers is not None
        norms = []
        for fisher in self.fishers:
            squares = 0.0
            for step in self._steps():
                if step.plan.merged:
                    values = fisher.read_rows(step.plan.source.name, step.start, step.stop)
                    squares += float(values.to(self.device, torch.float64).square().sum())
            if not math.isfinite(squares) or squares <= 0:
                raise MergeInputError(
                    f"{fisher.uri}: Fisher norm is {squares**0.5}, cannot normalise"
                )
            norms.append(squares**0.5)
        return norms


def _check_finite(value: torch.Tensor, spec: TensorSpec, where: str) -> None:
    if not all_finite(value):
        raise MergeInputError(f"{where}: tensor {spec.name!r} holds NaN or Inf values")


def _copy_side_files(target: ObjectStore, transaction: OutputTransaction) -> list[str]:
    """Config, tokenizer and other non-weight files of the target, copied as they are."""
    copied = []
    for info in target.list():
        if info.key in _NOT_COPIED or info.key.endswith(_WEIGHT_SUFFIXES):
            continue
        writer = transaction.open(info.key)
        step = 8 * 1024 * 1024
        for start in range(0, info.size, step):
            writer.write(target.read_range(info.key, start, min(step, info.size - start)))
        copied.append(info.key)
    return copied


def _manifest(
    request: MergeRequest,
    models: Sequence[Checkpoint],
    fishers: Sequence[Checkpoint] | None,
    plan: MergePlan,
    fisher_norms: list[float] | None,
) -> dict[str, object]:
    def identity(checkpoint: Checkpoint) -> dict[str, object]:
        files = [
            {"key": file.info.key, "size": file.info.size, "version": file.info.version}
            for file in checkpoint.files
        ]
        return {"uri": checkpoint.uri, "files": files}

    inputs = []
    for i, model in enumerate(models):
        entry = identity(model)
        entry["fisher"] = identity(fishers[i]) if fishers is not None else None
        inputs.append(entry)
    return {
        "fisher_merge_version": __version__,
        "method": request.method,
        "lambdas": request.weights,
        "target": request.target,
        "settings": {
            "fisher_floor": request.fisher_floor,
            "normalize_fishers": request.normalize_fishers,
            "dtype": request.dtype,
        },
        "models": inputs,
        "fisher_norms": fisher_norms,
        "merged": {
            "tensors": len(plan.merged),
            "parameters": sum(tensor.source.numel for tensor in plan.merged),
            "shared_fraction": plan.shared_fraction,
        },
        "copied_from_target": [
            {"name": tensor.source.name, "reason": tensor.reason} for tensor in plan.copied
        ],
    }
