"""Loading a checkpoint for a task with `transformers` Auto classes, from any store.

Checkpoints in object storage are copied once into a local folder named by their identity (every
file's key, size and version), so a worker never fetches the same checkpoint twice and a changed
checkpoint gets a new folder. Remote code is never trusted.
"""

import hashlib
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from app.core.config import Settings
from app.schemas import Task
from app.storage import ObjectInfo, ObjectStore, open_store
from app.storage.local import LocalStore

AUTO_CLASSES = {
    "sequence-classification": AutoModelForSequenceClassification,
    "causal-lm": AutoModelForCausalLM,
}


class TaskMismatch(ValueError):
    """The checkpoint cannot serve the requested task."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    identity: list[dict[str, object]]
    """Key, size and version of every file of the checkpoint."""


def checkpoint_identity(
    store: ObjectStore, files: list[ObjectInfo] | None = None
) -> list[dict[str, object]]:
    files = store.list() if files is None else files
    if not files:
        raise TaskMismatch(f"{store.uri}: no checkpoint files there")
    return [{"key": f.key, "size": f.size, "version": f.version} for f in files]


def local_copy(store: ObjectStore, files: list[ObjectInfo], cache_dir: Path) -> Path:
    """A local folder with the checkpoint's files: the folder itself for a local store."""
    if isinstance(store, LocalStore):
        return store.root
    identity = json.dumps([[f.key, f.size, f.version] for f in files], sort_keys=True)
    folder = cache_dir / hashlib.sha256(f"{store.uri}\n{identity}".encode()).hexdigest()[:32]
    if folder.is_dir():
        return folder
    staging = cache_dir / f".{folder.name}.partial-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        for info in files:
            with open(staging / info.key, "wb") as out:
                step = 64 * 1024 * 1024
                for start in range(0, info.size, step):
                    out.write(store.read_range(info.key, start, min(step, info.size - start)))
        staging.rename(folder)
    except FileExistsError:
        pass  # another worker finished the same copy first
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def load_checkpoint(
    uri: str, task: Task, device: torch.device, settings: Settings
) -> LoadedCheckpoint:
    transformers.logging.set_verbosity_error()  # a CLI error stays one line
    transformers.logging.disable_progress_bar()
    store = open_store(uri, settings)
    files = store.list()
    identity = checkpoint_identity(store, files)
    folder = local_copy(store, files, settings.model_cache_dir)
    auto = AUTO_CLASSES[task]
    try:
        model, info = auto.from_pretrained(
            folder, trust_remote_code=False, dtype=torch.float32, output_loading_info=True
        )
    except (ValueError, KeyError) as error:
        raise TaskMismatch(f"task {task!r} does not fit checkpoint {uri}: {error}") from None
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise TaskMismatch(
            f"task {task!r} does not fit checkpoint {uri}: it has no weights for "
            f"{', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}"
        )
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise TaskMismatch(f"{uri}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedCheckpoint(model=model.eval().to(device), tokenizer=tokenizer, identity=identity)
