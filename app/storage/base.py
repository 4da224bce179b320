"""The object-store interface: what the engine may ask of S3 or a local directory, and its errors.

A store is rooted at a prefix; keys are relative to it with `/` separators. Writes are two-phase:
`ObjectWriter.finish` makes the bytes durable but invisible, `publish` makes the object appear
under its final key, `abort` discards it. `OutputTransaction` builds multi-object outputs on that.
"""

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass


class StorageError(Exception):
    """An object store could not do what was asked (not bad input: may be retried)."""


class TransientStorageError(StorageError):
    """The store failed in a way that may pass (connection lost, timeout, 5xx, throttling)."""


class ObjectNotFound(StorageError):
    """The key does not exist."""

    def __init__(self, uri: str) -> None:
        super().__init__(f"{uri}: no such object")
        self.uri = uri


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    version: str
    """Changes whenever the object's content changes: S3 VersionId or ETag; local size+mtime."""


class ObjectWriter(ABC):
    """A stream of bytes that becomes one object only when published."""

    key: str

    @abstractmethod
    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    @abstractmethod
    def finish(self) -> None:
        """All bytes are written and durable; the object is not visible yet."""

    @abstractmethod
    def publish(self) -> None:
        """Make the finished object visible under its key (calls `finish` if needed)."""

    @abstractmethod
    def abort(self) -> None:
        """Discard everything written; never raises for an already-aborted writer."""

    @property
    @abstractmethod
    def bytes_written(self) -> int: ...


class ObjectStore(ABC):
    """Byte-range reads, listings and streamed two-phase writes under one root prefix."""

    @property
    @abstractmethod
    def uri(self) -> str:
        """The root, as a URI that `open_store` accepts."""

    def uri_of(self, key: str) -> str:
        return self.uri.rstrip("/") + "/" + key

    @abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Size and version of one object; raises ObjectNotFound."""

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except ObjectNotFound:
            return False
        return True

    @abstractmethod
    def read_into(self, key: str, start: int, buffer: memoryview) -> None:
        """Fill `buffer` with the bytes from `start`; raises StorageError on a short read."""

    def read_range(self, key: str, start: int, length: int) -> bytearray:
        """Exactly `length` bytes from `start`."""
        buffer = bytearray(length)
        self.read_into(key, start, memoryview(buffer))
        return buffer

    def read_bytes(self, key: str) -> bytes:
        return bytes(self.read_range(key, 0, self.head(key).size))

    @abstractmethod
    def list(self, prefix: str = "", recursive: bool = False) -> list[ObjectInfo]:
        """Objects under `prefix` (relative keys); only one level deep unless recursive."""

    @abstractmethod
    def open_writer(self, key: str) -> ObjectWriter: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; a missing one is not an error."""

    @abstractmethod
    def child(self, prefix: str) -> "ObjectStore":
        """A store rooted at `prefix` below this one."""

    def write_bytes(self, key: str, data: bytes) -> None:
        writer = self.open_writer(key)
        try:
            writer.write(data)
            writer.publish()
        except BaseException:
            writer.abort()
            raise


class OutputTransaction:
    """Objects written together: all appear at commit, in the order they were opened, or none.

    Publishing is quick (a rename, a multipart completion), so the window in which a killed
    process could leave part of the output is the commit itself; the engine opens its
    completion marker (`merge.json`) last so readers can tell a whole output from a torn one.
    """

    def __init__(self, store: ObjectStore, replace: Iterable[str] = ()) -> None:
        self.store = store
        self._writers: list[ObjectWriter] = []
        self._published: list[str] = []
        self._replace = set(replace)
        self._closed = False

    def open(self, key: str) -> ObjectWriter:
        if self._closed:
            raise RuntimeError("transaction already closed")
        if any(writer.key == key for writer in self._writers):
            raise ValueError(f"{self.store.uri_of(key)} is written twice in one output")
        writer = self.store.open_writer(key)
        self._writers.append(writer)
        return writer

    def put(self, key: str, data: bytes) -> None:
        self.open(key).write(data)

    @property
    def keys(self) -> list[str]:
        return [writer.key for writer in self._writers]

    def commit(self) -> None:
        """Publish every object; on any failure undo what was published and abort the rest."""
        try:
            for writer in self._writers:
                writer.finish()
            for writer in self._writers:
                writer.publish()
                self._published.append(writer.key)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        for stale in sorted(self._replace - set(self.keys)):
            self.store.delete(stale)

    def abort(self) -> None:
        self._closed = True
        for writer in reversed(self._writers):  # the first writer removes the folders it made
            writer.abort()
        for key in self._published:
            self.store.delete(key)
        self._published.clear()

    def __enter__(self) -> "OutputTransaction":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.commit()
