"""Fisher benchmark: examples per second of the batched per-example Fisher against a batch-size-1
autograd loop and against plain training steps on the same batches (the cost floor).

  (a) loop      batch size 1: autograd gradient of each example's log-likelihood, squared
  (b) batched   the project's `diagonal_fisher` (per-example gradients by layer hooks)
  (c) train     forward, backward of the batch's mean loss and an SGD step, same batches

Models are random, built in memory: `bert-small` (4 layers, hidden 256) and `bert-base`
classifiers, and a `gpt2-small`-shaped causal LM; inputs are random token ids of full length.

Usage: python bench/fisher_bench.py [--models bert-small,gpt2-small] [--device cpu|cuda]
         [--batch-size 16] [--seq-length 128] [--batches 3] [--types sampled,empirical]
"""

import argparse
import os
import platform
import time
from collections.abc import Callable

import torch
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from app.fisher.compute import diagonal_fisher
from app.fisher.data import Batch

MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "bert-small": lambda: BertForSequenceClassification(
        BertConfig(
            num_hidden_layers=4,
            hidden_size=256,
            num_attention_heads=4,
            intermediate_size=1024,
            num_labels=3,
        )
    ),
    "bert-base": lambda: BertForSequenceClassification(BertConfig(num_labels=3)),
    "gpt2-small": lambda: GPT2LMHeadModel(GPT2Config()),
}


def task_of(name: str) -> str:
    return "causal-lm" if name.startswith("gpt2") else "sequence-classification"


def make_batches(
    model: torch.nn.Module, count: int, size: int, length: int, device: torch.device
) -> list[Batch]:
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    batches = []
    for i in range(count):
        ids = torch.randint(0, vocab, (size, length), generator=generator)
        labels = torch.randint(
            0, getattr(model.config, "num_labels", 2), (size,), generator=generator
        )
        inputs = {
            "input_ids": ids.to(device),
            "attention_mask": torch.ones_like(ids).to(device),
            "position_ids": torch.arange(length).expand(size, -1).contiguous().to(device),
        }
        batches.append(Batch(inputs=inputs, labels=labels.to(device), first_index=i * size))
    return batches


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, work: Callable[[], None]) -> float:
    synchronize(device)
    started = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - started


def log_likelihood(
    model: torch.nn.Module,
    inputs: dict,
    labels: torch.Tensor,
    task: str,
    fisher_type: str,
    generator: torch.Generator,
) -> torch.Tensor:
    """Per-example log-likelihood of labels drawn from the model (sampled) or given."""
    log_probs = model(**inputs).logits.float().log_softmax(-1)
    if task == "causal-lm":
        predicting = log_probs[:, :-1]
        if fisher_type == "sampled":
            flat = predicting.detach().exp().reshape(-1, predicting.shape[-1])
            targets = torch.multinomial(flat, 1, generator=generator).reshape(predicting.shape[:2])
        else:
            targets = inputs["input_ids"][:, 1:]
        return predicting.gather(2, targets.unsqueeze(2)).squeeze(2).sum(1)
    if fisher_type == "sampled":
        labels = torch.multinomial(log_probs.detach().exp(), 1, generator=generator).squeeze(1)
    return log_probs.gather(1, labels.unsqueeze(1)).squeeze(1)


def loop_fisher(model: torch.nn.Module, batches: list[Batch], task: str, fisher_type: str) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    squares = [torch.zeros_like(p) for p in params]
    generator = torch.Generator(device=params[0].device).manual_seed(0)
    for batch in batches:
        for n in range(batch.inputs["input_ids"].shape[0]):
            inputs = {key: value[n : n + 1] for key, value in batch.inputs.items()}
            if fisher_type == "exact":  # one backward pass per class, weighted by p_c
                log_probs = model(**inputs).logits.float().log_softmax(-1)[0]
                probs = log_probs.detach().exp()
                terms = [(log_probs[c], float(probs[c])) for c in range(len(log_probs))]
            else:
                labels = batch.labels[n : n + 1]
                ll = log_likelihood(model, inputs, labels, task, fisher_type, generator).sum()
                terms = [(ll, 1.0)]
            for term, weight in terms:
                grads = torch.autograd.grad(term, params, retain_graph=True)
                for square, grad in zip(squares, grads, strict=True):
                    square.addcmul_(grad, grad, value=weight)


def train_steps(model: torch.nn.Module, batches: list[Batch], task: str) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(0)
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = -log_likelihood(
            model, batch.inputs, batch.labels, task, "empirical", generator
        ).mean()
        loss.backward()
        optimizer.step()


Row = tuple[str, str, float, float, float]


def measure(name: str, args: argparse.Namespace, device: torch.device) -> list[Row]:
    """Seconds per example of (a), (b) and (c) for one model, for each Fisher type."""
    task = task_of(name)
    torch.manual_seed(0)
    model = MODELS[name]().to(device).eval()
    data = make_batches(model, args.batches, args.batch_size, args.seq_length, device)
    examples = args.batches * args.batch_size
    loop_data = make_batches(model, 1, args.loop_examples, args.seq_length, device)
    train_steps(model, data[:1], task)  # warm-up: allocator, kernels
    train = timed(device, lambda: train_steps(model, data, task)) / examples
    rows = []
    for fisher_type in args.types.split(","):
        if fisher_type == "exact" and task == "causal-lm":
            continue
        loop = timed(device, lambda: loop_fisher(model, loop_data, task, fisher_type))  # noqa: B023
        batched = timed(
            device,
            lambda: diagonal_fisher(model, data, task, fisher_type, 1, examples, 0),  # noqa: B023
        )
        rows.append((name, fisher_type, loop / args.loop_examples, batched / examples, train))
        print(
            f"{name} {fisher_type}: loop {args.loop_examples / loop:.1f}/s, "
            f"batched {examples / batched:.1f}/s, train {1 / train:.1f}/s",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bert-small,gpt2-small")
    parser.add_argument("--types", default="sampled,empirical")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument(
        "--loop-examples", type=int, default=16, help="examples timed for the batch-size-1 loop"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = [row for name in args.models.split(",") for row in measure(name, args, device)]
    where = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"
    )
    print()
    print(
        f"{platform.node()}: {args.device} ({where}), torch {torch.__version__}, "
        f"batch {args.batch_size} x {args.seq_length} tokens"
    )
    print(
        "| model | fisher | (a) loop ex/s | (b) batched ex/s | (c) train ex/s "
        "| (b) speed-up over (a) | (b) cost / (c) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, fisher_type, loop, batched, train in rows:
        print(
            f"| {name} | {fisher_type} | {1 / loop:.3g} | {1 / batched:.3g} | {1 / train:.3g} "
            f"| {loop / batched:.2f}x | {batched / train:.2f}x |"
        )


if __name__ == "__main__":
    main()
