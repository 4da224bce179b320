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


def example_seed(seed: int, index: int) -> int:
    """The documented draw convention: example n's draws come from a generator seeded by
    the first 8 bytes of sha256("seed:n")."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8])


def fisher_loop_reference(
    model, tokenizer, texts, labels, task, fisher_type, n_samples=1, seed=0, max_length=128
) -> dict[str, torch.Tensor]:
    """A batch-size-1 autograd loop: for each example, the gradient of each log-likelihood
    term with respect to every parameter, squared, weighted and averaged."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    for index, example in enumerate(texts):
        encoded = tokenizer(
            *[[t] for t in example], truncation=True, max_length=max_length, return_tensors="pt"
        )
        log_probs = model(**encoded).logits.double().log_softmax(-1)[0]
        generator = torch.Generator().manual_seed(example_seed(seed, index))
        terms: list[tuple[torch.Tensor, float]] = []
        if task == "sequence-classification":
            probs = log_probs.detach().exp()
            if fisher_type == "exact":
                terms = [(log_probs[c], float(probs[c])) for c in range(len(probs))]
            elif fisher_type == "sampled":
                draws = torch.multinomial(
                    probs.float(), n_samples, replacement=True, generator=generator
                )
                terms = [(log_probs[int(y)], 1 / n_samples) for y in draws]
            else:
                terms = [(log_probs[labels[index]], 1.0)]
        else:
            ids = encoded["input_ids"][0]
            predicting = log_probs[:-1]
            if fisher_type == "empirical":
                terms = [(predicting.gather(1, ids[1:, None]).sum(), 1.0)]
            else:
                draws = torch.multinomial(
                    predicting.detach().exp().float(),
                    n_samples,
                    replacement=True,
                    generator=generator,
                )
                terms = [
                    (predicting.gather(1, draws[:, k : k + 1]).sum(), 1 / n_samples)
                    for k in range(n_samples)
                ]
        for term, weight in terms:
            grads = torch.autograd.grad(
                term, list(params.values()), retain_graph=True, allow_unused=True
            )
            for name, grad in zip(params, grads, strict=True):
                if grad is not None:
                    fisher[name] += weight * grad.double().square()
    return {name: value / len(texts) for name, value in fisher.items()}
