"""Squared per-example gradients from one backward pass over a batch, by per-layer hooks.

For a loss Σₙ ℓₙ over a batch whose examples do not interact (transformers in eval mode), each
layer's input aₙ and output gradient gₙ belong to example n alone, so its per-example parameter
gradients follow in closed form:

    Linear   W[o,i]: ∂ℓₙ/∂W = Σₜ gₙₜ aₙₜᵀ          b: Σₜ gₙₜ
    Conv1D   W[i,o]: ∂ℓₙ/∂W = Σₜ aₙₜ gₙₜᵀ          b: Σₜ gₙₜ
    Embedding W[v,d]: row v of ∂ℓₙ/∂W = Σ_{t: idₙₜ=v} gₙₜ
    LayerNorm weight: Σₜ gₙₜ ⊙ âₙₜ (â the normalised input)   bias: Σₜ gₙₜ

Contributions of several layers to one parameter (tied embeddings) are summed per example before
squaring. Positions that do not reach the loss (padding) have g = 0 and add nothing.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

SUPPORTED = (nn.Linear, Conv1D, nn.Embedding, nn.LayerNorm)


class UnsupportedLayer(ValueError):
    """The model has a parameterised layer whose per-example gradients are not derived here."""


@dataclass
class _Record:
    module: nn.Module
    inputs: torch.Tensor
    grad: torch.Tensor | None = None


class PerExampleSquaredGradients:
    """Hooks on every parameterised layer; after each backward, `accumulate(weights)` adds
    Σₙ weightsₙ (∂ℓₙ/∂θ)² into `squares` (float32, keyed by parameter name)."""

    def __init__(self, model: nn.Module, chunk_elements: int = 32 * 1024 * 1024) -> None:
        self.model = model
        self.chunk_elements = chunk_elements
        names = {id(p): name for name, p in model.named_parameters() if p.requires_grad}
        self.parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.squares = {
            name: torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            for name, p in self.parameters.items()
        }
        self._records: dict[nn.Module, _Record] = {}
        self._roots: list[torch.Tensor] = []
        self._handles = []
        self._owners: dict[str, list[tuple[nn.Module, str]]] = {}
        unsupported = []
        for module_name, module in model.named_modules():
            own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            if not isinstance(module, SUPPORTED):
                unsupported.append(f"{module_name} ({type(module).__name__})")
                continue
            for local, parameter in own:
                self._owners.setdefault(names[id(parameter)], []).append((module, local))
            self._handles.append(module.register_forward_hook(self._forward_hook))
        if unsupported:
            raise UnsupportedLayer(
                "per-example gradients are not available for layers " + ", ".join(unsupported)
            )

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _forward_hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        record = _Record(module=module, inputs=inputs[0].detach())
        self._records[module] = record
        if isinstance(module, nn.Embedding):
            self._roots.append(output)

        def keep_grad(grad: torch.Tensor) -> None:
            record.grad = grad.detach()

        output.register_hook(keep_grad)

    def accumulate(self, weights: torch.Tensor) -> None:
        """Add Σₙ weightsₙ gₙ² for the backward pass just run; weights: [B] float32."""
        batch = weights.shape[0]
        for name, owners in self._owners.items():
            records = [
                (self._records[module], local)
                for module, local in owners
                if module in self._records and self._records[module].grad is not None
            ]  # a layer the loss does not reach has a zero gradient
            if not records:
                continue
            for record, _ in records:
                assert record.grad is not None
                if record.grad.shape[0] != batch:
                    raise UnsupportedLayer(
                        f"{name}: its layer's output is broadcast over the batch "
                        "(pass per-example position_ids), per-example gradients are lost"
                    )
            if len(records) == 1 and isinstance(records[0][0].module, nn.Embedding):
                _embedding_squares(records[0][0], weights, self.squares[name])
                continue
            shape = self.parameters[name].shape
            per_chunk = max(1, self.chunk_elements // max(shape.numel(), 1))
            # dense layers first: their gradient is a new tensor the embeddings add rows into
            records.sort(key=lambda item: isinstance(item[0].module, nn.Embedding))
            for start in range(0, batch, per_chunk):
                stop = min(start + per_chunk, batch)
                grads = _per_example_grad(*records[0], start, stop, shape)
                for record, local in records[1:]:
                    _add_per_example_grad(record, local, start, stop, grads)
                squares = grads.square_()
                self.squares[name].add_(torch.einsum("n,n...->...", weights[start:stop], squares))
        for record in self._records.values():
            record.grad = None

    def backward(self, loss: torch.Tensor, weights: torch.Tensor, retain_graph: bool) -> None:
        """Backpropagate Σₙ ℓₙ down to the embedding outputs (parameter gradients themselves
        are never formed) and add Σₙ weightsₙ (∂ℓₙ/∂θ)²."""
        roots = [root for root in self._roots if root.requires_grad]
        torch.autograd.grad(loss, roots, retain_graph=retain_graph, allow_unused=True)
        self.accumulate(weights)

    def start_batch(self) -> None:
        """Forget the previous batch's layer inputs before the next forward pass."""
        self._records.clear()
        self._roots.clear()


