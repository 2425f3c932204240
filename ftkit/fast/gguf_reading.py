"""GGUF files loaded by transformers in less time: each file parsed once, and gguf's
tensor-name map built once per architecture, while a load runs.

transformers (5.24) parses a GGUF file's header from scratch for every piece it reads: once
for the config, once for the weights, once more for the tokenizer. The header holds the
whole vocabulary as 49,152 strings read one memory-mapped slice at a time. And while it
maps tensor names it calls `gguf.get_tensor_name_map(arch, n_blocks)` once per submodule
(397 times for the embedded 30-block model), each call rebuilding the same table. On the
AVX2-only 2-core EPYC (2026-12-05) loading a 16-bit GGUF of the embedded model took 22.1 s,
8.1 s inside this block; the embedded model's conversion 31.4 s, 11.1 s inside it
(benchmarks/gguf_loading.py, benchmarks/RESULTS.md).

Inside `read_gguf_once()` both go through caches: `gguf.GGUFReader` returns the reader it
already built for the same file (same path, size and modification time) and
`gguf.get_tensor_name_map` the map it already built for the same architecture and depth.
The reader is read-only (a memory map) and the map a lookup table, so what transformers
builds from them is what it builds without the block, bit for bit
(tests/test_export.py). On leaving, gguf's own functions are back and the readers released.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def read_gguf_once() -> Iterator[dict]:
    """Parse each GGUF file once and build each tensor-name map once inside this block.

    Yields a dict counting what was parsed (`{"parsed": n, "reused": m}`), for tests and
    benchmarks. Nothing about the loaded model changes; see the module's docstring. Without
    the gguf package the block does nothing, and transformers says what to install.
    """
    counts = {"parsed": 0, "reused": 0}
    try:
        import gguf
    except ImportError:
        yield counts
        return

    original_reader, original_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple, object] = {}

    def reader(path: str | os.PathLike, mode: str = "r"):
        file = Path(path).resolve()
        stat = file.stat()
        key = (str(file), mode, stat.st_size, stat.st_mtime_ns)
        if key in readers:
            counts["reused"] += 1
        else:
            counts["parsed"] += 1
            readers[key] = original_reader(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original_map)
    try:
        yield counts
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = original_reader, original_map
        readers.clear()
