"""Fisher merge: θ* = Σᵢ λᵢ F̃ᵢ θᵢ / Σᵢ λᵢ F̃ᵢ with F̃ = max(F, floor), per parameter."""

from collections.abc import Sequence

import torch

from app.merge.methods.base import MergeMethod, register


def fisher_merge(
    thetas: Sequence[torch.Tensor],
    fishers: Sequence[torch.Tensor],
    lambdas: Sequence[float],
    floor: float,
) -> torch.Tensor:
    numerator = denominator = None  # Σᵢ λᵢ F̃ᵢ θᵢ and Σᵢ λᵢ F̃ᵢ
    for theta, fisher, lam in zip(thetas, fishers, lambdas, strict=True):
        if not lam:
            continue
        weight = fisher.clamp_min_(floor).mul_(lam)  # λᵢ F̃ᵢ
        if numerator is None or denominator is None:
            numerator, denominator = theta.mul_(weight), weight
        else:
            numerator.addcmul_(weight, theta)
            denominator.add_(weight)
    assert numerator is not None and denominator is not None, "lambdas must have a positive sum"
    return numerator.div_(denominator)


@register
class Fisher(MergeMethod):
    name = "fisher"
    needs_fisher = True

    def merge(
        self,
        thetas: Sequence[torch.Tensor],
        lambdas: Sequence[float],
        fishers: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if fishers is None:
            raise ValueError("the fisher method needs a Fisher for every model")
        return fisher_merge(thetas, fishers, lambdas, self.fisher_floor)
