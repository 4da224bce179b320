"""Plain in-memory reference computations, independent of the engine: safetensors' own loader
and the formulas of DESIGN.md in float64."""

from pathlib import Path

import torch
from safetensors import safe_open


def load_state(path: Path, stem: str = "model") -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob(f"{stem}*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                tensors[name] = handle.get_tensor(name)
    return tensors


def metadata_of(path: Path) -> dict[str, str]:
    with safe_open(str(next(iter(sorted(path.glob("model*.safetensors"))))), framework="pt") as h:
        return h.metadata()


def isotropic_reference(thetas: list[torch.Tensor], lambdas: list[float]) -> torch.Tensor:
    total = sum(lam * theta.double() for lam, theta in zip(lambdas, thetas, strict=True))
    return total / sum(lambdas)


def fisher_reference(
    thetas: list[torch.Tensor],
    fishers: list[torch.Tensor],
    lambdas: list[float],
    floor: float = 1e-6,
    norms: list[float] | None = None,
) -> torch.Tensor:
    norms = norms or [1.0] * len(thetas)
    weights = [
        lam * torch.clamp(fisher.double() / norm, min=floor)
        for lam, fisher, norm in zip(lambdas, fishers, norms, strict=True)
    ]
    numerator = sum(w * theta.double() for w, theta in zip(weights, thetas, strict=True))
    return numerator / sum(weights)
