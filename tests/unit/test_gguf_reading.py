"""One parse of a GGUF file per load: the same reader for every read-only open inside the block, with what gguf-py's
own reader reads (fields, string arrays, tensors), and gguf-py as it was after the block."""

import gguf
import numpy as np
import pytest

from backends.hf.gguf_reading import one_parse_per_file


def write_gguf(path) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_token_list(["<s>", "hello", "wörld", "▁owl"])
    writer.add_token_scores([0.0, -1.5, -2.25, -3.0])
    writer.add_tensor("token_embd.weight", np.arange(12, dtype=np.float32).reshape(4, 3))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def contents(reader) -> tuple:
    fields = {name: ([bytes(part) for part in field.parts], list(field.data), list(field.types))
              for name, field in reader.fields.items()}
    tensors = [(tensor.name, tensor.data.tolist()) for tensor in reader.tensors]
    return fields, tensors


def test_every_open_inside_the_block_is_one_reader_reading_what_gguf_py_reads(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(path)
    original = gguf.GGUFReader
    expected = contents(original(str(path)))
    with one_parse_per_file():
        first = gguf.GGUFReader(str(path))
        assert gguf.GGUFReader(path) is first  # (a str or a Path: the same file)
        assert contents(first) == expected
        assert not first.tensors[0].data.flags.writeable  # read-only, like the memmap it views
        other = tmp_path / "other.gguf"
        write_gguf(other)
        assert gguf.GGUFReader(str(other)) is not first
    assert gguf.GGUFReader is original
    assert contents(gguf.GGUFReader(str(path))) == expected


def test_the_reader_is_restored_when_the_load_fails(tmp_path):
    original = gguf.GGUFReader
    with pytest.raises(FileNotFoundError), one_parse_per_file():
        gguf.GGUFReader(str(tmp_path / "missing.gguf"))
    assert gguf.GGUFReader is original
