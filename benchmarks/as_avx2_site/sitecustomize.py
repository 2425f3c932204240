"""Loaded by every Python process that `benchmarks/as_avx2.py` starts (it is on their
PYTHONPATH): torch's checks for native bf16 answer False, so ftkit computes in fp32 as on
a CPU with AVX2 only. Nothing happens unless FTKIT_AS_AVX2 is set."""

import importlib.abc
import importlib.machinery
import os
import sys


class _NoNativeBf16(importlib.abc.MetaPathFinder):
    """Finds `torch.cpu` as Python would, and patches its bf16 and AMX checks once loaded."""

    def find_spec(self, name, path, target=None):
        if name != "torch.cpu":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module

        def exec_module(module) -> None:
            load(module)
            module._is_avx512_bf16_supported = lambda: False
            module._is_amx_tile_supported = lambda: False

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("FTKIT_AS_AVX2"):
    sys.meta_path.insert(0, _NoNativeBf16())
