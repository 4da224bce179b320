"""Computing a Fisher once per (checkpoint, data set, settings), or finding it in the cache.

The cache key is a SHA-256 over the checkpoint's identity (each file's key, size and version
tag), the data set's bytes and the canonical settings (everything that changes the result;
not the batch size). Entries live at `FM_CACHE_URI/fishers/<key>/` as `fisher.safetensors`
(float32, keyed by the checkpoint's own tensor names) and `fisher.json`, published together
with `fisher.json` last: a prefix holding `fisher.json` is whole.
"""

import hashlib
import importlib.metadata
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import torch

from app import __version__
from app.checkpoints.format import TensorSpec
from app.checkpoints.reader import Checkpoint
from app.checkpoints.writer import CheckpointWriter
from app.core.config import Settings, get_settings
from app.core.finite import all_finite
from app.fisher.compute import diagonal_fisher
from app.fisher.data import batches, load_examples, read_dataset
from app.fisher.loading import checkpoint_identity, load_checkpoint
from app.merge.engine import resolve_device
from app.schemas import FisherRequest
from app.storage import ObjectNotFound, ObjectStore, OutputTransaction, open_store

FORMAT_VERSION = 1
FISHER_FILE = "fisher.safetensors"
MANIFEST_FILE = "fisher.json"

ProgressCallback = Callable[[int, int], None]


class FisherInputError(ValueError):
    """The Fisher cannot be computed as asked (names, values)."""


@dataclass(frozen=True)
class FisherResult:
    fisher_uri: str
    cached: bool
    key: str
    manifest: dict[str, object] = field(repr=False)


def canonical_settings(request: FisherRequest) -> dict[str, object]:
    settings = request.settings.model_dump(mode="json", exclude={"batch_size"})
    settings["dataset"].pop("uri")  # the content counts, not where it lies
    return {"format_version": FORMAT_VERSION, **settings}


def cache_key(
    identity: list[dict[str, object]], dataset_sha256: str, request: FisherRequest
) -> str:
    material = {
        "model": identity,
        "dataset": dataset_sha256,
        "settings": canonical_settings(request),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def fisher_location(request: FisherRequest, settings: Settings) -> tuple[str, str, bytes]:
    """(key, output URI, data set bytes) without computing anything."""
    identity = checkpoint_identity(open_store(request.model, settings))
    raw = read_dataset(request.dataset.uri, settings)
    key = cache_key(identity, hashlib.sha256(raw).hexdigest(), request)
    uri = request.output_uri or f"{settings.cache_uri.rstrip('/')}/fishers/{key}/"
    return key, open_store(uri, settings).uri, raw


@dataclass(frozen=True)
class Lookup:
    key: str
    fisher_uri: str
    cached: FisherResult | None


def look_up(request: FisherRequest, settings: Settings | None = None) -> Lookup:
    """Where the request's Fisher lives and whether it is already there (no compute)."""
    settings = settings or get_settings()
    key, uri, _ = fisher_location(request, settings)
    return Lookup(key=key, fisher_uri=uri, cached=_cached(open_store(uri, settings), key))


def _cached(store: ObjectStore, key: str) -> FisherResult | None:
    try:
        manifest = json.loads(store.read_bytes(MANIFEST_FILE))
    except ObjectNotFound:
        return None
    if manifest.get("key") != key or not store.exists(FISHER_FILE):
        return None
    return FisherResult(fisher_uri=store.uri, cached=True, key=key, manifest=manifest)


def run_fisher(
    request: FisherRequest,
    settings: Settings | None = None,
    progress: ProgressCallback | None = None,
) -> FisherResult:
    """Reuse the cached Fisher for this request, or compute and store it."""
    settings = settings or get_settings()
    key, uri, raw = fisher_location(request, settings)
    output = open_store(uri, settings)
    cached = _cached(output, key)
    if cached is not None:
        return cached
    started = time.perf_counter()
    device = resolve_device(settings.device)
    loaded = load_checkpoint(request.model, request.task, device, settings)
    config = loaded.model.config
    examples = load_examples(request.settings, raw, config.label2id or {}, config.num_labels)
    fisher = diagonal_fisher(
        loaded.model,
        batches(examples, loaded.tokenizer, request.batch_size, request.max_seq_length, device),
        request.task,
        request.fisher_type,
        request.n_samples,
        len(examples.texts),
        request.seed,
        progress,
    )
    _check_names(request.model, settings, fisher)
    for name, values in fisher.items():
        if not all_finite(values):
            raise FisherInputError(f"Fisher of {name!r} is not finite (NaN or Inf in the model?)")
    manifest = {
        "key": key,
        "model": {"uri": request.model, "files": loaded.identity},
        "dataset": {
            "uri": request.dataset.uri,
            "sha256": examples.sha256,
            "rows": examples.rows_available,
        },
        "settings": canonical_settings(request),
        "batch_size": request.batch_size,
        "n_examples": len(examples.texts),
        "n_examples_requested": request.n_examples,
        "device": str(device),
        "seconds": round(time.perf_counter() - started, 3),
        "created_at": datetime.now(UTC).isoformat(),
        "versions": {
            "fisher-merge": __version__,
            "torch": torch.__version__,
            "transformers": importlib.metadata.version("transformers"),
        },
    }
    specs = [TensorSpec(name, "F32", tuple(values.shape)) for name, values in fisher.items()]
    with OutputTransaction(output) as transaction:
        writer = CheckpointWriter(
            transaction, specs, {"fisher_merge_key": key}, max_shard_size=2**62, stem="fisher"
        )
        for name, values in fisher.items():
            writer.write(name, values.contiguous())
        writer.close()
        transaction.put(MANIFEST_FILE, json.dumps(manifest, indent=2).encode())
    return FisherResult(fisher_uri=output.uri, cached=False, key=key, manifest=manifest)


def _check_names(uri: str, settings: Settings, fisher: dict[str, torch.Tensor]) -> None:
    """The Fisher is keyed by the checkpoint's own tensor names, which the merge looks up."""
    stored = set(Checkpoint.open(open_store(uri, settings)).names())
    missing = [name for name in fisher if name not in stored]
    if missing:
        raise FisherInputError(
            f"{uri}: parameters {missing[:3]} have no tensor of that name in the checkpoint"
        )
