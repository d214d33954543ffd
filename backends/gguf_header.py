"""Reads a GGUF file's metadata header: enough to estimate memory and reject a broken file before loading.

The `gguf` package's reader parses every tensor and vocabulary entry in Python (11 s for gemma's 262k-token
vocabulary) and llama.cpp's vocab-only load takes ~0.8 s, so this reads only the key/value header, skipping
arrays, and stops as soon as it has the keys it was asked for.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
MAX_KEYS = 1 << 16  # a header claiming more is corrupt


class GGUFError(ValueError):
    """The file is not a readable GGUF model."""


def _read(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise GGUFError("the file is truncated")
    return data


def _unpack(stream: BinaryIO, fmt: str):
    return struct.unpack(fmt, _read(stream, struct.calcsize(fmt)))[0]


def _string(stream: BinaryIO) -> str:
    return _read(stream, _unpack(stream, "<Q")).decode("utf-8", errors="replace")


def _value(stream: BinaryIO, value_type: int):
    if value_type in _SCALARS:
        return _unpack(stream, _SCALARS[value_type])
    if value_type == _STRING:
        return _string(stream)
    if value_type == _ARRAY:
        element_type, count = _unpack(stream, "<I"), _unpack(stream, "<Q")
        _skip_array(stream, element_type, count)
        return None
    raise GGUFError(f"unknown metadata value type {value_type}")


def _skip_array(stream: BinaryIO, element_type: int, count: int) -> None:
    if element_type in _SCALARS:
        stream.seek(struct.calcsize(_SCALARS[element_type]) * count, 1)
    elif element_type == _STRING:
        for _ in range(count):
            stream.seek(_unpack(stream, "<Q"), 1)
    else:
        for _ in range(count):
            _value(stream, element_type)


def _header_counts(stream: BinaryIO) -> tuple[int, int]:
    """Check the magic and version; the tensor and metadata key counts, the stream left at the first key."""
    if stream.read(4) != b"GGUF":
        raise GGUFError("not a GGUF file (bad magic)")
    version = _unpack(stream, "<I")
    if version not in (2, 3):
        raise GGUFError(f"unsupported GGUF version {version}")
    tensor_count, key_count = _unpack(stream, "<Q"), _unpack(stream, "<Q")
    if key_count > MAX_KEYS:
        raise GGUFError("corrupt header (implausible metadata count)")
    return tensor_count, key_count


def read_gguf_metadata(path: Path, wanted: set[str] | None = None, first_keys: int = MAX_KEYS) -> dict[str, object]:
    """Scalar and string metadata (arrays are skipped); stops early once every `wanted` key was seen, or after
    `first_keys` keys."""
    metadata: dict[str, object] = {}
    with open(path, "rb") as stream:
        _, key_count = _header_counts(stream)
        for _ in range(min(key_count, first_keys)):
            key = _string(stream)
            value = _value(stream, _unpack(stream, "<I"))
            if value is not None:
                metadata[key] = value
            if wanted and wanted <= metadata.keys():
                break
    return metadata


def read_gguf_tensor_names(path: Path) -> list[str]:
    """The names of the tensors a GGUF holds (metadata values are read past)."""
    with open(path, "rb") as stream:
        tensor_count, key_count = _header_counts(stream)
        for _ in range(key_count):
            _string(stream)
            _value(stream, _unpack(stream, "<I"))
        names = []
        for _ in range(tensor_count):  # name, dimensions, type, offset
            names.append(_string(stream))
            stream.seek(8 * _unpack(stream, "<I") + 4 + 8, 1)
        return names


def kv_bytes_per_token(metadata: dict[str, object]) -> int:
    """f16 K and V for every layer (an upper bound: sliding-window layers keep less)."""
    arch = metadata.get("general.architecture", "")
    layers = int(metadata.get(f"{arch}.block_count", 0))
    heads = int(metadata.get(f"{arch}.attention.head_count", 1) or 1)
    kv_heads = int(metadata.get(f"{arch}.attention.head_count_kv", heads) or heads)
    embedding = int(metadata.get(f"{arch}.embedding_length", 0))
    key_length = int(metadata.get(f"{arch}.attention.key_length", embedding // heads))
    value_length = int(metadata.get(f"{arch}.attention.value_length", key_length))
    return layers * kv_heads * (key_length + value_length) * 2


def auxiliary_gguf(path: Path) -> str | None:
    """"adapter" (a LoRA) or "mmproj" (a multimodal projector) for GGUFs that are part of a model, not models:
    llama.cpp's converters write `general.type` among the first keys. None for models (and unreadable files)."""
    try:
        kind = read_gguf_metadata(path, {"general.type"}, first_keys=8).get("general.type")
    except (OSError, GGUFError, UnicodeDecodeError, struct.error):
        return None
    return kind if kind in ("adapter", "mmproj") else None
