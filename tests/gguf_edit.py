"""Copies a GGUF file with extra uint32 metadata keys: test models for features the embedded one lacks
(e.g. fill-in-the-middle token ids). Tensor data is copied unchanged; only the header grows."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

from backends.gguf_header import _string, _unpack, _value

_UINT32 = 4


def _kv_entry(key: str, value: int) -> bytes:
    name = key.encode()
    return struct.pack("<Q", len(name)) + name + struct.pack("<II", _UINT32, value)


def copy_with_metadata(source: Path, target: Path, extra: dict[str, int]) -> Path:
    with open(source, "rb") as stream:
        magic_and_version = stream.read(8)
        tensor_count, key_count = _unpack(stream, "<Q"), _unpack(stream, "<Q")
        kv_start = stream.tell()
        alignment = 32
        for _ in range(key_count):
            key = _string(stream)
            value = _value(stream, _unpack(stream, "<I"))
            alignment = value if key == "general.alignment" else alignment
        kv_end = stream.tell()
        for _ in range(tensor_count):  # name, dimensions, type, offset (relative to the data section)
            _string(stream)
            stream.seek(8 * _unpack(stream, "<I") + 4 + 8, 1)
        infos_end = stream.tell()
        data_start = -(-infos_end // alignment) * alignment
        stream.seek(kv_start)
        kv_bytes = stream.read(kv_end - kv_start)
        infos = stream.read(infos_end - kv_end)
        header = magic_and_version + struct.pack("<QQ", tensor_count, key_count + len(extra)) + kv_bytes
        header += b"".join(_kv_entry(key, value) for key, value in extra.items()) + infos
        with open(target, "wb") as out:
            out.write(header + b"\0" * (-len(header) % alignment))
            stream.seek(data_start)
            shutil.copyfileobj(stream, out, 16 << 20)
    return target
