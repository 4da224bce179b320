"""The diagonal Fisher: Fⱼ = (1/N) Σₙ E_y[(∂ log p(y | xₙ, θ) / ∂θⱼ)²], per-example gradients.

`exact` takes the expectation over classes, Σ_c p_c g_c²; `sampled` draws y from the model
(n_samples draws, for a causal LM one token per position); `empirical` uses the data's labels
(or next tokens). For a causal LM one sequence is one example: its log-likelihood is the sum over
its non-padding positions.

Draw k of example n comes from a generator seeded by (seed, n) alone, so neither the batch size
nor the padding changes which labels are drawn.
"""

import hashlib
from collections.abc import Callable, Iterable

import torch
from torch import nn

from app.core.finite import all_finite
from app.fisher.data import Batch
from app.fisher.per_example import PerExampleSquaredGradients
from app.schemas import FisherType, Task

ProgressCallback = Callable[[int, int], None]


def diagonal_fisher(
    model: nn.Module,
    batches: Iterable[Batch],
    task: Task,
    fisher_type: FisherType,
    n_samples: int,
    n_examples: int,
    seed: int,
    progress: ProgressCallback | None = None,
) -> dict[str, torch.Tensor]:
    """float32 Fisher per trainable parameter name, averaged over the examples."""
    tracker = PerExampleSquaredGradients(model)
    done = 0
    try:
        for batch in batches:
            tracker.start_batch()
            logits = model(**batch.inputs).logits
            log_probs = logits.float().log_softmax(-1)
            if not all_finite(log_probs):
                raise ValueError(
                    f"the model's log-probabilities are not finite for examples "
                    f"{batch.first_index}..{batch.first_index + log_probs.shape[0] - 1} "
                    "(NaN or Inf in the checkpoint?)"
                )
            if task == "causal-lm":
                _causal_lm(tracker, log_probs, batch, fisher_type, n_samples, seed)
            else:
                _classification(tracker, log_probs, batch, fisher_type, n_samples, seed)
            done += log_probs.shape[0]
            if progress is not None:
                progress(done, n_examples)
    finally:
        tracker.close()
    return {name: squares.div_(done).cpu() for name, squares in tracker.squares.items()}


def _classification(
    tracker: PerExampleSquaredGradients,
    log_probs: torch.Tensor,  # [B, C]
    batch: Batch,
    fisher_type: FisherType,
    n_samples: int,
    seed: int,
) -> None:
    batch_size, classes = log_probs.shape
    ones = torch.ones(batch_size, device=log_probs.device)
    if fisher_type == "exact":
        probs = log_probs.detach().exp()
        for c in range(classes):  # Σ_c p_c g_c²
            tracker.backward(log_probs[:, c].sum(), probs[:, c], retain_graph=c < classes - 1)
    elif fisher_type == "sampled":
        probs = log_probs.detach().exp()
        draws = [
            torch.multinomial(probs[n], n_samples, replacement=True, generator=generator)
            for n, generator in enumerate(example_generators(seed, batch))
        ]
        for k in range(n_samples):
            y = torch.stack([draw[k] for draw in draws])
            chosen = log_probs.gather(1, y.unsqueeze(1)).sum()
            tracker.backward(chosen, ones / n_samples, retain_graph=k < n_samples - 1)
    else:
        assert batch.labels is not None
        tracker.backward(log_probs.gather(1, batch.labels.unsqueeze(1)).sum(), ones, False)


def _causal_lm(
    tracker: PerExampleSquaredGradients,
    log_probs: torch.Tensor,  # [B, T, V]
    batch: Batch,
    fisher_type: FisherType,
    n_samples: int,
    seed: int,
) -> None:
    mask = batch.inputs["attention_mask"]
    predicting = log_probs[:, :-1]  # position t predicts token t + 1
    valid = (mask[:, :-1] * mask[:, 1:]).float()  # both the context and the target are real
    ones = torch.ones(log_probs.shape[0], device=log_probs.device)
    if fisher_type == "empirical":
        targets = batch.inputs["input_ids"][:, 1:]
        chosen = predicting.gather(2, targets.unsqueeze(2)).squeeze(2)
        tracker.backward((chosen * valid).sum(), ones, retain_graph=False)
        return
    probs = predicting.detach().exp()
    lengths = valid.sum(1).long().tolist()
    draws = torch.zeros(n_samples, *valid.shape, dtype=torch.long, device=valid.device)
    for n, generator in enumerate(example_generators(seed, batch)):
        if lengths[n]:  # [positions, V] -> [positions, n_samples], real positions only
            drawn = torch.multinomial(
                probs[n, : lengths[n]], n_samples, replacement=True, generator=generator
            )
            draws[:, n, : lengths[n]] = drawn.T
    for k in range(n_samples):
        chosen = predicting.gather(2, draws[k].unsqueeze(2)).squeeze(2)
        tracker.backward((chosen * valid).sum(), ones / n_samples, retain_graph=k < n_samples - 1)


def example_generators(seed: int, batch: Batch) -> list[torch.Generator]:
    """One generator per example of the batch, seeded by (seed, the example's index)."""
    device = batch.inputs["input_ids"].device
    generators = []
    for n in range(batch.inputs["input_ids"].shape[0]):
        digest = hashlib.sha256(f"{seed}:{batch.first_index + n}".encode()).digest()
        generators.append(torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8])))
    return generators
