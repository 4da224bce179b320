"""Object storage: one interface, a local-directory backend and an S3 backend, chosen by URI."""

from app.core.config import Settings, get_settings
from app.storage.base import (
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectWriter,
    OutputTransaction,
    StorageError,
    TransientStorageError,
)
from app.storage.uri import StoreURI, parse_uri


def open_store(uri: str, settings: Settings | None = None) -> ObjectStore:
    """The store rooted at `uri`: `s3://bucket/prefix`, `file:///path` or a bare path."""
    from app.storage.local import LocalStore
    from app.storage.s3 import S3Store

    parsed = parse_uri(uri)
    settings = settings or get_settings()
    if parsed.scheme == "s3":
        return S3Store(parsed.bucket, parsed.path, settings)
    return LocalStore(parsed.path, fsync=settings.local_fsync)


__all__ = [
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectWriter",
    "OutputTransaction",
    "StorageError",
    "StoreURI",
    "TransientStorageError",
    "open_store",
    "parse_uri",
]
