"""Small random `transformers` checkpoints, tokenizers and stand-in Fisher files, built locally.

Used by the demo, the tests and the benchmarks: nothing here downloads from a hub. Models share a
random base and differ by a small seeded perturbation, like fine-tunes of one pretrained model.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

WORDS = [
    "the",
    "a",
    "movie",
    "film",
    "was",
    "is",
    "good",
    "bad",
    "great",
    "awful",
    "plot",
    "acting",
    "not",
    "very",
    "really",
    "fun",
    "dull",
]
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + WORDS)}
    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def tiny_lm_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level, GPT-2 style: no special tokens around the text, end-of-text doubles as pad."""
    vocab = {token: i for i, token in enumerate(["<|endoftext|>", "<unk>", *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def tiny_causal_lm(seed: int, layers: int = 2, hidden: int = 32) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(WORDS) + 2,
        n_positions=64,
        n_embd=hidden,
        n_layer=layers,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return GPT2LMHeadModel(config).eval()


def save_tiny_causal_lm(path: str | Path, seed: int) -> Path:
    path = Path(path)
    tiny_causal_lm(seed).save_pretrained(path)
    tiny_lm_tokenizer().save_pretrained(path)
    return path


def tiny_bert_config(num_labels: int = 2, layers: int = 2, hidden: int = 32) -> BertConfig:
    return BertConfig(
        vocab_size=len(SPECIAL_TOKENS) + len(WORDS),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2 + 1,
        max_position_embeddings=64,
        num_labels=num_labels,
    )


def tiny_classifier(
    seed: int, num_labels: int = 2, base_seed: int = 0, layers: int = 2, hidden: int = 32
) -> BertForSequenceClassification:
    """A shared random base (`base_seed`) plus a seeded perturbation, like one fine-tune."""
    torch.manual_seed(base_seed)
    model = BertForSequenceClassification(tiny_bert_config(num_labels, layers, hidden)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            spread = float(parameter.std()) if parameter.numel() > 1 else 0.0
            parameter.add_(noise * 0.05 * max(spread, 0.02))
    return model


def save_tiny_classifier(
    path: str | Path,
    seed: int,
    num_labels: int = 2,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | int | None = None,
) -> Path:
    path = Path(path)
    model = tiny_classifier(seed, num_labels).to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size is not None else {}
    model.save_pretrained(path, **kwargs)
    tiny_tokenizer().save_pretrained(path)
    return path


def save_stand_in_fisher(checkpoint: str | Path, path: str | Path, seed: int) -> Path:
    """Positive random values keyed like the checkpoint's floating-point tensors.

    Stand-ins for merge tests and benchmarks, where only their shape and positivity matter."""
    checkpoint, path = Path(checkpoint), Path(path)
    generator = torch.Generator().manual_seed(seed)
    fisher = {}
    for file in sorted(checkpoint.glob("*.safetensors")):
        for name, tensor in load_file(file).items():
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=generator, dtype=torch.float64)
                fisher[name] = (values**4 * 10.0).float()
    path.mkdir(parents=True, exist_ok=True)
    save_file(fisher, path / "fisher.safetensors", metadata={"format": "pt"})
    (path / "fisher.json").write_text(json.dumps({"stand_in": True, "seed": seed}, indent=2))
    return path


DEMO_ROWS = {
    "sentiment": [
        ("the movie was good", 1),
        ("great acting", 1),
        ("really fun", 1),
        ("a good film", 1),
        ("bad plot", 0),
        ("the acting was awful", 0),
        ("not fun at all", 0),
        ("very dull", 0),
    ],
    "topic": [
        ("the plot was dull", 0),
        ("a very good plot", 0),
        ("great acting", 1),
        ("the acting is awful", 1),
        ("the film was fun", 2),
        ("a movie", 2),
    ],
}


def write_demo(root: str | Path) -> Path:
    """Two fine-tunes of one tiny base (2 and 3 labels, the second sharded), a small data set for
    each, a merge request whose Fishers are 'auto' (computed on first use, then cached) and a
    Fisher request for the first model."""
    root = Path(root).absolute()
    save_tiny_classifier(root / "sentiment", seed=1, num_labels=2)
    save_tiny_classifier(root / "topic", seed=2, num_labels=3, max_shard_size="40KB")
    models = []
    for name, rows in DEMO_ROWS.items():
        lines = [json.dumps({"text": text, "label": label}) for text, label in rows]
        (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        dataset = {
            "uri": str(root / f"{name}.jsonl"),
            "text_fields": ["text"],
            "label_field": "label",
        }
        models.append(
            {
                "uri": str(root / name),
                "fisher": "auto",
                "fisher_request": {"dataset": dataset, "fisher_type": "exact", "n_examples": 64},
            }
        )
    request = {
        "models": models,
        "lambdas": [0.7, 0.3],
        "method": "fisher",
        "output_uri": str(root / "merged"),
        "overwrite": True,  # the demo may be run again
    }
    (root / "merge.json").write_text(json.dumps(request, indent=2))
    fisher = {"model": models[0]["uri"], **models[0]["fisher_request"]}
    (root / "fisher.json").write_text(json.dumps(fisher, indent=2))
    return root


if __name__ == "__main__":
    import sys

    print(f"demo checkpoints and request written under {write_demo(sys.argv[1])}")
