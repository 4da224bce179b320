"""Both object-store backends: ranged reads, listings, two-phase writes, multipart, transactions."""

import os

import pytest

from app.core.config import Settings
from app.storage import ObjectNotFound, OutputTransaction, StorageError, open_store
from app.storage.local import LocalStore
from tests.conftest import BUCKET

MIB = 1024 * 1024


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(str(tmp_path / "root"))
    settings: Settings = request.getfixturevalue("s3_settings")
    return open_store(f"s3://{BUCKET}/{request.node.name}", settings)


def pending_uploads(store) -> list:
    if isinstance(store, LocalStore):
        return [p for p in store.root.parent.rglob("*") if ".partial-" in p.name]
    return store.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])


def test_written_object_reads_back_by_range(store):
    data = os.urandom(10_000)
    store.write_bytes("dir/blob.bin", data)
    assert store.read_range("dir/blob.bin", 1234, 100) == data[1234:1334]
    assert store.read_bytes("dir/blob.bin") == data
    info = store.head("dir/blob.bin")
    assert info.size == len(data)
    assert info.version


def test_read_past_the_end_is_an_error(store):
    store.write_bytes("small", b"0123456789")
    with pytest.raises(StorageError, match="short read"):
        store.read_range("small", 5, 10)


def test_missing_object_is_named(store):
    with pytest.raises(ObjectNotFound, match="nothing-here"):
        store.head("nothing-here")
    assert not store.exists("nothing-here")


def test_listing_one_level_or_recursive(store):
    for key in ["a.json", "b.safetensors", "sub/c.txt"]:
        store.write_bytes(key, b"x")
    assert [info.key for info in store.list()] == ["a.json", "b.safetensors"]
    assert [info.key for info in store.list(recursive=True)] == [
        "a.json",
        "b.safetensors",
        "sub/c.txt",
    ]
    assert [info.key for info in store.child("sub").list()] == ["c.txt"]


def test_unpublished_object_is_invisible_and_abort_leaves_nothing(store):
    writer = store.open_writer("out/model.safetensors")
    writer.write(b"partial")
    writer.finish()
    assert not store.exists("out/model.safetensors")
    assert store.list(recursive=True) == []
    writer.abort()
    assert store.list(recursive=True) == []
    assert pending_uploads(store) == []


def test_large_object_goes_up_in_parts(store):
    data = os.urandom(12 * MIB + 123)
    writer = store.open_writer("big.bin")
    for start in range(0, len(data), 3 * MIB):
        writer.write(data[start : start + 3 * MIB])
    if not isinstance(store, LocalStore):
        assert len(writer._parts) == 2  # two full 5 MiB parts sent while streaming
    assert not store.exists("big.bin")
    writer.publish()
    assert store.read_bytes("big.bin") == data
    assert store.read_range("big.bin", 6 * MIB - 7, 20) == data[6 * MIB - 7 : 6 * MIB + 13]
    assert pending_uploads(store) == []


def test_aborted_multipart_upload_is_cleaned_up(store):
    writer = store.open_writer("big.bin")
    writer.write(os.urandom(11 * MIB))
    writer.abort()
    assert not store.exists("big.bin")
    assert pending_uploads(store) == []


def test_transaction_publishes_all_or_nothing(store):
    with OutputTransaction(store) as transaction:
        transaction.put("one", b"1")
        transaction.put("two", b"2")
        assert store.list() == []
    assert store.read_bytes("one") == b"1"
    assert store.read_bytes("two") == b"2"

    target = store.child("failed")
    with pytest.raises(RuntimeError, match="boom"), OutputTransaction(target) as transaction:
        transaction.put("one", b"1")
        transaction.open("big").write(os.urandom(6 * MIB))
        raise RuntimeError("boom")
    assert target.list(recursive=True) == []
    assert pending_uploads(store) == []


def test_failed_publish_undoes_what_was_published(store, monkeypatch):
    target = store.child("torn")
    transaction = OutputTransaction(target)
    transaction.put("first", b"1")
    second = transaction.open("second")
    second.write(b"2")

    def broken() -> None:
        raise StorageError("publish failed")

    monkeypatch.setattr(second, "publish", broken)
    with pytest.raises(StorageError):
        transaction.commit()
    assert target.list(recursive=True) == []


def test_transaction_replaces_stale_objects(store):
    target = store.child("out")
    target.write_bytes("model-00001-of-00002.safetensors", b"old")
    target.write_bytes("model-00002-of-00002.safetensors", b"old")
    existing = [info.key for info in target.list()]
    with OutputTransaction(target, replace=existing) as transaction:
        transaction.put("model.safetensors", b"new")
    assert [info.key for info in target.list()] == ["model.safetensors"]


def test_local_store_refuses_keys_outside_its_root(tmp_path):
    store = open_store(str(tmp_path / "root"))
    with pytest.raises(ValueError, match="leaves the store root"):
        store.head("../escape")


def test_local_abort_removes_directories_it_created(tmp_path):
    store = open_store(str(tmp_path))
    writer = store.open_writer("new/deeper/file")
    writer.write(b"x")
    writer.abort()
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("gs://bucket/x", "unsupported URI scheme 'gs'"),
        ("s3:///nobucket", "no bucket"),
        ("", "empty"),
    ],
)
def test_bad_uris_are_rejected(uri, message):
    with pytest.raises(ValueError, match=message):
        open_store(uri)


def test_file_uri_and_bare_path_name_the_same_place(tmp_path):
    open_store(str(tmp_path)).write_bytes("x", b"1")
    assert open_store(f"file://{tmp_path}").read_bytes("x") == b"1"
