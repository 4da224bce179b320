"""Object store over a local directory: `file://` URIs and bare paths.

Objects are written to a hidden temporary file beside their final name and renamed into place on
publish, so a reader never sees a partial file. Directories created for an aborted output are
removed again when they are left empty.
"""

import os
import uuid
from pathlib import Path

from app.storage.base import ObjectInfo, ObjectNotFound, ObjectStore, ObjectWriter, StorageError

PARTIAL_MARK = ".partial-"
WRITEBACK_BYTES = 32 * 1024 * 1024


class LocalWriter(ObjectWriter):
    def __init__(self, store: "LocalStore", key: str) -> None:
        self.key = key
        self._store = store
        self._final = store.path_of(key)
        self._created_dirs = _missing_parents(self._final, store.root)
        self._final.parent.mkdir(parents=True, exist_ok=True)
        self._temp = self._final.with_name(f".{self._final.name}{PARTIAL_MARK}{uuid.uuid4().hex}")
        self._file = open(self._temp, "wb")  # noqa: SIM115 (closed in finish/abort)
        self._written = 0
        self._flushed = 0
        self._state = "open"

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._state != "open":
            raise StorageError(f"{self._store.uri_of(self.key)}: write after {self._state}")
        self._file.write(data)
        self._written += len(data)
        if self._store.fsync and self._written - self._flushed >= WRITEBACK_BYTES:
            self._start_writeback()

    def _start_writeback(self) -> None:
        """Start the kernel writing what we have so far (DONTNEED begins asynchronous writeback
        of dirty pages on Linux), so the fsync before publishing waits only for the tail."""
        self._file.flush()
        os.posix_fadvise(
            self._file.fileno(),
            self._flushed,
            self._written - self._flushed,
            os.POSIX_FADV_DONTNEED,
        )
        self._flushed = self._written

    def finish(self) -> None:
        if self._state != "open":
            return
        self._file.flush()
        if self._store.fsync:
            os.fsync(self._file.fileno())
        self._file.close()
        self._state = "finished"

    def publish(self) -> None:
        self.finish()
        if self._state != "finished":
            raise StorageError(f"{self._store.uri_of(self.key)}: publish after {self._state}")
        os.replace(self._temp, self._final)
        self._state = "published"

    def abort(self) -> None:
        if self._state in ("aborted", "published"):
            return
        self._file.close()
        self._temp.unlink(missing_ok=True)
        for directory in self._created_dirs:
            try:
                directory.rmdir()
            except OSError:
                break
        self._state = "aborted"

    @property
    def bytes_written(self) -> int:
        return self._written


def _missing_parents(path: Path, root: Path) -> list[Path]:
    """Directories between `root` and `path` that do not exist yet, deepest first."""
    missing = []
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        if parent == parent.parent:
            break
        parent = parent.parent
    return missing


class LocalStore(ObjectStore):
    def __init__(self, root: str | Path, fsync: bool = True) -> None:
        self.root = Path(root).expanduser().resolve()
        self.fsync = fsync

    @property
    def uri(self) -> str:
        return f"file://{self.root}/"

    def path_of(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in (path, *path.parents):
            raise ValueError(f"key {key!r} leaves the store root {self.root}")
        return path

    def head(self, key: str) -> ObjectInfo:
        path = self.path_of(key)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise ObjectNotFound(self.uri_of(key)) from None
        if not path.is_file():
            raise ObjectNotFound(self.uri_of(key))
        return ObjectInfo(key=key, size=stat.st_size, version=f"{stat.st_size}-{stat.st_mtime_ns}")

    def read_into(self, key: str, start: int, buffer: memoryview) -> None:
        length = len(buffer)
        try:
            with open(self.path_of(key), "rb", buffering=0) as file:
                file.seek(start)
                got = file.readinto(buffer) if length else 0
        except FileNotFoundError:
            raise ObjectNotFound(self.uri_of(key)) from None
        if got != length:
            raise StorageError(
                f"{self.uri_of(key)}: short read at bytes {start}..{start + length}, got {got}"
            )

    def list(self, prefix: str = "", recursive: bool = False) -> list[ObjectInfo]:
        base = self.path_of(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        paths = base.rglob("*") if recursive else base.iterdir()
        found = []
        for path in paths:
            if path.is_file() and PARTIAL_MARK not in path.name:
                key = path.relative_to(self.root).as_posix()
                found.append(self.head(key))
        return sorted(found, key=lambda info: info.key)

    def open_writer(self, key: str) -> ObjectWriter:
        return LocalWriter(self, key)

    def delete(self, key: str) -> None:
        self.path_of(key).unlink(missing_ok=True)

    def child(self, prefix: str) -> "LocalStore":
        return LocalStore(self.path_of(prefix), self.fsync)
