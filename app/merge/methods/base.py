"""The per-tensor merge-method interface and its registry.

A method combines the float32 values of one parameter (or one row slice of it) from every model;
the streaming engine around it knows nothing of which method runs. A new method is one new module
in this package that defines a subclass decorated with `@register`.
"""

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, TypeVar

import torch


class MergeMethod(ABC):
    name: ClassVar[str]
    needs_fisher: ClassVar[bool] = False

    def __init__(self, fisher_floor: float = 1e-6) -> None:
        self.fisher_floor = fisher_floor

    @abstractmethod
    def merge(
        self,
        thetas: Sequence[torch.Tensor],
        lambdas: Sequence[float],
        fishers: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """θ* for one parameter slice; every input is float32 of one shape on one device.

        The inputs are scratch buffers: a method may overwrite them and return one of them,
        which keeps a streamed merge free of allocations."""


METHODS: dict[str, type[MergeMethod]] = {}
Method = TypeVar("Method", bound=type[MergeMethod])


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method
