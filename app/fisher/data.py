"""The examples a Fisher is computed on: JSON Lines from a store, chosen, labelled and batched."""

import hashlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from app.core.config import Settings
from app.schemas import FisherSettings
from app.storage import open_store, parse_uri


class DatasetError(ValueError):
    """The data set cannot be used as asked; the message names the row or field."""


@dataclass(frozen=True)
class Examples:
    texts: list[tuple[str, ...]]
    labels: list[int] | None
    sha256: str
    rows_available: int


def load_examples(
    settings: FisherSettings, raw: bytes, label2id: dict[str, int], num_labels: int
) -> Examples:
    """Parse the data set's bytes, pick the examples (first n, or a seeded sample) and map
    labels. Fewer rows than `n_examples` is not an error: all of them are used, and fisher.json
    records both counts."""
    spec = settings.dataset
    rows = []
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{spec.uri}: line {number} is not JSON ({error})") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{spec.uri}: line {number} is not a JSON object")
        rows.append((number, row))
    if not rows:
        raise DatasetError(f"{spec.uri}: the data set has no examples")
    chosen = rows
    if settings.shuffle:
        chosen = random.Random(settings.seed).sample(rows, min(settings.n_examples, len(rows)))
    chosen = chosen[: settings.n_examples]
    texts = [_texts(row, number, spec.text_fields, spec.uri) for number, row in chosen]
    labels = None
    if spec.label_field is not None and settings.task == "sequence-classification":
        labels = [
            _label(row, number, spec.label_field, label2id, num_labels, spec.uri)
            for number, row in chosen
        ]
    return Examples(
        texts=texts, labels=labels, sha256=hashlib.sha256(raw).hexdigest(), rows_available=len(rows)
    )


def read_dataset(uri: str, settings: Settings) -> bytes:
    parsed = parse_uri(uri)
    folder, _, name = parsed.path.rstrip("/").rpartition("/")
    root = f"s3://{parsed.bucket}/{folder}" if parsed.scheme == "s3" else (folder or "/")
    return open_store(root, settings).read_bytes(name)


def _texts(row: dict, number: int, fields: Sequence[str], uri: str) -> tuple[str, ...]:
    texts = []
    for field in fields:
        value = row.get(field)
        if not isinstance(value, str):
            found = "missing" if value is None else f"a {type(value).__name__}"
            raise DatasetError(f"{uri}: line {number}: text field {field!r} is {found}")
        texts.append(value)
    return tuple(texts)


def _label(
    row: dict, number: int, field: str, label2id: dict[str, int], num_labels: int, uri: str
) -> int:
    value = row.get(field)
    where = f"{uri}: line {number}: label field {field!r}"
    if isinstance(value, bool) or value is None:
        raise DatasetError(f"{where} is {'missing' if value is None else 'a bool'}")
    if isinstance(value, int):
        if not 0 <= value < num_labels:
            raise DatasetError(f"{where} = {value} is outside 0..{num_labels - 1}")
        return value
    if isinstance(value, str) and value in label2id:
        return label2id[value]
    raise DatasetError(f"{where} = {value!r} is not a class index nor a name in {sorted(label2id)}")


@dataclass(frozen=True)
class Batch:
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor | None
    """Class indices [B] for classification."""
    first_index: int
    """Index of the batch's first example in the data set."""


def batches(
    examples: Examples,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int,
    max_seq_length: int,
    device: torch.device,
) -> Iterator[Batch]:
    """Tokenised, truncated, right-padded per batch, with explicit per-example position ids
    (a position embedding broadcast over the batch would merge the examples' gradients)."""
    for start in range(0, len(examples.texts), batch_size):
        texts = examples.texts[start : start + batch_size]
        columns = list(zip(*texts, strict=True))
        encoded = tokenizer(
            *[list(column) for column in columns],
            truncation=True,
            max_length=max_seq_length,
            padding=True,
            return_tensors="pt",
        )
        inputs = {key: value.to(device) for key, value in encoded.items()}
        length = inputs["input_ids"].shape[1]
        inputs["position_ids"] = (
            torch.arange(length, device=device).unsqueeze(0).expand(len(texts), -1).contiguous()
        )
        labels = None
        if examples.labels is not None:
            labels = torch.tensor(examples.labels[start : start + batch_size], device=device)
        yield Batch(inputs=inputs, labels=labels, first_index=start)
