"""The batched per-example Fisher against a batch-size-1 autograd loop, for every Fisher type."""

import pytest
import torch

from app.fisher.compute import diagonal_fisher
from app.fisher.data import Examples, batches
from app.synthetic import tiny_causal_lm, tiny_classifier, tiny_lm_tokenizer, tiny_tokenizer
from tests.reference import fisher_loop_reference

PAIRS = [
    ("the movie was good", "bad"),
    ("bad plot", "fun"),
    ("really not fun at all the film was dull", "very very"),
    ("great acting", "a"),
    ("dull", "the film"),
]
LABELS = [1, 0, 0, 1, 0]
SENTENCES = [(a + " " + b,) for a, b in PAIRS]
CPU = torch.device("cpu")


def relative_error(got: dict, reference: dict) -> float:
    """Largest per-tensor max|got - ref| / max|ref|; a tensor whose reference is zero up to
    rounding (the attention key bias: softmax ignores it) is measured against the global scale."""
    scale = max(float(value.abs().max()) for value in reference.values())
    return max(
        float((got[name].double() - ref).abs().max()) / max(float(ref.abs().max()), 1e-6 * scale)
        for name, ref in reference.items()
    )


def batched(model, tokenizer, texts, labels, task, fisher_type, batch_size, n_samples=1, seed=0):
    examples = Examples(texts=texts, labels=labels, sha256="", rows_available=len(texts))
    return diagonal_fisher(
        model,
        batches(examples, tokenizer, batch_size, 64, CPU),
        task,
        fisher_type,
        n_samples,
        len(texts),
        seed,
    )


@pytest.fixture(scope="module")
def classifier():
    return tiny_classifier(seed=3), tiny_tokenizer()


@pytest.fixture(scope="module")
def causal_lm():
    return tiny_causal_lm(seed=4), tiny_lm_tokenizer()


@pytest.mark.parametrize("fisher_type", ["exact", "sampled", "empirical"])
@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_classifier_fisher_equals_the_loop(classifier, fisher_type, batch_size):
    model, tokenizer = classifier
    got = batched(
        model,
        tokenizer,
        PAIRS,
        LABELS,
        "sequence-classification",
        fisher_type,
        batch_size,
        n_samples=3,
        seed=11,
    )
    reference = fisher_loop_reference(
        model,
        tokenizer,
        PAIRS,
        LABELS,
        "sequence-classification",
        fisher_type,
        n_samples=3,
        seed=11,
    )
    assert set(got) == {name for name, _ in model.named_parameters()}
    assert all(value.dtype == torch.float32 for value in got.values())
    assert relative_error(got, reference) <= 1e-4


@pytest.mark.parametrize("fisher_type", ["sampled", "empirical"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_causal_lm_fisher_equals_the_loop(causal_lm, fisher_type, batch_size):
    model, tokenizer = causal_lm
    got = batched(
        model, tokenizer, SENTENCES, None, "causal-lm", fisher_type, batch_size, n_samples=2, seed=5
    )
    reference = fisher_loop_reference(
        model, tokenizer, SENTENCES, None, "causal-lm", fisher_type, n_samples=2, seed=5
    )
    # tied input and output embeddings: one entry, both contributions summed per example
    assert "lm_head.weight" not in got and "transformer.wte.weight" in got
    assert relative_error(got, reference) <= 1e-4


def test_exact_is_the_expectation_over_classes(classifier):
    """Σ_c p_c g_c² by enumeration: the empirical Fisher with every class as the label,
    weighted by the model's probability of it."""
    model, tokenizer = classifier
    exact = batched(model, tokenizer, PAIRS, None, "sequence-classification", "exact", 2)
    with torch.no_grad():
        encoded = tokenizer(
            *[list(c) for c in zip(*PAIRS, strict=True)], padding=True, return_tensors="pt"
        )
        probs = model(**encoded).logits.softmax(-1)
    enumerated = {
        name: torch.zeros_like(value, dtype=torch.float64) for name, value in exact.items()
    }
    for c in range(probs.shape[1]):
        for n, pair in enumerate(PAIRS):
            single = batched(
                model, tokenizer, [pair], [c], "sequence-classification", "empirical", 1
            )
            for name in enumerated:
                enumerated[name] += float(probs[n, c]) * single[name].double() / len(PAIRS)
    assert relative_error(exact, enumerated) <= 1e-4


def test_many_draws_approach_exact(classifier):
    model, tokenizer = classifier
    exact = batched(model, tokenizer, PAIRS, None, "sequence-classification", "exact", 5)
    sampled = batched(
        model,
        tokenizer,
        PAIRS,
        None,
        "sequence-classification",
        "sampled",
        5,
        n_samples=3000,
        seed=1,
    )
    total_exact = sum(float(v.sum()) for v in exact.values())
    total_sampled = sum(float(v.sum()) for v in sampled.values())
    assert total_sampled == pytest.approx(total_exact, rel=0.05)
    name = "bert.encoder.layer.1.output.dense.weight"
    cosine = torch.nn.functional.cosine_similarity(
        exact[name].flatten(), sampled[name].flatten(), dim=0
    )
    assert cosine > 0.99


@pytest.mark.parametrize("task", ["sequence-classification", "causal-lm"])
def test_padding_does_not_change_the_fisher(classifier, causal_lm, task):
    model, tokenizer = classifier if task == "sequence-classification" else causal_lm
    fisher_type = "sampled"
    long_company = [("good film",), ("really very dull and not fun at all the plot was bad",)]
    padded = batched(
        model, tokenizer, long_company, [1, 0], task, fisher_type, 2, n_samples=2, seed=3
    )
    separately = batched(
        model, tokenizer, long_company, [1, 0], task, fisher_type, 1, n_samples=2, seed=3
    )
    assert relative_error(padded, separately) <= 1e-4


def test_squaring_a_batch_gradient_would_differ(classifier):
    """Guard against the known bug: the batched path is not (Σₙ gₙ)²/N."""
    model, tokenizer = classifier
    got = batched(model, tokenizer, PAIRS, LABELS, "sequence-classification", "empirical", 5)
    encoded = tokenizer(
        *[list(c) for c in zip(*PAIRS, strict=True)], padding=True, return_tensors="pt"
    )
    log_probs = model(**encoded).logits.log_softmax(-1)
    total = log_probs.gather(1, torch.tensor(LABELS)[:, None]).sum()
    name = "classifier.weight"
    grad = torch.autograd.grad(total, [dict(model.named_parameters())[name]])[0]
    assert not torch.allclose(got[name], grad.square() / len(PAIRS), rtol=1e-2)
