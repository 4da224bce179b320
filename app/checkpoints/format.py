"""The safetensors file format: dtypes, header parsing with validation, header building.

Layout: 8-byte little-endian header length N, N bytes of JSON, then the tensors' bytes. Each
header entry gives `dtype`, `shape` and `data_offsets` [begin, end) relative to the data section.
"""

import json
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

MAX_HEADER_BYTES = 100 * 1024 * 1024
METADATA_KEY = "__metadata__"


class CheckpointError(ValueError):
    """A checkpoint or Fisher file is malformed or inconsistent; the message names the object."""


@dataclass(frozen=True)
class DType:
    name: str
    torch_dtype: torch.dtype
    itemsize: int

    @property
    def is_float(self) -> bool:
        return self.torch_dtype.is_floating_point


DTYPES: dict[str, DType] = {
    dtype.name: dtype
    for dtype in [
        DType("F64", torch.float64, 8),
        DType("F32", torch.float32, 4),
        DType("F16", torch.float16, 2),
        DType("BF16", torch.bfloat16, 2),
        DType("F8_E4M3", torch.float8_e4m3fn, 1),
        DType("F8_E5M2", torch.float8_e5m2, 1),
        DType("I64", torch.int64, 8),
        DType("I32", torch.int32, 4),
        DType("I16", torch.int16, 2),
        DType("I8", torch.int8, 1),
        DType("U64", torch.uint64, 8),
        DType("U32", torch.uint32, 4),
        DType("U16", torch.uint16, 2),
        DType("U8", torch.uint8, 1),
        DType("BOOL", torch.bool, 1),
    ]
}
DTYPE_OF_TORCH = {dtype.torch_dtype: dtype for dtype in DTYPES.values()}


@dataclass(frozen=True)
class TensorSpec:
    """What the header says of one tensor, before any data: enough to plan and lay out a file."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPES[self.dtype].itemsize

    @property
    def rows(self) -> int:
        """Length of the first dimension; a scalar is one row."""
        return self.shape[0] if self.shape else 1

    @property
    def row_numel(self) -> int:
        return math.prod(self.shape[1:]) if self.shape else 1


@dataclass(frozen=True)
class TensorEntry:
    spec: TensorSpec
    begin: int
    """Absolute byte offset of the tensor's data in the file."""

    @property
    def end(self) -> int:
        return self.begin + self.spec.nbytes


@dataclass(frozen=True)
class Header:
    entries: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int


def parse_header(read: Callable[[int, int], bytes | bytearray], size: int, name: str) -> Header:
    """Parse and validate the header of a safetensors object of `size` bytes.

    `read(start, length)` fetches a byte range; `name` is used in every error message.
    """
    if size < 8:
        raise CheckpointError(f"{name}: {size} bytes is too short for a safetensors file")
    (header_len,) = struct.unpack("<Q", bytes(read(0, 8)))
    if header_len > MAX_HEADER_BYTES:
        raise CheckpointError(f"{name}: header length {header_len} exceeds {MAX_HEADER_BYTES}")
    if 8 + header_len > size:
        raise CheckpointError(
            f"{name}: header length {header_len} runs past the end of the {size}-byte file"
        )
    raw = bytes(read(8, header_len))
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{name}: header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{name}: header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop(METADATA_KEY, None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(value, str) for value in metadata.values()
    ):
        raise CheckpointError(f"{name}: {METADATA_KEY} must map strings to strings")
    data_start = 8 + header_len
    data_size = size - data_start
    entries = {key: _parse_entry(key, value, name, data_start) for key, value in header.items()}
    _check_layout(entries, data_start, data_size, name)
    return Header(entries=entries, metadata=metadata, data_start=data_start)


def _parse_entry(key: str, value: object, name: str, data_start: int) -> TensorEntry:
    where = f"{name}: tensor {key!r}"
    if not isinstance(value, dict):
        raise CheckpointError(f"{where}: entry is not an object")
    dtype = value.get("dtype")
    if dtype not in DTYPES:
        raise CheckpointError(f"{where}: unknown dtype {dtype!r}")
    shape = value.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape
    ):
        raise CheckpointError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    offsets = value.get("data_offsets")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(offset, int) and not isinstance(offset, bool) for offset in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise CheckpointError(f"{where}: data_offsets {offsets!r} are not [begin, end]")
    spec = TensorSpec(name=key, dtype=dtype, shape=tuple(shape))
    if offsets[1] - offsets[0] != spec.nbytes:
        raise CheckpointError(
            f"{where}: data_offsets {offsets} hold {offsets[1] - offsets[0]} bytes but "
            f"{dtype}{list(shape)} needs {spec.nbytes}"
        )
    return TensorEntry(spec=spec, begin=data_start + offsets[0])


def _check_layout(
    entries: dict[str, TensorEntry], data_start: int, data_size: int, name: str
) -> None:
    previous: TensorEntry | None = None
    for entry in sorted(entries.values(), key=lambda item: (item.begin, item.end)):
        if entry.end - data_start > data_size:
            raise CheckpointError(
                f"{name}: tensor {entry.spec.name!r} ends at data byte {entry.end - data_start} "
                f"but the file holds only {data_size} data bytes (truncated or out of range)"
            )
        if previous is not None and entry.begin < previous.end and entry.spec.nbytes:
            raise CheckpointError(
                f"{name}: tensors {previous.spec.name!r} and {entry.spec.name!r} overlap at data "
                f"bytes {entry.begin - data_start}..{previous.end - data_start}"
            )
        if entry.spec.nbytes:
            previous = entry


def build_header(
    specs: Sequence[TensorSpec], metadata: dict[str, str] | None = None
) -> tuple[bytes, list[int]]:
    """The header bytes (length prefix included) for tensors laid out in order, and each
    tensor's data offset. The JSON is padded with spaces to an 8-byte boundary, as safetensors
    does, so tensor data stays aligned."""
    body: dict[str, object] = {}
    if metadata:
        body[METADATA_KEY] = metadata
    offsets = []
    position = 0
    for spec in specs:
        if spec.dtype not in DTYPES:
            raise CheckpointError(f"tensor {spec.name!r}: unknown dtype {spec.dtype!r}")
        offsets.append(position)
        body[spec.name] = {
            "dtype": spec.dtype,
            "shape": list(spec.shape),
            "data_offsets": [position, position + spec.nbytes],
        }
        position += spec.nbytes
    text = json.dumps(body, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text, offsets


def tensor_to_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes in C order, without a copy when it is already contiguous on the CPU."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")
