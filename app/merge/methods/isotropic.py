"""Isotropic merge: θ* = Σᵢ λᵢ θᵢ / Σᵢ λᵢ, the λ-weighted parameter average."""

from collections.abc import Sequence

import torch

from app.merge.methods.base import MergeMethod, register


def isotropic_merge(thetas: Sequence[torch.Tensor], lambdas: Sequence[float]) -> torch.Tensor:
    total = sum(lambdas)
    theta = None
    for theta_i, lam in zip(thetas, lambdas, strict=True):
        if not lam:
            continue
        if theta is None:
            theta = theta_i.mul_(lam / total)
        else:
            theta.add_(theta_i, alpha=lam / total)
    assert theta is not None, "lambdas must have a positive sum"
    return theta


@register
class Isotropic(MergeMethod):
    name = "isotropic"

    def merge(
        self,
        thetas: Sequence[torch.Tensor],
        lambdas: Sequence[float],
        fishers: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        return isotropic_merge(thetas, lambdas)
