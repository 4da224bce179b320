"""The merge engine against plain in-memory references, on the local store and on S3."""

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForSequenceClassification

from app.checkpoints.format import CheckpointError
from app.core.config import Settings
from app.merge.engine import MergeInputError, Progress, run_merge
from app.merge.plan import ArchitectureMismatch
from app.schemas import MergeRequest
from app.synthetic import save_stand_in_fisher, tiny_classifier
from tests.conftest import BUCKET, s3_keys, upload_dir
from tests.reference import fisher_reference, isotropic_reference, load_state, metadata_of

MIB = 1024 * 1024
HEAD = ("classifier.weight", "classifier.bias")


@dataclass
class Place:
    """Where a test's inputs and output live: a local folder, or a prefix on the moto server."""

    kind: str
    root: Path
    settings: Settings
    client: object | None = None
    prefix: str = ""

    def put(self, local: Path) -> str:
        if self.kind == "local":
            return str(local)
        return upload_dir(self.client, local, f"{self.prefix}/{local.parent.name}/{local.name}")

    @property
    def out(self) -> str:
        if self.kind == "local":
            return str(self.root / "out")
        return f"s3://{BUCKET}/{self.prefix}/out"

    def fetch_out(self) -> Path:
        """The output as a local folder, so safetensors' own loader reads it."""
        if self.kind == "local":
            return self.root / "out"
        folder = self.root / "fetched"
        folder.mkdir(exist_ok=True)
        for key in s3_keys(self.client, f"{self.prefix}/out/"):
            self.client.download_file(BUCKET, key, str(folder / key.rsplit("/", 1)[1]))
        return folder

    def out_is_empty(self) -> bool:
        if self.kind == "local":
            return not (self.root / "out").exists()
        uploads = self.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
        mine = [u for u in uploads if u["Key"].startswith(self.prefix)]
        return s3_keys(self.client, f"{self.prefix}/out/") == [] and mine == []


@pytest.fixture(params=["local", "s3"])
def place(request, tmp_path) -> Place:
    if request.param == "local":
        return Place("local", tmp_path, Settings())
    return Place(
        "s3",
        tmp_path,
        request.getfixturevalue("s3_settings"),
        client=request.getfixturevalue("s3_client"),
        prefix=f"t-{uuid.uuid4().hex[:8]}",
    )


def merged(place: Place, **body) -> tuple[dict[str, torch.Tensor], Path]:
    result = run_merge(MergeRequest(output_uri=place.out, **body), place.settings)
    folder = place.fetch_out()
    assert result.files == sorted(result.files, key=lambda key: key == "merge.json")
    return load_state(folder), folder


def assert_close(got: torch.Tensor, reference: torch.Tensor) -> None:
    torch.testing.assert_close(got, reference.to(got.dtype), rtol=2e-6, atol=1e-7)


def test_isotropic_matches_reference(place, zoo):
    models = [place.put(zoo / "a"), place.put(zoo / "b")]
    lambdas = [0.3, 1.7]
    out, folder = merged(place, models=models, lambdas=lambdas, method="isotropic")
    a, b = load_state(zoo / "a"), load_state(zoo / "b")
    assert set(out) == set(a)
    for name, value in out.items():
        assert_close(value, isotropic_reference([a[name], b[name]], lambdas))
    assert json.loads((folder / "merge.json").read_text())["method"] == "isotropic"


def test_fisher_matches_reference_and_keeps_the_target_head(place, zoo):
    models = [
        {"uri": place.put(zoo / "a"), "fisher": place.put(zoo / "fishers" / "a")},
        {"uri": place.put(zoo / "c3"), "fisher": place.put(zoo / "fishers" / "c3")},
    ]
    out, folder = merged(place, models=models, lambdas=[0.7, 0.3], method="fisher")
    a, c3 = load_state(zoo / "a"), load_state(zoo / "c3")
    fa, fc = (load_state(zoo / "fishers" / n, "fisher") for n in ("a", "c3"))
    for name, value in out.items():
        if name in HEAD:
            assert torch.equal(value, a[name])
        else:
            reference = fisher_reference([a[name], c3[name]], [fa[name], fc[name]], [0.7, 0.3])
            assert_close(value, reference)
            # the Fisher weighting really differs from a plain average here
            plain = isotropic_reference([a[name], c3[name]], [0.7, 0.3]).float()
            assert not torch.allclose(value, plain)
    manifest = json.loads((folder / "merge.json").read_text())
    assert {item["name"] for item in manifest["copied_from_target"]} == set(HEAD)
    assert manifest["lambdas"] == [0.7, 0.3]
    assert all(model["files"][0]["version"] for model in manifest["models"])
    assert json.loads(metadata_of(folder)["fisher_merge"])["method"] == "fisher"
    loaded = AutoModelForSequenceClassification.from_pretrained(folder)
    assert loaded.config.num_labels == 2
    assert torch.equal(loaded.state_dict()["classifier.weight"], a["classifier.weight"])
    assert (folder / "tokenizer.json").read_bytes() == (zoo / "a" / "tokenizer.json").read_bytes()


