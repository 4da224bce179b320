"""The safetensors reader and writer against safetensors' own loader, and malformed input."""

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from app.checkpoints.format import CheckpointError, TensorSpec
from app.checkpoints.reader import Checkpoint
from app.checkpoints.writer import CheckpointWriter, plan_shards
from app.storage import OutputTransaction, open_store

DTYPE_SAMPLES = {
    "f32": torch.randn(5, 7),
    "f16": torch.randn(3, 4).half(),
    "bf16": torch.randn(6).bfloat16(),
    "f64": torch.randn(2, 2).double(),
    "i64": torch.arange(12).reshape(3, 4),
    "i32": torch.arange(5, dtype=torch.int32),
    "i8": torch.tensor([-3, 0, 7], dtype=torch.int8),
    "u8": torch.tensor([0, 255], dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "scalar": torch.tensor(3.5),
    "empty": torch.zeros(0, 4),
}


def write_raw(path: Path, header: object, data: bytes = b"", header_len: int | None = None) -> Path:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(text) if header_len is None else header_len
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.safetensors").write_bytes(struct.pack("<Q", length) + text + data)
    return path


def test_reader_matches_safetensors_for_every_dtype(tmp_path):
    save_file(DTYPE_SAMPLES, tmp_path / "model.safetensors")
    checkpoint = Checkpoint.open(open_store(str(tmp_path)))
    assert set(checkpoint.names()) == set(DTYPE_SAMPLES)
    for name, expected in DTYPE_SAMPLES.items():
        got = checkpoint.read(name)
        assert got.dtype == expected.dtype
        assert torch.equal(got, expected), name


def test_row_slices_read_only_their_rows(tmp_path):
    tensor = torch.randn(10, 3, 2)
    save_file({"t": tensor}, tmp_path / "model.safetensors")
    checkpoint = Checkpoint.open(open_store(str(tmp_path)))
    assert torch.equal(checkpoint.read_rows("t", 4, 7), tensor[4:7])


def test_sharded_checkpoint_reads_through_the_index(zoo):
    checkpoint = Checkpoint.open(open_store(str(zoo / "b_sharded")))
    assert len(checkpoint.files) > 1
    whole = Checkpoint.open(open_store(str(zoo / "b")))
    assert sorted(checkpoint.names()) == sorted(whole.names())
    for name in whole.names():
        assert torch.equal(checkpoint.read(name), whole.read(name))


def test_writer_output_loads_with_safe_open_and_shards(tmp_path):
    tensors = {f"layer{i}.weight": torch.randn(20, 10) for i in range(5)} | {
        "mask": torch.tensor([True, False]),
        "half": torch.randn(4).half(),
    }
    specs = [
        TensorSpec(
            name,
            {torch.float32: "F32", torch.bool: "BOOL", torch.float16: "F16"}[t.dtype],
            tuple(t.shape),
        )
        for name, t in tensors.items()
    ]
    store = open_store(str(tmp_path / "out"))
    with OutputTransaction(store) as transaction:
        writer = CheckpointWriter(transaction, specs, {"note": "hi"}, max_shard_size=1700)
        for name, tensor in tensors.items():
            if tensor.dim() == 2:
                writer.write(name, tensor[:7])
                writer.write(name, tensor[7:])
            else:
                writer.write(name, tensor)
        files = writer.close()
    assert "model.safetensors.index.json" in files
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    assert index["metadata"]["total_size"] == sum(spec.nbytes for spec in specs)
    for name, shard in index["weight_map"].items():
        with safe_open(str(tmp_path / "out" / shard), framework="pt") as handle:
            assert torch.equal(handle.get_tensor(name), tensors[name])
            assert handle.metadata() == {"format": "pt", "note": "hi"}


def test_plan_shards_keeps_order_and_isolates_oversized_tensors():
    specs = [TensorSpec(f"t{i}", "F32", (n,)) for i, n in enumerate([10, 10, 100, 10])]
    shards = plan_shards(specs, max_shard_size=80)
    assert [[s.name for s in shard] for shard in shards] == [["t0", "t1"], ["t2"], ["t3"]]


def test_writer_rejects_out_of_order_and_incomplete_data(tmp_path):
    specs = [TensorSpec("a", "F32", (2,)), TensorSpec("b", "F32", (2,))]
    store = open_store(str(tmp_path / "out"))
    with OutputTransaction(store) as transaction:
        writer = CheckpointWriter(transaction, specs)
        with pytest.raises(CheckpointError, match="'b' written where 'a' was planned"):
            writer.write("b", torch.zeros(2))
        with pytest.raises(CheckpointError, match="got torch.float16"):
            writer.write("a", torch.zeros(2).half())
        writer.write("a", torch.zeros(2))
        with pytest.raises(CheckpointError, match="before tensor 'b' was complete"):
            writer.close()
        transaction.abort()
    assert not (tmp_path / "out").exists()


F32_4 = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}


@pytest.mark.parametrize(
    ("header", "data", "header_len", "message"),
    [
        ({"w": F32_4}, b"\0" * 10, None, "truncated or out of range"),
        ({"w": F32_4}, b"", 10**6, "runs past the end"),
        (b"{not json", b"", None, "header is not valid JSON"),
        (b"[1, 2]", b"", None, "not an object"),
        (
            {"w": F32_4, "v": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}},
            b"\0" * 24,
            None,
            "'w' and 'v' overlap",
        ),
        (
            {"w": {"dtype": "F12", "shape": [4], "data_offsets": [0, 16]}},
            b"\0" * 16,
            None,
            "unknown dtype 'F12'",
        ),
        (
            {"w": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}},
            b"\0" * 16,
            None,
            "needs 20",
        ),
        (
            {"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}},
            b"\0" * 16,
            None,
            "non-negative",
        ),
        (
            {"w": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}},
            b"\0" * 16,
            None,
            "are not \\[begin, end\\]",
        ),
        ({"w": F32_4, "__metadata__": {"x": 1}}, b"\0" * 16, None, "__metadata__"),
    ],
)
def test_malformed_files_name_the_object_and_the_problem(
    tmp_path, header, data, header_len, message
):
    write_raw(tmp_path, header, data, header_len)
    with pytest.raises(CheckpointError, match=message) as error:
        Checkpoint.open(open_store(str(tmp_path)))
    assert "model.safetensors" in str(error.value)


def test_file_shorter_than_the_length_prefix(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="too short"):
        Checkpoint.open(open_store(str(tmp_path)))


def test_index_naming_a_missing_shard(tmp_path):
    save_file({"a": torch.zeros(2)}, tmp_path / "model-00001-of-00002.safetensors")
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="names shard 'model-00002-of-00002.safetensors'"):
        Checkpoint.open(open_store(str(tmp_path)))


def test_index_mapping_a_tensor_to_the_wrong_shard(tmp_path):
    save_file({"a": torch.zeros(2)}, tmp_path / "one.safetensors")
    save_file({"b": torch.zeros(2)}, tmp_path / "two.safetensors")
    index = {"weight_map": {"a": "two.safetensors", "b": "two.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="maps tensor 'a' to 'two.safetensors'"):
        Checkpoint.open(open_store(str(tmp_path)))


def test_invalid_index_json(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text("{")
    with pytest.raises(CheckpointError, match="index is not valid JSON"):
        Checkpoint.open(open_store(str(tmp_path)))


def test_prefix_without_weights(tmp_path):
    with pytest.raises(CheckpointError, match="neither model.safetensors nor"):
        Checkpoint.open(open_store(str(tmp_path)))
