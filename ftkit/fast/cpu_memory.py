"""Less resident memory when training on a CPU: glibc's heap and oneDNN's kernel cache.

Neither changes a number a model computes; both change how much memory the process keeps.

- `return_freed_memory`: glibc raises its mmap threshold as large blocks are freed, so after
  the first steps activation tensors come from its heap, which fragments and keeps the
  high-water mark. A fixed 1 MiB threshold maps and unmaps every such tensor on its own.
- `release_heap` (after every backward pass, through `HeapRelease`): the free pages inside
  glibc's heap go back to the OS.
- `cap_onednn_kernels`: torch's bf16 matrix products on a CPU go through oneDNN, which keeps
  a compiled kernel (with its scratch memory) for every shape it meets, up to 1024 of them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform

from transformers import TrainerCallback

MMAP_THRESHOLD = 1 << 20  # bytes: allocations this large get their own pages from the OS
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
ONEDNN_KERNELS_KEPT = 64  # oneDNN kernels kept (its default keeps 1024)


@functools.cache
def _glibc():
    """The C library when it is glibc on Linux (its malloc tuning applies), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def return_freed_memory(threshold: int = MMAP_THRESHOLD) -> bool:
    """Make glibc give freed activation memory back to the OS at once (Linux, CPU training).

    A training step allocates and frees hundreds of activation tensors of 0.1-30 MB. With
    glibc's moving threshold the peak resident memory of this kit's QLoRA run was 2.7 GiB;
    with a fixed 1 MiB threshold 2.1 GiB, same losses (benchmarks/RESULTS.md). A lower
    threshold saves more but maps so often that training gets half again slower. Returns
    False where it does not apply (not glibc).
    """
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))


def release_heap() -> bool:
    """Hand the free pages inside glibc's heap back to the OS (`malloc_trim`); False where
    it does not apply (not glibc).

    Activations under the mmap threshold (most of a small model's: a batch of 8 x 94 tokens
    of 576 bf16 values is 0.85 MiB) come from the heap, and the holes they leave between
    steps stay resident. Called after every backward pass on CPU (`HeapRelease`), the peak
    of a 256-example QLoRA run fell from 2.20 to 1.95 GiB (138 s either way). It does cost a
    little time: 77 against 74 s on 128 examples, and 176 against 169 s for 40 steps of
    notebook 03's run (peak 2.07 against 2.28 GiB): about 4%, paid for a tenth less memory
    (benchmarks/RESULTS.md).
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


class HeapRelease(TrainerCallback):
    """`release_heap` after every backward pass: the step's activations are freed by then."""

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        release_heap()

    def on_substep_end(self, args, state, control, **kwargs):
        release_heap()  # a backward pass of gradient accumulation, before the optimizer's


def cap_onednn_kernels(kept: int = ONEDNN_KERNELS_KEPT) -> bool:
    """Keep at most `kept` oneDNN kernels (bf16 products on a CPU); False if set already.

    Training batches change shape at every step, so over a 256-example QLoRA run the process
    grew ~30 MB per step and peaked at 1.78 GiB; with 64 kept it peaked at 1.50 GiB, as fast
    (same losses). oneDNN reads the setting when it builds its first kernel, so this must
    run before the process's first bf16 product (`ftkit.models.load_model` calls it); a
    value you set yourself in ONEDNN_PRIMITIVE_CACHE_CAPACITY wins.
    """
    if "ONEDNN_PRIMITIVE_CACHE_CAPACITY" in os.environ:
        return False
    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(kept)
    return True
