"""Object store over S3 or an S3-compatible server (MinIO, moto) through boto3.

Path-style addressing, checksums only where the protocol requires them (many S3-compatible stores
reject the newer default trailing checksums), ranged GETs for reads, and writes as multipart
uploads whose parts are sent as they fill and which are completed only on publish.
"""

import contextlib
from functools import lru_cache
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
)

from app.core.config import Settings
from app.storage.base import (
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectWriter,
    StorageError,
    TransientStorageError,
)

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_TRANSIENT = {
    "InternalError",
    "RequestTimeout",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeTooSkewed",
}


@lru_cache(maxsize=8)
def s3_client(endpoint_url: str | None, region: str | None) -> Any:
    config = Config(
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 5, "mode": "standard"},
        max_pool_connections=32,
    )
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class S3Writer(ObjectWriter):
    """Buffers up to one part; a small object is one PUT on publish, a larger one a multipart
    upload completed on publish."""

    def __init__(self, store: "S3Store", key: str) -> None:
        self.key = key
        self._store = store
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._written = 0
        self._state = "open"

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._state != "open":
            raise StorageError(f"{self._store.uri_of(self.key)}: write after {self._state}")
        self._buffer += data
        self._written += len(data)
        part_bytes = self._store.part_bytes
        while len(self._buffer) >= part_bytes:
            self._send_part(memoryview(self._buffer)[:part_bytes].tobytes())
            del self._buffer[:part_bytes]

    def _send_part(self, body: bytes) -> None:
        store = self._store
        with store.errors(self.key):
            if self._upload_id is None:
                created = store.client.create_multipart_upload(
                    Bucket=store.bucket, Key=store.full_key(self.key)
                )
                self._upload_id = created["UploadId"]
            number = len(self._parts) + 1
            sent = store.client.upload_part(
                Bucket=store.bucket,
                Key=store.full_key(self.key),
                UploadId=self._upload_id,
                PartNumber=number,
                Body=body,
            )
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    def finish(self) -> None:
        if self._state != "open":
            return
        if self._upload_id is not None and self._buffer:
            self._send_part(bytes(self._buffer))
            self._buffer = bytearray()
        self._state = "finished"

    def publish(self) -> None:
        self.finish()
        if self._state != "finished":
            raise StorageError(f"{self._store.uri_of(self.key)}: publish after {self._state}")
        store = self._store
        with store.errors(self.key):
            if self._upload_id is None:
                store.client.put_object(
                    Bucket=store.bucket, Key=store.full_key(self.key), Body=bytes(self._buffer)
                )
            else:
                store.client.complete_multipart_upload(
                    Bucket=store.bucket,
                    Key=store.full_key(self.key),
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
        self._buffer = bytearray()
        self._state = "published"

    def abort(self) -> None:
        if self._state in ("aborted", "published"):
            return
        self._state = "aborted"
        self._buffer = bytearray()
        if self._upload_id is not None:
            store = self._store
            # a bucket lifecycle rule reaps uploads that could not be aborted
            with contextlib.suppress(ClientError, BotoCoreError):
                store.client.abort_multipart_upload(
                    Bucket=store.bucket, Key=store.full_key(self.key), UploadId=self._upload_id
                )

    @property
    def bytes_written(self) -> int:
        return self._written


class S3Store(ObjectStore):
    def __init__(self, bucket: str, prefix: str, settings: Settings) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.settings = settings
        self.part_bytes = settings.s3_part_bytes
        self.client = s3_client(settings.s3_endpoint_url, settings.s3_region)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}/" if self.prefix else f"s3://{self.bucket}/"

    def full_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def errors(self, key: str) -> "_S3Errors":
        return _S3Errors(self.uri_of(key))

    def head(self, key: str) -> ObjectInfo:
        with self.errors(key):
            answer = self.client.head_object(Bucket=self.bucket, Key=self.full_key(key))
        version = answer.get("VersionId") or str(answer["ETag"]).strip('"')
        return ObjectInfo(key=key, size=int(answer["ContentLength"]), version=version)

    def read_into(self, key: str, start: int, buffer: memoryview) -> None:
        length = len(buffer)
        if length == 0:
            return
        got = 0
        with self.errors(key):
            answer = self.client.get_object(
                Bucket=self.bucket,
                Key=self.full_key(key),
                Range=f"bytes={start}-{start + length - 1}",
            )
            for piece in answer["Body"].iter_chunks(1024 * 1024):
                if got + len(piece) > length:
                    break
                buffer[got : got + len(piece)] = piece
                got += len(piece)
        if got != length:
            raise StorageError(
                f"{self.uri_of(key)}: short read at bytes {start}..{start + length}, got {got}"
            )

    def list(self, prefix: str = "", recursive: bool = False) -> list[ObjectInfo]:
        base = self.full_key(prefix.strip("/")) if prefix else self.prefix
        base = f"{base}/" if base else ""
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base}
        if not recursive:
            arguments["Delimiter"] = "/"
        found = []
        with self.errors(prefix or "."):
            for page in self.client.get_paginator("list_objects_v2").paginate(**arguments):
                for item in page.get("Contents", []):
                    key = item["Key"][len(self.prefix) + 1 :] if self.prefix else item["Key"]
                    etag = str(item["ETag"]).strip('"')
                    found.append(ObjectInfo(key=key, size=int(item["Size"]), version=etag))
        return sorted(found, key=lambda info: info.key)

    def open_writer(self, key: str) -> ObjectWriter:
        return S3Writer(self, key)

    def delete(self, key: str) -> None:
        with self.errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=self.full_key(key))

    def child(self, prefix: str) -> "S3Store":
        return S3Store(self.bucket, self.full_key(prefix.strip("/")), self.settings)


class _S3Errors:
    """Turns botocore exceptions into ObjectNotFound / StorageError naming the object."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, _: object
    ) -> None:
        if isinstance(exc, ClientError):
            code = _error_code(exc)
            if code in _NOT_FOUND:
                raise ObjectNotFound(self.uri) from exc
            if code == "NoSuchBucket":
                raise StorageError(f"{self.uri}: bucket does not exist") from exc
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            kind = TransientStorageError if code in _TRANSIENT or status >= 500 else StorageError
            raise kind(f"{self.uri}: {code or 'S3 error'}: {exc}") from exc
        if isinstance(exc, ConnectionError | HTTPClientError):
            raise TransientStorageError(f"{self.uri}: {exc}") from exc
        if isinstance(exc, BotoCoreError):
            raise StorageError(f"{self.uri}: {exc}") from exc