def test_sharded_inputs_and_sharded_output(place, zoo):
    names = ["a", "b_sharded", "c3"]
    models = [{"uri": place.put(zoo / n), "fisher": place.put(zoo / "fishers" / n)} for n in names]
    lambdas = [1.0, 2.0, 0.5]
    out, folder = merged(
        place, models=models, lambdas=lambdas, method="fisher", max_shard_size="20KB"
    )
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 2
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert {folder / shard for shard in index["weight_map"].values()} == set(shards)
    states = [load_state(zoo / n) for n in names]
    fishers = [load_state(zoo / "fishers" / n, "fisher") for n in names]
    for name, value in out.items():
        if name not in HEAD:
            reference = fisher_reference(
                [s[name] for s in states], [f[name] for f in fishers], lambdas
            )
            assert_close(value, reference)
    reloaded = AutoModelForSequenceClassification.from_pretrained(folder).state_dict()
    for name, value in out.items():
        assert torch.equal(reloaded[name], value)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [("auto", torch.float16), ("float32", torch.float32), ("bfloat16", torch.bfloat16)],
)
def test_half_precision_inputs(tmp_path, zoo, dtype, expected):
    place = Place("local", tmp_path, Settings())
    models = [
        {"uri": str(zoo / "a_f16"), "fisher": str(zoo / "fishers" / "a_f16")},
        {"uri": str(zoo / "b_bf16"), "fisher": str(zoo / "fishers" / "b_bf16")},
    ]
    out, _ = merged(place, models=models, lambdas=[0.4, 0.6], method="fisher", dtype=dtype)
    a, b = load_state(zoo / "a_f16"), load_state(zoo / "b_bf16")
    fa, fb = (load_state(zoo / "fishers" / n, "fisher") for n in ("a_f16", "b_bf16"))
    for name, value in out.items():
        assert value.dtype == expected
        reference = fisher_reference([a[name], b[name]], [fa[name], fb[name]], [0.4, 0.6])
        tolerance = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[expected]
        torch.testing.assert_close(value.double(), reference, rtol=tolerance, atol=tolerance)


def test_target_selects_head_and_config(tmp_path, zoo):
    place = Place("local", tmp_path, Settings())
    out, folder = merged(
        place, models=[str(zoo / "a"), str(zoo / "c3")], method="isotropic", target=1
    )
    c3 = load_state(zoo / "c3")
    assert out["classifier.weight"].shape == (3, 32)
    assert torch.equal(out["classifier.weight"], c3["classifier.weight"])
    assert AutoConfig.from_pretrained(folder).num_labels == 3


def test_normalized_fishers(tmp_path, zoo):
    place = Place("local", tmp_path, Settings())
    models = [{"uri": str(zoo / n), "fisher": str(zoo / "fishers" / n)} for n in ("a", "b")]
    out, folder = merged(place, models=models, method="fisher", normalize_fishers=True)
    states = [load_state(zoo / n) for n in ("a", "b")]
    fishers = [load_state(zoo / "fishers" / n, "fisher") for n in ("a", "b")]
    merged_names = [name for name, value in out.items() if value.is_floating_point()]
    norms = [
        sum(float(f[name].double().square().sum()) for name in merged_names) ** 0.5 for f in fishers
    ]
    assert json.loads((folder / "merge.json").read_text())["fisher_norms"] == pytest.approx(norms)
    for name in merged_names:
        reference = fisher_reference(
            [s[name] for s in states], [f[name] for f in fishers], [1.0, 1.0], norms=norms
        )
        assert_close(out[name], reference)


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """Checkpoints with a 12 MiB matrix and a 1.2 MiB vector: larger than a 1 MiB budget,
    and above the S3 part size, so slicing and multipart uploads both happen."""
    root = tmp_path_factory.mktemp("big")
    for seed, name in [(1, "x"), (2, "y")]:
        generator = torch.Generator().manual_seed(seed)
        tensors = {
            "embed.weight": torch.randn(3000, 1024, generator=generator),
            "norm.bias": torch.randn(300_000, generator=generator),
            "head.weight": torch.randn(7, 5, generator=generator),
        }
        (root / name).mkdir()
        save_file(tensors, root / name / "model.safetensors", metadata={"format": "pt"})
        save_stand_in_fisher(root / name, root / f"fisher_{name}", seed=seed)
    return root


