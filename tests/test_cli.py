"""The installed `fisher-merge` command, run as a real process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import upload_dir
from tests.reference import isotropic_reference, load_state

CLI = [sys.executable, "-m", "app.cli"]


def run_cli(*args: str, stdin: str | None = None, env: dict | None = None):
    return subprocess.run(
        [*CLI, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_merge_from_config_file(tmp_path, zoo):
    body = {
        "models": [
            {"uri": str(zoo / "a"), "fisher": str(zoo / "fishers" / "a")},
            {"uri": str(zoo / "c3"), "fisher": str(zoo / "fishers" / "c3")},
        ],
        "lambdas": [0.6, 0.4],
        "method": "fisher",
        "output_uri": str(tmp_path / "out"),
    }
    config = tmp_path / "merge.json"
    config.write_text(json.dumps(body))
    done = run_cli("merge", "--config", str(config))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["files"][-1] == "merge.json"
    assert {item["name"] for item in summary["copied_from_target"]} == {
        "classifier.weight",
        "classifier.bias",
    }
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_flags_override_config_from_stdin(tmp_path, zoo):
    body = {"models": [str(zoo / "a"), str(zoo / "b")], "method": "fisher", "output_uri": "/nope"}
    out = tmp_path / "out"
    done = run_cli(
        "merge",
        "--config",
        "-",
        "--method",
        "isotropic",
        "--lambdas",
        "1,3",
        "--out",
        str(out),
        "--dtype",
        "bfloat16",
        stdin=json.dumps(body),
    )
    assert done.returncode == 0, done.stderr
    merged = load_state(out)
    a, b = load_state(zoo / "a"), load_state(zoo / "b")
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert merged[name].dtype == torch.bfloat16
    expected = isotropic_reference([a[name], b[name]], [1, 3]).float().bfloat16()
    torch.testing.assert_close(merged[name], expected, rtol=8e-3, atol=1e-3)


def test_merge_on_s3_through_the_environment(tmp_path, zoo, s3_endpoint, s3_client):
    a = upload_dir(s3_client, zoo / "a", "cli/a")
    b = upload_dir(s3_client, zoo / "b", "cli/b")
    fa = upload_dir(s3_client, zoo / "fishers" / "a", "cli/fa")
    fb = upload_dir(s3_client, zoo / "fishers" / "b", "cli/fb")
    done = run_cli(
        "merge",
        "--model",
        a,
        "--model",
        b,
        "--fisher",
        fa,
        "--fisher",
        fb,
        "--method",
        "fisher",
        "--out",
        "s3://ckpt/cli/merged/",
        env={"FM_S3_ENDPOINT_URL": s3_endpoint},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["output_uri"] == "s3://ckpt/cli/merged/"
    keys = s3_client.list_objects_v2(Bucket="ckpt", Prefix="cli/merged/")["Contents"]
    assert {k["Key"].rsplit("/", 1)[1] for k in keys} >= {"model.safetensors", "merge.json"}


def merge_args(*models: Path, out: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return ["merge", *[a for m in models for a in ("--model", str(m))], "--out", str(out), *extra]


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("fisher-merge: error: ")
    return lines[0]


def test_bad_lambdas_exit_non_zero_with_one_line(tmp_path, zoo):
    line = one_line_error(
        run_cli(*merge_args(zoo / "a", zoo / "b", out=tmp_path / "o", extra=("--lambdas", "1,-1")))
    )
    assert "lambdas[1] = -1.0 must be finite and >= 0" in line
    assert not (tmp_path / "o").exists()


def test_missing_checkpoint_is_named(tmp_path, zoo):
    missing = tmp_path / "nowhere"
    line = one_line_error(
        run_cli(
            *merge_args(zoo / "a", missing, out=tmp_path / "o", extra=("--method", "isotropic"))
        )
    )
    assert str(missing) in line and "model.safetensors" in line


def test_unreadable_config(tmp_path: Path):
    (tmp_path / "bad.json").write_text("{")
    assert "not valid JSON" in one_line_error(
        run_cli("merge", "--config", str(tmp_path / "bad.json"))
    )
    assert "no such file" in one_line_error(run_cli("merge", "--config", str(tmp_path / "x.json")))


def test_fisher_flags_must_pair_with_models(zoo, tmp_path):
    line = one_line_error(
        run_cli(
            *merge_args(
                zoo / "a",
                zoo / "b",
                out=tmp_path / "o",
                extra=("--fisher", str(zoo / "fishers" / "a")),
            ),
        )
    )
    assert "1 --fisher values for 2 models" in line


def test_usage_errors_are_one_line_too():
    line = one_line_error(run_cli("merge", "--lambdas"))
    assert "argument --lambdas: expected one argument" in line


def test_fisher_command_computes_then_reuses(tmp_path, zoo):
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "the movie was good", "label": 1}\n{"text": "bad", "label": 0}\n')
    args = [
        "fisher",
        "--model",
        str(zoo / "a"),
        "--dataset",
        str(data),
        "--text-field",
        "text",
        "--label-field",
        "label",
        "--fisher-type",
        "empirical",
    ]
    env = {"FM_CACHE_URI": str(tmp_path / "cache"), "FM_MODEL_CACHE_DIR": str(tmp_path / "m")}
    first = run_cli(*args, env=env)
    assert first.returncode == 0, first.stderr
    answer = json.loads(first.stdout)
    assert answer["cached"] is False and answer["n_examples"] == 2
    assert (Path(answer["fisher_uri"].removeprefix("file://")) / "fisher.safetensors").exists()
    second = run_cli(*args, "--batch-size", "1", env=env)
    assert json.loads(second.stdout)["cached"] is True


def test_fisher_command_bad_task_is_one_line(tmp_path, zoo):
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "good"}\n')
    line = one_line_error(
        run_cli(
            "fisher",
            "--model",
            str(zoo / "a"),
            "--dataset",
            str(data),
            "--text-field",
            "text",
            "--task",
            "causal-lm",
            "--fisher-type",
            "exact",
        )
    )
    assert "fisher_type 'exact' needs task 'sequence-classification'" in line
