"""One fast parse of a GGUF file per load, for transformers' GGUF path (a catalog entry pointing the transformers
engine at a .gguf file).

transformers parses the file with gguf-py's `GGUFReader` each time it needs something from it: the tokenizer, the
config and the weights are separate parses (three per load here). A parse walks every field, a gemma-3's 262k-token
vocabulary included, through slices of a `numpy.memmap`, whose `__getitem__` and `__array_finalize__` are Python:
23 s a parse for gemma-3-270m on a 2-core host, ~70 s of a ~100 s load. While a checkpoint loads, `gguf.GGUFReader`
(which transformers imports at each call) gives one reader per file, parsed once over a plain ndarray view of the
same read-only mapping: 7 s, with the same fields and tensors.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator

_patching = threading.Lock()  # one load at a time swaps gguf.GGUFReader (GGUF files through transformers are rare)


@functools.cache
def plain_array_reader() -> type:
    """GGUFReader over a plain ndarray view of its memmap: slicing it costs what slicing an array does."""
    import numpy as np
    from gguf import GGUFReader

    class PlainArrayReader(GGUFReader):
        @property
        def data(self):
            return self._plain

        @data.setter
        def data(self, mapped) -> None:  # (GGUFReader.__init__ assigns its memmap here before parsing)
            self._plain = mapped.view(np.ndarray)  # keeps the memmap (and its file mapping) alive as its base

    return PlainArrayReader


@contextlib.contextmanager
def one_parse_per_file() -> Iterator[None]:
    """Within the block, every read-only GGUFReader of a file is the same parsed reader (read-only: nothing a caller
    does to it changes what the next one reads)."""
    import gguf

    reader_class = plain_array_reader()
    parsed: dict[str, object] = {}

    def reader(path, mode="r"):
        if mode != "r":
            return reader_class(path, mode)
        key = os.path.realpath(path)
        if key not in parsed:
            parsed[key] = reader_class(path, mode)
        return parsed[key]

    with _patching:
        original, gguf.GGUFReader = gguf.GGUFReader, reader
        try:
            yield
        finally:
            gguf.GGUFReader = original
