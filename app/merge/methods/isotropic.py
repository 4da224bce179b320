"""Isotropic merge: θ* = Σᵢ λᵢ θᵢ / Σᵢ λᵢ, the λ-weighted parameter average."""

from collections.abc import Sequence

import torch

from app.merge.methods.base import MergeMethod, register


def isotropic_merge(thetas: Sequence[torch.Tensor], lambdas: Sequence[float]) -> torch.Tensor:
    theta_sum = torch.zeros_like(thetas[0])
    for theta, lam in zip(thetas, lambdas, strict=True):
        if lam:
            theta_sum.add_(theta, alpha=lam)
    return theta_sum.div_(sum(lambdas))


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
