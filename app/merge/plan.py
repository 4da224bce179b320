"""Planning a merge from headers alone: which tensors are merged, which are copied from the target
(and why), each output tensor's dtype, and whether the models share an architecture at all."""

from collections.abc import Sequence
from dataclasses import dataclass

from app.checkpoints.format import DTYPES, CheckpointError, TensorSpec
from app.checkpoints.reader import Checkpoint
from app.schemas import OutputDType

MIN_SHARED_FRACTION = 0.5
OUTPUT_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


class ArchitectureMismatch(ValueError):
    """The models do not share enough parameters to be merged."""


@dataclass(frozen=True)
class TensorPlan:
    source: TensorSpec
    """The target's tensor."""
    output: TensorSpec
    merged: bool
    reason: str = ""
    """Why a copied tensor is not merged."""


@dataclass(frozen=True)
class MergePlan:
    tensors: list[TensorPlan]
    shared_fraction: float

    @property
    def merged(self) -> list[TensorPlan]:
        return [plan for plan in self.tensors if plan.merged]

    @property
    def copied(self) -> list[TensorPlan]:
        return [plan for plan in self.tensors if not plan.merged]

    @property
    def output_specs(self) -> list[TensorSpec]:
        return [plan.output for plan in self.tensors]


def plan_merge(
    checkpoints: Sequence[Checkpoint],
    target: int,
    dtype: OutputDType,
    fishers: Sequence[Checkpoint] | None = None,
) -> MergePlan:
    tensors = []
    for spec in checkpoints[target].specs():
        reason = _unshared_reason(spec, checkpoints, target)
        out_dtype = spec.dtype
        if dtype != "auto" and DTYPES[spec.dtype].is_float:
            out_dtype = OUTPUT_DTYPES[dtype]
        output = TensorSpec(name=spec.name, dtype=out_dtype, shape=spec.shape)
        tensors.append(TensorPlan(source=spec, output=output, merged=not reason, reason=reason))
    parameters = sum(plan.source.numel for plan in tensors if DTYPES[plan.source.dtype].is_float)
    shared = sum(plan.source.numel for plan in tensors if plan.merged)
    fraction = shared / parameters if parameters else 0.0
    if fraction < MIN_SHARED_FRACTION:
        raise ArchitectureMismatch(
            f"not the same architecture: the tensors shared by all models hold {fraction:.1%} of "
            f"the target's {parameters} parameters (at least {MIN_SHARED_FRACTION:.0%} needed)"
        )
    plan = MergePlan(tensors=tensors, shared_fraction=fraction)
    if fishers is not None:
        check_fishers_cover(plan, fishers)
    return plan


def _unshared_reason(spec: TensorSpec, checkpoints: Sequence[Checkpoint], target: int) -> str:
    if not DTYPES[spec.dtype].is_float:
        return f"{spec.dtype} is not a floating-point dtype"
    for i, checkpoint in enumerate(checkpoints):
        if i == target:
            continue
        if spec.name not in checkpoint:
            return f"absent from models[{i}]"
        other = checkpoint.spec(spec.name)
        if other.shape != spec.shape:
            return f"shape {list(other.shape)} in models[{i}], {list(spec.shape)} in the target"
        if not DTYPES[other.dtype].is_float:
            return f"{other.dtype} in models[{i}] is not a floating-point dtype"
    return ""


def check_fishers_cover(plan: MergePlan, fishers: Sequence[Checkpoint]) -> None:
    """Every merged tensor needs a floating-point Fisher of its shape from every model."""
    for i, fisher in enumerate(fishers):
        for tensor in plan.merged:
            name, shape = tensor.source.name, tensor.source.shape
            if name not in fisher:
                raise CheckpointError(
                    f"{fisher.uri}: Fisher of models[{i}] has no entry for merged tensor {name!r}"
                )
            found = fisher.spec(name)
            if found.shape != shape or not DTYPES[found.dtype].is_float:
                raise CheckpointError(
                    f"{fisher.uri}: Fisher of models[{i}] for {name!r} is {found.dtype}"
                    f"{list(found.shape)}, expected floating point {list(shape)}"
                )
