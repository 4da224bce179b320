"""Parsing and validating store URIs: `s3://bucket/prefix`, `file:///path` and bare paths."""

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator

SCHEMES = ("s3", "file")


@dataclass(frozen=True)
class ParsedURI:
    scheme: str
    bucket: str
    path: str


def parse_uri(uri: str) -> ParsedURI:
    """Split a store URI; raises ValueError naming the problem for anything unsupported."""
    if not uri or not uri.strip():
        raise ValueError("URI is empty")
    if "://" not in uri:
        return ParsedURI(scheme="file", bucket="", path=uri)
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(
            f"unsupported URI scheme {parts.scheme!r} in {uri!r}: use s3://, file:// or a path"
        )
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URI {uri!r} names a host; use file:///absolute/path")
        return ParsedURI(scheme="file", bucket="", path=parts.path)
    if not parts.netloc:
        raise ValueError(f"S3 URI {uri!r} has no bucket")
    return ParsedURI(scheme="s3", bucket=parts.netloc, path=parts.path.strip("/"))


def _validated(uri: str) -> str:
    parse_uri(uri)
    return uri


StoreURI = Annotated[str, AfterValidator(_validated)]
"""A request field holding a store URI; validation errors name the field."""
