"""Fisher files, the content-addressed cache, data errors and 'auto' Fishers in a merge."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import app.fisher.engine as engine
from app.core.config import Settings
from app.fisher.auto import resolve_auto_fishers
from app.fisher.data import DatasetError
from app.fisher.engine import FisherResult, run_fisher
from app.fisher.loading import TaskMismatch
from app.merge.engine import run_merge
from app.schemas import FisherRequest, MergeRequest
from app.synthetic import save_tiny_causal_lm, save_tiny_classifier
from tests.conftest import BUCKET, auto_merge_body, s3_keys, upload_dir
from tests.reference import fisher_loop_reference, load_state

ROWS = [
    {"s1": "the movie was good", "s2": "fun", "label": 1},
    {"s1": "bad plot", "s2": "dull", "label": 0},
    {"s1": "great acting", "s2": "a very good film", "label": "LABEL_1"},
    {"s1": "not fun at all", "s2": "the plot", "label": 0},
]


def write_rows(path: Path, rows: list) -> str:
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return str(path)


@pytest.fixture
def workspace(tmp_path) -> tuple[Path, Settings]:
    save_tiny_classifier(tmp_path / "a", seed=1)
    save_tiny_classifier(tmp_path / "b", seed=2)
    save_tiny_causal_lm(tmp_path / "lm", seed=3)
    write_rows(tmp_path / "data.jsonl", ROWS)
    settings = Settings(cache_uri=str(tmp_path / "cache"), model_cache_dir=tmp_path / "models")
    return tmp_path, settings


def request(root: Path, **changes) -> FisherRequest:
    body = {
        "model": str(root / "a"),
        "dataset": {
            "uri": str(root / "data.jsonl"),
            "text_fields": ["s1", "s2"],
            "label_field": "label",
        },
        "fisher_type": "empirical",
        "batch_size": 3,
    }
    return FisherRequest.model_validate(body | changes)


def test_fisher_file_matches_the_loop_and_names_the_checkpoint_tensors(workspace):
    root, settings = workspace
    result = run_fisher(request(root), settings)
    assert not result.cached
    folder = Path(result.fisher_uri.removeprefix("file://"))
    assert folder.parent == root / "cache" / "fishers"
    got = load_file(folder / "fisher.safetensors")
    assert set(got) == set(load_state(root / "a"))
    assert all(value.dtype == torch.float32 for value in got.values())
    from transformers import AutoModelForSequenceClassification

    from app.synthetic import tiny_tokenizer

    model = AutoModelForSequenceClassification.from_pretrained(root / "a").eval()
    texts = [(row["s1"], row["s2"]) for row in ROWS]
    reference = fisher_loop_reference(
        model, tiny_tokenizer(), texts, [1, 0, 1, 0], "sequence-classification", "empirical"
    )
    for name, ref in reference.items():
        torch.testing.assert_close(got[name].double(), ref, rtol=1e-4, atol=1e-9)
    manifest = json.loads((folder / "fisher.json").read_text())
    assert manifest["key"] == result.key and manifest["n_examples"] == 4
    assert manifest["versions"]["torch"] == torch.__version__
    with safe_open(str(folder / "fisher.safetensors"), framework="pt") as handle:
        assert handle.metadata()["fisher_merge_key"] == result.key


def test_cache_hit_computes_nothing_and_batch_size_is_not_in_the_key(workspace, monkeypatch):
    root, settings = workspace
    first = run_fisher(request(root), settings)
    calls = []
    monkeypatch.setattr(engine, "diagonal_fisher", lambda *a, **k: calls.append(1))
    again = run_fisher(request(root, batch_size=1), settings)
    assert again.cached and again.fisher_uri == first.fisher_uri and calls == []


def test_changed_checkpoint_or_data_gets_a_new_key(workspace):
    root, settings = workspace
    first = run_fisher(request(root), settings)
    state = load_file(root / "a" / "model.safetensors")
    state["classifier.bias"] += 1.0
    save_file(state, root / "a" / "model.safetensors", metadata={"format": "pt"})
    changed_model = run_fisher(request(root), settings)
    assert not changed_model.cached and changed_model.key != first.key
    write_rows(root / "data.jsonl", ROWS[:3])
    changed_data = run_fisher(request(root), settings)
    assert not changed_data.cached and changed_data.key not in (first.key, changed_model.key)
    assert changed_data.manifest["n_examples"] == 3


def test_fewer_rows_than_asked_uses_them_all_and_says_so(workspace):
    root, settings = workspace
    result = run_fisher(request(root, n_examples=100), settings)
    assert result.manifest["n_examples"] == 4
    assert result.manifest["n_examples_requested"] == 100


def test_causal_lm_fisher_keeps_tied_weights_once(workspace):
    root, settings = workspace
    body = {
        "model": str(root / "lm"),
        "task": "causal-lm",
        "fisher_type": "sampled",
        "dataset": {"uri": str(root / "data.jsonl"), "text_fields": ["s1"]},
    }
    result = run_fisher(FisherRequest.model_validate(body), settings)
    got = load_file(Path(result.fisher_uri.removeprefix("file://")) / "fisher.safetensors")
    assert "transformer.wte.weight" in got and "lm_head.weight" not in got


def test_s3_checkpoint_data_and_cache(workspace, s3_settings, s3_client):
    root, _ = workspace
    model = upload_dir(s3_client, root / "a", "fisher/a")
    s3_client.upload_file(str(root / "data.jsonl"), BUCKET, "fisher/data.jsonl")
    settings = s3_settings.model_copy(
        update={"cache_uri": f"s3://{BUCKET}/fisher-cache", "model_cache_dir": root / "models"}
    )
    body = {
        "model": model,
        "dataset": {
            "uri": f"s3://{BUCKET}/fisher/data.jsonl",
            "text_fields": ["s1"],
            "label_field": "label",
        },
    }
    result = run_fisher(FisherRequest.model_validate(body), settings)
    assert result.fisher_uri == f"s3://{BUCKET}/fisher-cache/fishers/{result.key}/"
    keys = s3_keys(s3_client, f"fisher-cache/fishers/{result.key}/")
    assert sorted(key.rsplit("/", 1)[1] for key in keys) == ["fisher.json", "fisher.safetensors"]
    assert len(list((root / "models").iterdir())) == 1  # one local copy of the checkpoint
    again = run_fisher(FisherRequest.model_validate(body | {"seed": 5}), settings)
    assert again.key != result.key and len(list((root / "models").iterdir())) == 1


@pytest.mark.parametrize(
    ("rows", "changes", "error", "message"),
    [
        (
            ROWS,
            {"dataset": {"uri": "", "text_fields": ["nope"]}},
            DatasetError,
            "line 1: text field 'nope' is missing",
        ),
        (
            [{"s1": "x", "s2": "y", "label": "POSITIVE"}],
            {},
            DatasetError,
            "label field 'label' = 'POSITIVE' is not a class index nor a name",
        ),
        ([{"s1": "x", "s2": "y", "label": 7}], {}, DatasetError, "= 7 is outside 0..1"),
        ([{"s1": "x", "s2": "y"}], {}, DatasetError, "line 1: label field 'label' is missing"),
        ([], {}, DatasetError, "the data set has no examples"),
        (["[1, 2]"], {}, DatasetError, "line 1 is not a JSON object"),
        (
            ROWS,
            {"task": "causal-lm", "fisher_type": "sampled"},
            TaskMismatch,
            "task 'causal-lm' does not fit checkpoint",
        ),
    ],
)
def test_bad_input_is_named(workspace, rows, changes, error, message):
    root, settings = workspace
    path = root / "bad.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows))
    body = request(root).model_dump() | changes
    body["dataset"] = {
        **request(root).dataset.model_dump(),
        **changes.get("dataset", {}),
        "uri": str(path),
    }
    with pytest.raises(error, match=message):
        run_fisher(FisherRequest.model_validate(body), settings)
    assert not (root / "cache").exists()


def test_non_finite_model_is_rejected(workspace):
    root, settings = workspace
    state = load_file(root / "a" / "model.safetensors")
    state["classifier.weight"][0, 0] = float("nan")
    save_file(state, root / "a" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="log-probabilities are not finite"):
        run_fisher(request(root), settings)


def test_merge_with_auto_fishers_reuses_them_the_second_time(workspace, monkeypatch):
    root, settings = workspace
    dataset = {"uri": str(root / "data.jsonl"), "text_fields": ["s1", "s2"]}
    body = auto_merge_body(root, "merged", {"dataset": dataset, "fisher_type": "exact"})
    merge = MergeRequest.model_validate(body)
    with pytest.raises(ValueError, match="must be resolved"):
        run_merge(merge, settings)
    resolved = resolve_auto_fishers(merge, settings)
    uris = [model.fisher for model in resolved.models]
    assert all(uri and "/fishers/" in uri for uri in uris) and uris[0] != uris[1]
    run_merge(resolved, settings)
    explicit = MergeRequest.model_validate(
        body
        | {
            "models": [
                {"uri": str(root / n), "fisher": u} for n, u in zip("ab", uris, strict=True)
            ],
            "output_uri": str(root / "explicit"),
        }
    )
    run_merge(explicit, settings)
    merged, expected = load_state(root / "merged"), load_state(root / "explicit")
    assert all(torch.equal(merged[name], expected[name]) for name in expected)

    def no_compute(*args, **kwargs) -> FisherResult:
        raise AssertionError("a cached Fisher was computed again")

    monkeypatch.setattr(engine, "diagonal_fisher", no_compute)
    assert [m.fisher for m in resolve_auto_fishers(merge, settings).models] == uris
    shutil.rmtree(root / "cache")
    with pytest.raises(AssertionError, match="computed again"):
        resolve_auto_fishers(merge, settings)


def test_shuffle_takes_a_seeded_sample(workspace):
    root, settings = workspace
    rows = [{"s1": f"the film {'very ' * i}good", "s2": "fun", "label": i % 2} for i in range(12)]
    write_rows(root / "data.jsonl", rows)
    picks = {}
    for seed in (1, 1, 2):
        result = run_fisher(request(root, n_examples=4, shuffle=True, seed=seed), settings)
        picks.setdefault(seed, []).append(result)
    first, again = picks[1]
    assert again.cached and again.key == first.key
    assert picks[2][0].key != first.key
    ordered = run_fisher(request(root, n_examples=4), settings)
    assert ordered.key not in (first.key, picks[2][0].key)
    assert first.manifest["n_examples"] == 4


def test_progress_counts_examples(workspace):
    root, settings = workspace
    seen: list[tuple[int, int]] = []
    run_fisher(request(root, batch_size=3), settings, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(3, 4), (4, 4)]


def test_two_writers_of_one_key_leave_one_whole_entry(workspace):
    """Two processes (transformers' loading is not thread-safe; workers are processes)."""
    import os
    import subprocess
    import sys

    root, settings = workspace
    body = request(root).model_dump_json()
    env = {
        **os.environ,
        "FM_CACHE_URI": settings.cache_uri,
        "FM_MODEL_CACHE_DIR": str(settings.model_cache_dir),
    }
    writers = [
        subprocess.Popen(
            [sys.executable, "-m", "app.cli", "fisher", "--config", "-", "--quiet"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for _ in range(2)
    ]
    answers = [json.loads(writer.communicate(body, timeout=120)[0]) for writer in writers]
    assert answers[0]["fisher_uri"] == answers[1]["fisher_uri"]
    folder = Path(answers[0]["fisher_uri"].removeprefix("file://"))
    assert sorted(p.name for p in folder.iterdir()) == ["fisher.json", "fisher.safetensors"]
    assert json.loads((folder / "fisher.json").read_text())["key"] == answers[0]["key"]
    assert set(load_file(folder / "fisher.safetensors")) == set(load_state(root / "a"))
