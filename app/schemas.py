"""Request models: the one contract shared by the REST body, the CLI and the worker's job args."""

import math
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from app.merge.methods import METHODS
from app.storage.uri import StoreURI

OutputDType = Literal["auto", "float32", "float16", "bfloat16"]
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(value: Any) -> Any:
    """`"2GB"`, `"500MiB"` or a byte count; anything else is left for pydantic to reject."""
    if isinstance(value, str):
        match = _SIZE.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a size like 5GB, 500MiB or 1000000")
        return int(float(match.group(1)) * _UNITS[(match.group(2) or "B").upper()])
    return value


ByteSize = Annotated[int, BeforeValidator(parse_size), Field(gt=0)]


def _http_url(value: str) -> str:
    parsed = urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value


CallbackURL = Annotated[
    str,
    AfterValidator(_http_url),
    Field(description="Gets a POST with the job's JSON when the job ends (REST service only)."),
]


class FrozenModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


Task = Literal["sequence-classification", "causal-lm"]
FisherType = Literal["exact", "sampled", "empirical"]


class DatasetSpec(FrozenModel):
    uri: StoreURI = Field(description="JSON Lines file, one example an object.")
    text_fields: list[str] = Field(
        min_length=1, max_length=2, description="One text field, or two for a text pair."
    )
    label_field: str | None = Field(
        None, description="Class index or a name in the checkpoint's label2id."
    )


class FisherSettings(FrozenModel):
    """How to compute a Fisher, for any model: `fisher_defaults` of a merge."""

    dataset: DatasetSpec
    task: Task = "sequence-classification"
    fisher_type: FisherType = "exact"
    n_examples: int = Field(1024, ge=1, description="First n (or a seeded sample if shuffle).")
    n_samples: int = Field(1, ge=1, description="Label draws per example for 'sampled'.")
    batch_size: int = Field(16, ge=1, description="Does not change the result.")
    max_seq_length: int = Field(128, ge=2)
    seed: int = 0
    shuffle: bool = False

    @model_validator(mode="after")
    def _fits(self) -> "FisherSettings":
        if self.fisher_type == "exact" and self.task != "sequence-classification":
            raise ValueError("fisher_type 'exact' needs task 'sequence-classification'")
        if (
            self.fisher_type == "empirical"
            and self.task == "sequence-classification"
            and self.dataset.label_field is None
        ):
            raise ValueError("fisher_type 'empirical' needs dataset.label_field")
        return self


class FisherRequest(FisherSettings):
    """The body of POST /fisher and `fisher-merge fisher`."""

    model: StoreURI
    output_uri: StoreURI | None = Field(
        None, description="Write here instead of the content-addressed cache."
    )
    callback_url: CallbackURL | None = None

    @property
    def settings(self) -> FisherSettings:
        return FisherSettings.model_validate(
            self.model_dump(exclude={"model", "output_uri", "callback_url"})
        )


class ModelInput(FrozenModel):
    uri: StoreURI = Field(description="Checkpoint prefix in Hugging Face layout.")
    fisher: Literal["auto"] | StoreURI | None = Field(
        None,
        description="Prefix holding fisher.safetensors, or 'auto' to reuse or compute one; "
        "needed by method 'fisher'.",
    )
    fisher_request: FisherSettings | None = Field(
        None, description="How to compute this model's Fisher when it is 'auto'."
    )


def _model_from_string(value: Any) -> Any:
    return {"uri": value} if isinstance(value, str) else value


class MergeRequest(FrozenModel):
    models: list[Annotated[ModelInput, BeforeValidator(_model_from_string)]] = Field(
        min_length=2, description="Checkpoints to merge; a bare string is a URI."
    )
    lambdas: list[float] | None = Field(
        None, description="Per-model weights, finite and >= 0 with a positive sum; default equal."
    )
    method: str = Field("fisher", description="A registered merge method: isotropic, fisher.")
    output_uri: StoreURI = Field(description="Prefix the merged checkpoint is written to.")
    target: int = Field(
        0, ge=0, description="Model whose unshared tensors, config and tokenizer are kept."
    )
    fisher_floor: float = Field(1e-6, gt=0, allow_inf_nan=False)
    normalize_fishers: bool = Field(False, description="Scale each Fisher to unit global L2 norm.")
    dtype: OutputDType = Field("auto", description="Output dtype; auto keeps each target tensor's.")
    max_shard_size: ByteSize | None = Field(
        None, description="Largest output shard (bytes or '5GB'); default from FM_MAX_SHARD_SIZE."
    )
    overwrite: bool = Field(False, description="Replace an existing checkpoint at output_uri.")
    fisher_defaults: FisherSettings | None = Field(
        None, description="How to compute 'auto' Fishers of models without a fisher_request."
    )
    callback_url: CallbackURL | None = None

    @field_validator("lambdas")
    @classmethod
    def _lambdas_valid(cls, lambdas: list[float] | None) -> list[float] | None:
        if lambdas is None:
            return None
        for i, value in enumerate(lambdas):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"lambdas[{i}] = {value} must be finite and >= 0")
        if sum(lambdas) <= 0:
            raise ValueError("lambdas must have a positive sum")
        return lambdas

    @field_validator("method")
    @classmethod
    def _method_known(cls, method: str) -> str:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
        return method

    @model_validator(mode="after")
    def _consistent(self) -> "MergeRequest":
        if self.lambdas is not None and len(self.lambdas) != len(self.models):
            raise ValueError(
                f"lambdas has {len(self.lambdas)} values but models has {len(self.models)}"
            )
        if self.target >= len(self.models):
            raise ValueError(
                f"target {self.target} is not an index into the {len(self.models)} models"
            )
        if METHODS[self.method].needs_fisher:
            missing = [i for i, model in enumerate(self.models) if model.fisher is None]
            if missing:
                raise ValueError(
                    f"method {self.method!r} needs a fisher for every model; "
                    f"models {missing} have none"
                )
        auto = [
            i
            for i, model in enumerate(self.models)
            if model.fisher == "auto" and model.fisher_request is None
        ]
        if auto and self.fisher_defaults is None:
            raise ValueError(
                f"models {auto} have fisher 'auto' but neither a fisher_request nor "
                "fisher_defaults says how to compute it"
            )
        return self

    def fisher_settings(self, index: int) -> FisherSettings:
        settings = self.models[index].fisher_request or self.fisher_defaults
        assert settings is not None
        return settings

    @property
    def weights(self) -> list[float]:
        """The lambdas, equal by default."""
        return list(self.lambdas) if self.lambdas is not None else [1.0] * len(self.models)