def _flatten_positions(tensor: torch.Tensor) -> torch.Tensor:
    """[B, ..., F] -> [B, T, F]: every middle dimension is a position."""
    return tensor.reshape(tensor.shape[0], -1, tensor.shape[-1])


def _per_example_grad(
    record: _Record, local: str, start: int, stop: int, shape: torch.Size
) -> torch.Tensor:
    """Dense per-example gradients [stop-start, *shape] of one parameter from one layer."""
    module, grad = record.module, record.grad
    assert grad is not None
    if isinstance(module, nn.Embedding):
        dense = torch.zeros(stop - start, *shape, dtype=torch.float32, device=grad.device)
        _add_per_example_grad(record, local, start, stop, dense)
        return dense
    g = _flatten_positions(grad[start:stop]).float()
    if local == "bias":
        return g.sum(1)
    a = _flatten_positions(record.inputs[start:stop]).float()
    if isinstance(module, nn.LayerNorm):
        normalised = torch.nn.functional.layer_norm(a, module.normalized_shape, eps=module.eps)
        return (g * normalised).sum(1)
    if isinstance(module, Conv1D):
        return torch.einsum("nti,nto->nio", a, g)
    return torch.einsum("nto,nti->noi", g, a)


def _add_per_example_grad(
    record: _Record, local: str, start: int, stop: int, out: torch.Tensor
) -> None:
    """Add one layer's per-example gradients into `out` [stop-start, *shape] in place."""
    if not isinstance(record.module, nn.Embedding):
        out.add_(_per_example_grad(record, local, start, stop, out.shape[1:]))
        return
    assert record.grad is not None
    ids = record.inputs[start:stop].reshape(stop - start, -1)
    g = _flatten_positions(record.grad[start:stop]).float()
    out.scatter_add_(1, ids.unsqueeze(-1).expand(-1, -1, out.shape[-1]), g)


def _embedding_squares(record: _Record, weights: torch.Tensor, squares: torch.Tensor) -> None:
    """Σₙ wₙ (row sums of gₙ per distinct id)², touching only the rows each example uses."""
    grad, ids = record.grad, record.inputs
    assert grad is not None
    batch = weights.shape[0]
    ids = ids.expand(batch, *ids.shape[1:]) if ids.shape[0] == 1 else ids
    for n in range(batch):
        if not weights[n]:
            continue
        rows, inverse = torch.unique(ids[n].reshape(-1), return_inverse=True)
        g = grad[n].reshape(-1, grad.shape[-1]).float()
        summed = torch.zeros(rows.shape[0], g.shape[1], dtype=torch.float32, device=g.device)
        summed.index_add_(0, inverse, g)
        squares.index_add_(0, rows, summed.square_().mul_(weights[n]))