@pytest.mark.parametrize("method", ["isotropic", "fisher"])
def test_tensors_larger_than_the_budget_merge_in_slices(tmp_path, big, method, monkeypatch):
    settings = Settings(chunk_bytes=MIB)
    reads = []
    from app.checkpoints.reader import SafetensorsObject

    original = SafetensorsObject.read_rows

    def counting(self, entry, start, stop, buffer=None):
        reads.append(entry.spec.nbytes * (stop - start) // entry.spec.rows)
        return original(self, entry, start, stop, buffer)

    monkeypatch.setattr(SafetensorsObject, "read_rows", counting)
    place = Place("local", tmp_path, settings)
    models = [{"uri": str(big / n), "fisher": str(big / f"fisher_{n}")} for n in ("x", "y")]
    out, _ = merged(place, models=models, lambdas=[2.0, 1.0], method=method)
    assert max(reads) <= MIB
    x, y = load_state(big / "x"), load_state(big / "y")
    fx, fy = (load_state(big / f"fisher_{n}", "fisher") for n in ("x", "y"))
    for name, value in out.items():
        if method == "fisher":
            reference = fisher_reference([x[name], y[name]], [fx[name], fy[name]], [2.0, 1.0])
        else:
            reference = isotropic_reference([x[name], y[name]], [2.0, 1.0])
        assert_close(value, reference)


def test_failure_half_way_leaves_nothing_at_the_output(place, big):
    models = [
        {"uri": place.put(big / n), "fisher": place.put(big / f"fisher_{n}")} for n in ("x", "y")
    ]
    request = MergeRequest(
        models=models, method="fisher", output_uri=place.out, max_shard_size=6 * MIB
    )
    seen = []

    def fail_half_way(progress: Progress) -> None:
        seen.append(progress.done)
        if progress.done > progress.total // 2:
            raise RuntimeError("worker lost")

    settings = place.settings.model_copy(update={"chunk_bytes": 4 * MIB})
    with pytest.raises(RuntimeError, match="worker lost"):
        run_merge(request, settings, progress=fail_half_way)
    assert len(seen) > 2
    assert place.out_is_empty()


def test_non_finite_input_fails_with_the_tensor_name(place, zoo, tmp_path):
    broken = tmp_path / "broken" / "b"
    shutil.copytree(zoo / "b", broken)
    state = load_file(broken / "model.safetensors")
    state["bert.encoder.layer.1.output.dense.weight"][3, 4] = float("nan")
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    request = MergeRequest(
        models=[place.put(zoo / "a"), place.put(broken)],
        method="isotropic",
        output_uri=place.out,
        max_shard_size="10KB",
    )
    with pytest.raises(MergeInputError, match=r"'bert.encoder.layer.1.output.dense.weight'.*NaN"):
        run_merge(request, place.settings)
    assert place.out_is_empty()


def merge_with_edited_fisher(tmp_path: Path, zoo: Path, edit) -> None:
    """Merge a and b, with b's Fisher changed by `edit(fisher_dict)`."""
    edited = tmp_path / "edited_fisher"
    edited.mkdir()
    fisher = load_file(zoo / "fishers" / "b" / "fisher.safetensors")
    edit(fisher)
    save_file(fisher, edited / "fisher.safetensors")
    request = MergeRequest(
        models=[
            {"uri": str(zoo / "a"), "fisher": str(zoo / "fishers" / "a")},
            {"uri": str(zoo / "b"), "fisher": str(edited)},
        ],
        output_uri=str(tmp_path / "out"),
    )
    try:
        run_merge(request)
    finally:
        assert not (tmp_path / "out").exists()


def test_fisher_missing_a_merged_tensor_fails_before_writing(tmp_path, zoo):
    with pytest.raises(
        CheckpointError, match="no entry for merged tensor 'bert.pooler.dense.bias'"
    ):
        merge_with_edited_fisher(tmp_path, zoo, lambda f: f.pop("bert.pooler.dense.bias"))


def test_negative_fisher_is_rejected(tmp_path, zoo):
    def negative(fisher):
        fisher["bert.pooler.dense.bias"][0] = -1.0

    with pytest.raises(MergeInputError, match="'bert.pooler.dense.bias' has negative values"):
        merge_with_edited_fisher(tmp_path, zoo, negative)


def test_different_architectures_are_refused(tmp_path, zoo):
    wide = tmp_path / "wide"
    tiny_classifier(seed=5, hidden=48).save_pretrained(wide)
    request = MergeRequest(
        models=[str(zoo / "a"), str(wide)], method="isotropic", output_uri=str(tmp_path / "out")
    )
    with pytest.raises(ArchitectureMismatch, match="not the same architecture"):
        run_merge(request)
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite_and_stale_shards_go(tmp_path, zoo):
    out = tmp_path / "out"
    body = {
        "models": [str(zoo / "a"), str(zoo / "b")],
        "method": "isotropic",
        "output_uri": str(out),
    }
    run_merge(MergeRequest(**body, max_shard_size="20KB"))
    assert len(list(out.glob("model-*.safetensors"))) > 1
    with pytest.raises(ValueError, match="already holds .* set overwrite"):
        run_merge(MergeRequest(**body))
    run_merge(MergeRequest(**body, overwrite=True))
    assert sorted(p.name for p in out.glob("model*")) == ["model.safetensors"]


def test_output_may_not_be_an_input(zoo):
    request = MergeRequest(
        models=[str(zoo / "a"), str(zoo / "b")],
        method="isotropic",
        output_uri=f"file://{zoo / 'a'}",
        overwrite=True,
    )
    with pytest.raises(ValueError, match=r"is models\[0\].uri"):
        run_merge(request)


def test_progress_reaches_the_total(tmp_path, zoo):
    seen: list[Progress] = []
    request = MergeRequest(
        models=[str(zoo / "a"), str(zoo / "b")], method="isotropic", output_uri=str(tmp_path / "o")
    )
    run_merge(request, progress=seen.append)
    assert seen[-1].done == seen[-1].total > 0
    assert [p.done for p in seen] == sorted(p.done for p in seen)


def test_overflow_of_the_output_dtype_is_named(tmp_path):
    for name, value in [("x", 70000.0), ("y", 80000.0)]:
        (tmp_path / name).mkdir()
        tensors = {"big": torch.full((4, 4), value), "small": torch.ones(100, 4)}
        save_file(tensors, tmp_path / name / "model.safetensors", metadata={"format": "pt"})
    request = MergeRequest(
        models=[str(tmp_path / "x"), str(tmp_path / "y")],
        method="isotropic",
        dtype="float16",
        output_uri=str(tmp_path / "out"),
    )
    with pytest.raises(MergeInputError, match="tensor 'big': merged values overflow F16"):
        run_merge(request)
    assert not (tmp_path / "out").exists()


def test_nan_in_a_model_weighted_zero_is_still_rejected(tmp_path, zoo):
    broken = tmp_path / "b"
    shutil.copytree(zoo / "b", broken)
    state = load_file(broken / "model.safetensors")
    state["bert.pooler.dense.bias"][0] = float("inf")
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    request = MergeRequest(
        models=[str(zoo / "a"), str(broken)],
        lambdas=[1.0, 0.0],
        method="isotropic",
        output_uri=str(tmp_path / "out"),
    )
    with pytest.raises(
        MergeInputError, match=r"b/model.safetensors: tensor 'bert.pooler.dense.bias'"
    ):
        run_merge(request)


def test_zero_lambda_drops_a_model(tmp_path, zoo):
    place = Place("local", tmp_path, Settings())
    out, _ = merged(
        place, models=[str(zoo / "a"), str(zoo / "b")], lambdas=[0.0, 2.0], method="isotropic"
    )
    b = load_state(zoo / "b")
    for name, value in out.items():
        assert torch.equal(value, b[name])
